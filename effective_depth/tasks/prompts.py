"""Your own prompts from a file: the task for analysing text that no built-in task produces.

Two formats, chosen by the file's extension:

* plain text (any extension but ``.jsonl``/``.ndjson``/``.json``): one prompt per non-empty
  line, answer ``""``. A line's trailing spaces are kept, since ``"Answer: "`` and
  ``"Answer:"`` tokenize differently.

Lines end at ``\n`` (``\r\n`` accepted), as JSON Lines defines them: U+2028, U+0085 and the
other characters ``str.splitlines`` would break at stay inside their line.
* JSON Lines (``.jsonl``/``.ndjson``, or ``.json`` holding either JSON Lines or one JSON list):
  one object per record, ``{"prompt": ..., "answer": ..., "difficulty": ...}``; ``answer`` and
  ``difficulty`` are optional and any other keys are copied into ``meta``.

Examples keep the file's order (no shuffle: the file *is* the selection) and carry
``meta["source_id"]``, the 1-based line number (or list position for a JSON list).
"""

from __future__ import annotations

import json
import os
from typing import Any

from ..errors import TaskError
from .base import Example, Param, Task, register_task

__all__ = ["PromptsTask", "read_prompts"]

_JSONL_EXTS = (".jsonl", ".ndjson", ".json")


def _record_example(path: str, where: str, record: Any, source_id: int) -> Example:
    if not isinstance(record, dict):
        raise TaskError(
            f'{path}, {where}: expected an object like {{"prompt": ..., "answer": ...}}, '
            f"got {type(record).__name__}"
        )
    if not isinstance(record.get("prompt"), str):
        raise TaskError(
            f'{path}, {where}: needs a string "prompt" field; found keys {sorted(record)}'
        )
    answer = record.get("answer", "")
    if answer is None:
        answer = ""
    if not isinstance(answer, (str, int, float)):
        raise TaskError(f'{path}, {where}: "answer" must be a string, got {type(answer).__name__}')
    difficulty = record.get("difficulty")
    if difficulty is not None and (isinstance(difficulty, bool) or not isinstance(difficulty, int)):
        raise TaskError(
            f'{path}, {where}: "difficulty" must be an integer (or absent), got {difficulty!r}'
        )
    meta = {k: v for k, v in record.items() if k not in ("prompt", "answer")}
    meta["difficulty"] = difficulty
    meta["source_id"] = source_id
    return Example(record["prompt"], str(answer), meta)


def _lines(text: str) -> list[str]:
    """Lines as JSON Lines defines them: split on ``\n`` only (a ``\r`` before it dropped),
    never on U+2028, U+0085 or the other breaks ``str.splitlines`` knows, which JSON strings
    (``json.dumps(..., ensure_ascii=False)``) and prompts may hold."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def _read_text(path: str, text: str) -> list[Example]:
    out = []
    for number, line in enumerate(_lines(text), start=1):
        if line.strip():
            out.append(Example(line, "", {"difficulty": None, "source_id": number}))
    return out


def _read_json(path: str, text: str) -> list[Example]:
    if text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as exc:
            raise TaskError(
                f"{path}, line {exc.lineno}: invalid JSON ({exc.msg}); "
                "write one JSON list or one object per line"
            ) from None
        return [
            _record_example(path, f"item {i}", record, i) for i, record in enumerate(records, 1)
        ]
    out = []
    for number, line in enumerate(_lines(text), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TaskError(
                f"{path}, line {number}: invalid JSON ({exc.msg}); each line must be one object "
                'like {"prompt": "...", "answer": "..."}'
            ) from None
        out.append(_record_example(path, f"line {number}", record, number))
    return out


def read_prompts(path: str) -> list[Example]:
    """The examples in ``path`` (text or JSON Lines, see the module docstring)."""
    full = os.path.expanduser(path)
    if not os.path.isfile(full):
        what = "is a folder, not a file" if os.path.isdir(full) else "does not exist"
        raise TaskError(f"prompts file {path!r} {what}; pass path=FILE (.txt or .jsonl)")
    try:
        with open(full, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise TaskError(
            f"cannot read prompts file {path!r} ({exc}); it must be UTF-8 text"
        ) from None
    if full.lower().endswith(_JSONL_EXTS):
        examples = _read_json(path, text)
    else:
        examples = _read_text(path, text)
    if not examples:
        raise TaskError(f"prompts file {path!r} holds no prompts (it is empty or all blank lines)")
    return examples


@register_task
class PromptsTask(Task):
    """Prompts (and optional answers) from a text or JSON Lines file, in the file's order."""

    name = "prompts"
    description = "your own prompts: a .txt file (one per line) or .jsonl ({prompt, answer})"
    params = {
        "path": Param(
            str,
            None,
            "a .txt file (one prompt per line) or .jsonl file of {prompt, answer}",
            required=True,
        ),
    }

    def build(self, n: int | None) -> list[Example]:
        examples = read_prompts(self.path)
        return examples if n is None else examples[:n]
