"""The zoo's character-level tokenizer: one token per character of a small, fixed alphabet.

Built in code as a real ``PreTrainedTokenizerFast`` (a WordLevel model over single characters)
whose post-processor puts ``<bos>`` in front, as the zoo models were trained, so zoo checkpoints
save and load their tokenizer exactly like any Hugging Face model. Characters
outside the alphabet are refused with a clear error rather than silently mapped to ``<unk>``:
a model that never saw a character cannot say anything meaningful about it.
"""

from __future__ import annotations

from typing import Any

from ..errors import TaskError

__all__ = ["ALPHABET", "SPECIAL_TOKENS", "build_char_tokenizer", "check_text"]

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")
#: every character the generated arithmetic tasks can produce, plus a little room
ALPHABET = "0123456789+-*=;,.() "


def build_char_tokenizer(alphabet: str = ALPHABET) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    if len(set(alphabet)) != len(alphabet):
        raise ValueError("alphabet has repeated characters")
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in alphabet:
        vocab[ch] = len(vocab)
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    # Split between every pair of characters, keeping each one as its own token.
    backend.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    backend.decoder = decoders.Fuse()
    # the zoo models are trained with <bos> at position 0: the tokenizer adds it itself, so
    # tokenizer(text) is what the model reads (the toolkit follows the tokenizer's own rule)
    backend.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", vocab["<bos>"])])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )


def check_text(text: str, alphabet: str = ALPHABET) -> None:
    """Raise :class:`TaskError` naming the first character outside ``alphabet``."""
    allowed = set(alphabet)
    for i, ch in enumerate(text):
        if ch not in allowed:
            raise TaskError(
                f"character {ch!r} at position {i} of {text!r} is not in the zoo tokenizer's "
                f"alphabet {alphabet!r}; zoo models only read arithmetic strings"
            )
