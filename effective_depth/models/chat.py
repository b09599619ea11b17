"""Examples in a model's chat format: the prompt as the user turn, the answer as the assistant's.

Instruct and reasoning models (Qwen2.5-Instruct, DeepSeek-R1-Distill, SmolLM2-Instruct) are
studied in the format they were tuned on. With a :class:`ChatFormat`, an example's prompt ids
are exactly what the tokenizer's own ``apply_chat_template`` produces for the conversation
``[system (optional), user: prompt]`` with ``add_generation_prompt=True``, and the answer ids
(the assistant turn, teacher-forced) follow: ``tokenizer(answer, add_special_tokens=False)``.
The template writes whatever BOS the model expects (``{{ bos_token }}`` in Llama, R1 and Gemma
templates; none in Qwen's), so nothing is prepended on top of it: the BOS is read once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError, TaskError

__all__ = ["ChatFormat", "chat_format"]


@dataclass(frozen=True)
class ChatFormat:
    """How prompts are wrapped: ``template`` is a Jinja chat template (None: the tokenizer's
    own ``chat_template``) and ``system_prompt`` an optional system turn."""

    template: str | None = None
    system_prompt: str | None = None

    def messages(self, prompt: str) -> list[dict[str, str]]:
        turns = [] if self.system_prompt is None else [
            {"role": "system", "content": self.system_prompt}]
        return [*turns, {"role": "user", "content": prompt}]

    def _apply(self, tokenizer: Any, prompt: str, tokenize: bool) -> Any:
        if self.template is None and not getattr(tokenizer, "chat_template", None):
            name = getattr(tokenizer, "name_or_path", "") or "the model"
            raise TaskError(
                f"the tokenizer of {name} has no chat template; pass one as a Jinja file "
                "(--chat-template FILE, or chat_template: FILE in the study config), or drop "
                "--chat-template to analyse the plain prompt text"
            )
        try:
            return tokenizer.apply_chat_template(
                self.messages(prompt), chat_template=self.template, add_generation_prompt=True,
                tokenize=tokenize)
        except Exception as exc:  # a Jinja error or a template that refuses the roles
            raise TaskError(f"the chat template could not render the prompt {prompt[:60]!r} "
                            f"({type(exc).__name__}: {exc})") from None

    def prompt_ids(self, tokenizer: Any, prompt: str) -> list[int]:
        """``apply_chat_template(messages, add_generation_prompt=True, tokenize=True)``'s ids."""
        out = self._apply(tokenizer, prompt, tokenize=True)
        ids = out["input_ids"] if hasattr(out, "keys") else out
        if ids and isinstance(ids[0], list):  # a batch of one
            ids = ids[0]
        return [int(i) for i in ids]

    def prompt_text(self, tokenizer: Any, prompt: str) -> str:
        """The rendered prompt text (what :meth:`prompt_ids` tokenizes)."""
        return str(self._apply(tokenizer, prompt, tokenize=False))


def chat_format(chat_template: bool | str, system_prompt: str | None) -> ChatFormat | None:
    """The :class:`ChatFormat` of a study's options: ``chat_template`` is False (plain text),
    True (the tokenizer's own template), a Jinja file's path or a Jinja template itself."""
    if chat_template is False:
        if system_prompt is not None:
            raise ConfigError("system_prompt needs chat_template (CLI --chat-template): without a "
                              "chat format there is no system turn to put it in")
        return None
    if chat_template is True:
        return ChatFormat(None, system_prompt)
    path = os.path.expanduser(chat_template)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            return ChatFormat(f.read(), system_prompt)
    if "{{" in chat_template or "{%" in chat_template:
        return ChatFormat(chat_template, system_prompt)
    raise ConfigError(
        f"chat_template={chat_template!r} is neither a file nor a Jinja template; use true (the "
        "tokenizer's own template), the path of a .jinja file, or the template text"
    )
