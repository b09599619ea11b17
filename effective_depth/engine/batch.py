"""Tokenized, right-padded batches of examples, and the masks of positions to measure.

Right padding is what makes batching exact for causal models: a pad token appended after a
prompt cannot influence any earlier position, so no attention mask is needed and every real
position computes exactly what it computes alone. Padding positions are simply never measured.

Every example must survive tokenization: its ids, rebuilt token by token, must stand for
``prompt + answer`` (:mod:`effective_depth.models.token_text`). A tokenizer that drops or
replaces characters it cannot represent would otherwise analyse a different text than the
user's, silently; that is a :class:`~effective_depth.errors.TaskError` naming the characters,
or, with ``allow_lossy=True``, a warning kept in :attr:`Batch.warnings` (and in a study's
results.json). Unicode normalisation by the tokenizer's own normaliser is a warning, not an error.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from ..errors import ConfigError, TaskError
from ..models.chat import ChatFormat
from ..models.evaluate import decode_ids, encode_example, query_token_start
from ..models.token_text import check_tokenization
from ..tasks.base import Example

__all__ = ["Batch", "BatchLike", "as_batch", "encode_batch", "measured_mask", "query_starts",
           "POSITIONS", "lossy_tokenization", "bos_read"]

log = logging.getLogger(__name__)


@dataclass
class Batch:
    """``tokens[b, :lengths[b]]`` is example ``b``: prompt, then answer from ``answer_start[b]``."""

    tokens: Int[Tensor, "batch pos"]
    lengths: Int[Tensor, " batch"]
    answer_start: Int[Tensor, " batch"]
    str_tokens: list[list[str]]
    examples: list[Example] = field(default_factory=list)
    #: ``{"code", "message"}`` of what a study stores in results.json: lossy tokenizations
    #: accepted with ``allow_lossy=True`` (one per example), ``unicode_normalised``, ``double_bos``
    warnings: list[dict[str, str]] = field(default_factory=list)
    #: per example, the first position of the asked example of a few-shot prompt (its prompt
    #: and answer tokens run from there to ``lengths[b]``); None when an example does not mark it
    query_start: Int[Tensor, " batch"] | None = None

    @property
    def size(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def width(self) -> int:
        return int(self.tokens.shape[1])

    def select(self, rows: Sequence[int]) -> Batch:
        idx = torch.as_tensor(list(rows), dtype=torch.long)
        width = int(self.lengths[idx].max())
        return Batch(
            self.tokens[idx.to(self.tokens.device), :width],
            self.lengths[idx],
            self.answer_start[idx],
            [self.str_tokens[i] for i in rows],
            [self.examples[i] for i in rows] if self.examples else [],
            query_start=None if self.query_start is None else self.query_start[idx],
        )

    def token_ids(self, b: int) -> list[int]:
        return self.tokens[b, : int(self.lengths[b])].tolist()

    def require_answers(self, what: str) -> None:
        """A :class:`ConfigError` naming the examples without answer tokens: ``what`` reads
        the answer (exact match, erasure, integrated gradients)."""
        missing = [b for b in range(self.size) if int(self.answer_start[b]) >= int(self.lengths[b])]
        if missing:
            raise ConfigError(
                f"{what} needs an answer for every example; examples {missing[:10]} have none "
                "(a .txt prompts file has prompts only: use .jsonl with \"answer\" fields)"
            )

    def answer_predicting_positions(self, b: int) -> list[int]:
        """Positions whose next-token distribution predicts an answer token of example ``b``."""
        return list(range(int(self.answer_start[b]) - 1, int(self.lengths[b]) - 1))


def lossy_tokenization(tokenizer: Any, text: str) -> str | None:
    """None when the tokenizer's ids of ``text`` stand for exactly ``text`` (or for its Unicode
    normal form, when the tokenizer's own normaliser applies one: see
    :func:`~effective_depth.models.token_text.check_tokenization`); otherwise what was lost.

    The first sentence names the first lost character and its position, e.g. ``character 'a'
    at position 0 of 'a+1=2' is unknown to the model's tokenizer or changed by it``.
    """
    check = check_tokenization(tokenizer, text)
    return check.message if check.kind == "lossy" else None


def encode_batch(
    tokenizer: Any,
    examples: Sequence[Example],
    *,
    prepend_bos: bool = True,
    device: str | torch.device = "cpu",
    pad_id: int | None = None,
    allow_lossy: bool = False,
    chat: ChatFormat | None = None,
) -> Batch:
    """Tokenize ``prompt + answer`` of every example and right-pad to a common width.

    The tokens and the prompt/answer boundary follow :func:`~effective_depth.models.evaluate.
    encode_example` (the tokenizer's own special tokens; with ``chat``, its chat template). A
    text whose tokens do not stand for it raises :class:`TaskError` unless ``allow_lossy``
    (then the message is logged and kept in ``Batch.warnings``, code ``lossy_tokenization``).
    Text the tokenizer's Unicode normaliser rewrites (``unicode_normalised``) and a BOS read
    twice (``double_bos``) are warnings too.
    """
    if not examples:
        raise TaskError("no examples to analyse (the task produced an empty list)")
    rows, starts = [], []
    queries: list[int | None] = []
    warnings: list[dict[str, str]] = []
    normalised: list[str] = []
    for ex in examples:
        texts = [ex.prompt + ex.answer] if chat is None else [
            chat.prompt_text(tokenizer, ex.prompt), ex.answer]
        for text in texts:
            check = check_tokenization(tokenizer, text)
            if check.kind == "normalised":
                normalised.append(check.message)
            elif check.kind == "lossy":
                if not allow_lossy:
                    raise TaskError(
                        f"{check.message}. Remove or replace those characters, or accept the "
                        "loss with allow_lossy_tokenization (CLI: --allow-lossy-tokenization)")
                log.warning("lossy tokenization accepted: %s", check.message)
                warnings.append({"code": "lossy_tokenization",
                                 "message": f"lossy tokenization: {check.message}"})
        ids, n_prompt = encode_example(tokenizer, ex, prepend_bos=prepend_bos, chat=chat)
        rows.append(ids)
        starts.append(n_prompt)
        queries.append(None if chat is not None else query_token_start(tokenizer, ex, ids))
    if normalised:
        more = f" (and in {len(normalised) - 1} more examples)" if len(normalised) > 1 else ""
        warnings.append({"code": "unicode_normalised", "message": normalised[0] + more})
    double = _double_bos(tokenizer, rows, chat is not None)
    if double:
        warnings.append(double)
    pad = pad_id if pad_id is not None else (getattr(tokenizer, "pad_token_id", None) or 0)
    width = max(map(len, rows))
    tokens = torch.full((len(rows), width), pad, dtype=torch.long)
    for b, ids in enumerate(rows):
        tokens[b, : len(ids)] = torch.tensor(ids)
    # token by token: readable labels ("Ġthe" becomes " the") for maps and dashboards
    str_tokens = [[decode_ids(tokenizer, [i]) for i in ids] for ids in rows]
    return Batch(
        tokens.to(device),
        torch.tensor([len(r) for r in rows]),
        torch.tensor(starts),
        str_tokens,
        list(examples),
        warnings,
        query_start=None if None in queries else torch.tensor(queries),
    )


def bos_read(tokenizer: Any, batch: Batch) -> bool:
    """Whether the model reads the tokenizer's BOS token at position 0 (of every example)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    return bos is not None and batch.size > 0 and bool((batch.tokens[:, 0] == bos).all())


def _double_bos(tokenizer: Any, rows: Sequence[Sequence[int]], chat: bool) -> dict[str, str] | None:
    """A ``double_bos`` warning when examples start with the BOS twice (the prompt text begins
    with the BOS string and the tokenizer or the chat template writes one too)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return None
    twice = [b for b, ids in enumerate(rows) if len(ids) > 1 and ids[0] == ids[1] == bos]
    if not twice:
        return None
    by = "the chat template" if chat else "the tokenizer"
    fix = ("remove it from the prompts" if chat else
           "remove it from the prompts, or use --chat-template (the template writes it once)")
    message = (f"{len(twice)} of {len(rows)} examples (first: example {twice[0]}) are read with "
               f"the BOS token {tokenizer.bos_token!r} twice: their prompt text begins with it "
               f"and {by} adds it too; {fix}")
    log.warning(message)
    return {"code": "double_bos", "message": message}


#: what a measurement function accepts as its prompts: a Batch, a string, a list of strings or
#: Examples, or a token-id tensor. Checked by :func:`as_batch` (whose error says what is
#: accepted), not by the annotation, so that a runtime type checker lets that error through.
BatchLike = Any

_ACCEPTED = ("a Batch (encode_batch), a prompt string, a list of prompt strings, a list of "
             "Examples (with answers), or a token-id tensor of shape [pos] or [batch, pos]")


def as_batch(model: Any, inputs: Any, *, what: str = "the measurement") -> Batch:
    """``inputs`` as a :class:`Batch` for ``model``: the one coercion every measurement function
    applies, so ``logit_lens(model, "12+34=")`` works as well as a batch.

    Strings are prompts without answers (with the tokenizer's own special tokens, as
    :func:`encode_batch` reads them); Examples keep their answers; a token tensor is read as
    given (every row its full width, no answer). Anything else is a :class:`ConfigError` saying what is accepted.
    """
    if isinstance(inputs, Batch):
        return inputs
    device = _model_device(model)
    if isinstance(inputs, Tensor):
        return _tensor_batch(model, inputs, device, what)
    if isinstance(inputs, str):
        inputs = [inputs]
    if isinstance(inputs, Sequence) and inputs and all(isinstance(x, (str, Example)) for x in inputs):
        tokenizer = getattr(model, "tokenizer", None)
        if tokenizer is None:
            raise ConfigError(f"{what}: the model has no tokenizer, so text prompts cannot be "
                              "encoded; pass a token-id tensor or a Batch")
        examples = [x if isinstance(x, Example) else Example(x, "") for x in inputs]
        return encode_batch(tokenizer, examples, device=device)
    got = type(inputs).__name__
    if isinstance(inputs, Sequence):
        kinds = sorted({type(x).__name__ for x in inputs})
        got = f"an empty {got}" if not inputs else f"a {got} of {', '.join(kinds)}"
    raise ConfigError(f"{what} takes {_ACCEPTED}; got {got}")


def _model_device(model: Any) -> torch.device:
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


def _tensor_batch(model: Any, tokens: Tensor, device: torch.device, what: str) -> Batch:
    if tokens.dtype in (torch.bool,) or tokens.is_floating_point() or tokens.is_complex():
        raise ConfigError(f"{what}: a token tensor must hold integer token ids, got dtype "
                          f"{tokens.dtype}; it takes {_ACCEPTED}")
    if tokens.dim() == 1:
        tokens = tokens[None]
    if tokens.dim() != 2 or tokens.shape[1] == 0 or tokens.shape[0] == 0:
        raise ConfigError(f"{what}: a token tensor must have shape [pos] or [batch, pos] with "
                          f"at least one token, got {tuple(tokens.shape)}")
    d_vocab = getattr(getattr(model, "cfg", None), "d_vocab", None)
    low, high = int(tokens.min()), int(tokens.max())
    if low < 0 or (d_vocab is not None and high >= int(d_vocab)):
        raise ConfigError(f"{what}: token ids must lie in 0..{d_vocab - 1 if d_vocab else '?'}, "
                          f"got {low}..{high}")
    tokens = tokens.long().to(device)
    n, width = tokens.shape
    tokenizer = getattr(model, "tokenizer", None)
    rows = tokens.tolist()
    str_tokens = [[tokenizer.decode([i]) if tokenizer is not None else str(i) for i in r]
                  for r in rows]
    full = torch.full((n,), width, dtype=torch.long)
    return Batch(tokens, full, full.clone(), str_tokens)


#: which positions of a prompt the position-averaged measurements read (docs/methods.md,
#: "Positions"): every position, or only the asked example's of a few-shot prompt
POSITIONS = ("all", "query")


def measured_mask(
    lengths: Int[Tensor, " batch"], width: int, skip_front: int = 1, include_front: bool = True,
    query_start: Int[Tensor, " batch"] | None = None,
) -> Bool[Tensor, "batch pos"]:
    """True at real (non-padding) positions, minus the first ``skip_front`` unless included;
    with ``query_start`` (:func:`query_starts`), only from each prompt's query on."""
    pos = torch.arange(width)[None, :]
    mask = pos < lengths[:, None]
    if not include_front:
        mask &= pos >= skip_front
    if query_start is not None:
        mask &= pos >= query_start.to(mask.device)[:, None]
    return mask


def query_starts(batch: Batch, positions: str) -> Int[Tensor, " batch"] | None:
    """What :func:`measured_mask` restricts to for ``positions``: None for ``"all"``; for
    ``"query"``, where each prompt's asked example begins (an error when the examples do not say:
    only few-shot tasks mark it, and a chat template hides it)."""
    if positions not in POSITIONS:
        raise ConfigError(f"positions must be one of {', '.join(POSITIONS)}, got {positions!r}")
    if positions == "all":
        return None
    if batch.query_start is None:
        raise ConfigError(
            "positions='query' needs examples that mark where their asked example starts "
            "(meta 'query_start', a character offset in the prompt: the few-shot tasks "
            "fewshot_addition and capitals set it; a .jsonl prompt file can give it in \"meta\"); "
            "these do not, or a chat template wraps them. Use positions='all'")
    return batch.query_start
