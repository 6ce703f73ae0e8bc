"""Chat prompts from a checkpoint's own chat template (the Jinja template a GGUF file or tokenizer_config ships).

    template = chat.load_template("ckpt/")                    # CKPT_DIR/chat_template.jinja, or None
    text = chat.render(template, [{"role": "user", "content": "..."}], add_generation_prompt=True)

Rendered the way transformers' `apply_chat_template` renders it (a sandboxed Jinja environment with
trim_blocks and lstrip_blocks, `tojson`, `raise_exception`), so a prompt is the text the model was tuned on.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Sequence

TEMPLATE_FILE = "chat_template.jinja"


def load_template(checkpoint: str | os.PathLike) -> str | None:
    """The chat template stored with a checkpoint (written by the GGUF converter), or None."""
    # checkpoints loads orbax and jax; rendering a template needs neither
    from qwencoder_jax import checkpoints

    for directory in (checkpoints.resolve_checkpoint_dir(checkpoint), Path(checkpoint).absolute()):
        if (directory / TEMPLATE_FILE).is_file():
            return (directory / TEMPLATE_FILE).read_text(encoding="utf-8")
    return None


@functools.lru_cache(maxsize=8)
def _compiled(template: str):
    # jinja2 only for chat templates
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise ValueError(f"chat template: {message}")

    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                extensions=[jinja2.ext.loopcontrols])
    environment.filters["tojson"] = lambda value, indent=None: json.dumps(value, ensure_ascii=False, indent=indent)
    environment.globals["raise_exception"] = raise_exception
    return environment.from_string(template)


def render(template: str, messages: Sequence[dict], add_generation_prompt: bool = False) -> str:
    """The conversation as text in the template's markup."""
    for number, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise ValueError(f"chat message {number} must be a dict with 'role' and 'content', got {message!r}")
    return _compiled(template).render(messages=list(messages), add_generation_prompt=add_generation_prompt)
