"""Exact-match accuracy by greedy decoding of the answer.

For every example the model reads the prompt and greedily generates as many tokens as the
reference answer has; the example counts as correct when every generated token equals the answer's
token. This is the accuracy of the zoo's model cards. The behavioural effective-depth estimators
(``ed_task``, ``ed_prune``) do not call it: ``metrics/behaviour.py`` computes the same exact match
teacher-forced, one pass per variant (the tests check that the two agree).

Works with a TransformerLens model, a ``TransformerBridge`` or a Hugging Face causal LM, or any
``forward(tokens) -> logits`` callable.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..errors import TaskError
from ..tasks.base import Example

__all__ = ["encode_example", "query_token_start", "prompt_token_count", "special_prefix", "decode_ids", "exact_match", "accuracy_by_difficulty", "forward_fn"]


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def decode_ids(tokenizer: Any, ids: Sequence[int]) -> str:
    """The text of ``ids`` exactly as the tokenizer spells it: rebuilt token by token from its
    vocabulary (:func:`~effective_depth.models.token_text.rebuild_text`), so a tokenizer saved
    without a decoder does not gain spaces; ``decode`` only for vocabularies not known there."""
    from .token_text import rebuild_text

    text = rebuild_text(tokenizer, ids)
    if text is not None:
        return text
    return tokenizer.decode(list(ids), clean_up_tokenization_spaces=False)


def prompt_token_count(tokenizer: Any, full_ids: Sequence[int], prompt: str) -> int:
    """How many leading tokens of ``full_ids`` (the tokenization of ``prompt + answer``) belong to
    the prompt: the longest run of leading tokens whose text is a prefix of the prompt's text.

    A token that straddles the prompt/answer boundary (``" 72"`` after a prompt ending in a
    space, ``"=-"`` after one ending in ``=``) is therefore an answer token.
    """
    prompt_ids = _ids(tokenizer, prompt)
    target = decode_ids(tokenizer, prompt_ids)  # the prompt as the tokenizer reads it
    if list(full_ids[: len(prompt_ids)]) == prompt_ids:
        return len(prompt_ids)  # no merge across the boundary: the usual case
    k = 0
    while k < min(len(full_ids), len(prompt_ids)) and full_ids[k] == prompt_ids[k]:
        k += 1
    while k > 0 and not target.startswith(decode_ids(tokenizer, full_ids[:k])):
        k -= 1
    while k < len(full_ids) and target.startswith(decode_ids(tokenizer, full_ids[: k + 1])):
        k += 1
    return k


def special_prefix(tokenizer: Any, text: str, body: Sequence[int]) -> list[int]:
    """The special tokens the tokenizer itself puts in front of ``text`` (its BOS, when its
    post-processor or ``add_bos_token`` adds one; nothing for Qwen, GPT-2 or SmolLM2):
    ``tokenizer(text)`` is ``prefix + body (+ any trailing specials, which are not read)``."""
    full = list(tokenizer(text)["input_ids"])
    n = len(body)
    for k in range(len(full) - n + 1):
        if full[k : k + n] == list(body):
            return full[:k]
    raise TaskError(
        f"the tokenizer's tokenization of {text[:60]!r} with special tokens does not contain "
        "its tokenization without them; the toolkit cannot tell which ids are special tokens"
    )


def encode_example(tokenizer: Any, example: Example, prepend_bos: bool = True,
                   chat: Any = None) -> tuple[list[int], int]:
    """Token ids of ``prompt + answer`` and how many of them belong to the prompt.

    The rule (``docs/methods.md``, "Tokens"): the model reads the tokenizer's own tokenization
    ``tokenizer(prompt + answer)`` — exactly the ids a Hugging Face model reads for it: a BOS in
    front when (and only when) the tokenizer itself adds one, whatever its post-processor or
    ``add_bos_token`` does (``prepend_bos=False``: no special tokens at all). The prompt is the
    longest run of leading tokens whose text is a prefix of the prompt
    (:func:`prompt_token_count`); the answer tokens are the rest, so a token merged across the
    boundary belongs to the answer, and the answer may be several tokens.

    With ``chat`` (a :class:`~effective_depth.models.chat.ChatFormat`) the prompt ids are the
    chat template's (``apply_chat_template``, generation prompt included; it writes its own
    BOS) and the answer ids, ``tokenizer(answer, add_special_tokens=False)``, follow them.
    """
    if chat is not None:
        prompt_ids = chat.prompt_ids(tokenizer, example.prompt)
        return prompt_ids + _ids(tokenizer, example.answer), len(prompt_ids)
    text = example.prompt + example.answer
    full_ids = _ids(tokenizer, text)
    n_prompt = prompt_token_count(tokenizer, full_ids, example.prompt)
    prefix = special_prefix(tokenizer, text, full_ids) if prepend_bos else []
    if n_prompt == 0 and not prefix:
        raise TaskError(
            f"prompt {example.prompt!r} has no token of its own (its text merges into the "
            f"answer's first token and the tokenizer adds no BOS): no position predicts the answer"
        )
    return [*prefix, *full_ids], n_prompt + len(prefix)


def query_token_start(tokenizer: Any, example: Example, ids: Sequence[int]) -> int | None:
    """The first position of ``ids`` (``encode_example``'s tokens of ``example``, without a chat
    template) that belongs to the asked example of a few-shot prompt: the tokens before it are
    the longest run whose text is a prefix of ``prompt[:meta["query_start"]]`` (the rule of
    :func:`prompt_token_count`, so a token merged across the boundary belongs to the query).
    None when the example does not mark where its query starts."""
    start = example.meta.get("query_start")
    if start is None:
        return None
    if not isinstance(start, int) or not 0 <= start <= len(example.prompt):
        raise TaskError(f"query_start {start!r} of prompt {example.prompt[:40]!r} is not a "
                        f"character offset in 0..{len(example.prompt)}")
    text_ids = _ids(tokenizer, example.prompt + example.answer)
    front = len(ids) - len(text_ids)  # the special tokens in front (BOS)
    if start == 0:
        return 0
    return front + prompt_token_count(tokenizer, text_ids, example.prompt[:start])


def forward_fn(model: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """A ``tokens -> logits`` function for a TransformerLens or Hugging Face model."""
    if hasattr(model, "run_with_hooks"):  # HookedTransformer / TransformerBridge
        return lambda tokens: model(tokens, return_type="logits")
    return lambda tokens: model(tokens).logits


def _device_of(model: Any) -> torch.device:
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


@torch.no_grad()
def exact_match(
    model: Any,
    examples: Sequence[Example],
    *,
    tokenizer: Any = None,
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
    batch_size: int = 64,
    prepend_bos: bool = True,
) -> list[bool]:
    """Whether greedy decoding reproduces each example's answer exactly (one bool per example)."""
    tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise ValueError("exact_match needs a tokenizer (the model has none)")
    forward = forward or forward_fn(model)
    device = _device_of(model)
    encoded = [encode_example(tokenizer, ex, prepend_bos) for ex in examples]
    # Group by (prompt length, answer length) so that a batch needs no padding at all.
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, (ids, n_prompt) in enumerate(encoded):
        groups[(n_prompt, len(ids) - n_prompt)].append(i)
    correct = [False] * len(examples)
    for (n_prompt, n_answer), members in groups.items():
        for start in range(0, len(members), batch_size):
            idx = members[start : start + batch_size]
            full = torch.tensor([encoded[i][0] for i in idx], device=device)
            tokens = full[:, :n_prompt]
            ok = torch.ones(len(idx), dtype=torch.bool, device=device)
            for step in range(n_answer):
                next_tok = forward(tokens)[:, -1].argmax(-1)
                ok &= next_tok == full[:, n_prompt + step]
                if not ok.any():
                    break
                tokens = torch.cat([tokens, next_tok[:, None]], dim=1)
            for i, flag in zip(idx, ok.tolist()):
                correct[i] = bool(flag)
    return correct


def accuracy_by_difficulty(examples: Sequence[Example], correct: Sequence[bool]) -> dict[Any, float]:
    """Mean exact match per ``meta["difficulty"]`` level."""
    buckets: dict[Any, list[bool]] = defaultdict(list)
    for ex, ok in zip(examples, correct):
        buckets[ex.difficulty].append(ok)
    return {k: sum(v) / len(v) for k, v in sorted(buckets.items(), key=lambda kv: (kv[0] is None, str(type(kv[0])), kv[0] if kv[0] is not None else 0))}
