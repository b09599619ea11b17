"""What text a list of token ids stands for, rebuilt token by token, and the exact lossy check.

``tokenizer.decode`` is not a faithful witness of what the model reads: a tokenizer saved
without a decoder joins its tokens with spaces (a character-level tokenizer "decodes"
``655+815=1470`` as ``6 5 5 + 8 1 5 = 1 4 7 0`` although its ids are exact), and a decoder
may clean up or skip text. Here each token is turned back into bytes by the rules of its own
vocabulary, read from the tokenizer's decoder description: byte-level BPE (GPT-2, Qwen,
SmolLM2) maps every character of a token to one byte; SentencePiece-style vocabularies (Llama,
Gemma) spell bytes as ``<0xNN>`` and spaces as ``▁``; WordPiece marks continuations with
``##``; added tokens (``<|im_start|>``) stand for their own text. Unknown tokens are located
exactly by the tokenizer's offsets. The rebuilt text is then compared with the text given:

* equal (up to the one leading space a prefix-space tokenizer adds): nothing lost;
* equal to a Unicode normal form (NFC, NFKC, ...) of the text that the tokenizer's own
  normaliser applies: a *note* — the model reads the normalised text, and the message shows
  the code points, since the two strings usually print alike;
* anything else: characters lost or changed, named with their positions.
"""

from __future__ import annotations

import difflib
import json
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

__all__ = ["TextCheck", "check_tokenization", "rebuild_text", "code_points"]

_UNICODE_FORMS = ("NFC", "NFD", "NFKC", "NFKD")
_BYTE_TOKEN = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


@dataclass(frozen=True)
class TextCheck:
    """The outcome of :func:`check_tokenization`: ``kind`` is ``"exact"``, ``"normalised"``
    (a note: the tokenizer's Unicode normaliser rewrote the text) or ``"lossy"``; ``message``
    says what happened (empty when exact); ``read`` is the text the model reads."""

    kind: str
    message: str
    read: str


def code_points(text: str) -> str:
    """``'e\u0301'`` -> ``"U+0065 U+0301"``: how to tell apart strings that print alike."""
    return " ".join(f"U+{ord(ch):04X}" for ch in text)


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """The inverse of GPT-2's bytes-to-unicode table (byte-level BPE vocabularies)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
            *range(ord("®"), ord("ÿ") + 1)]
    chars, n = list(keep), 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(keep, chars)}


def _flatten(component: dict[str, Any] | None) -> list[dict[str, Any]]:
    if not component:
        return []
    if component.get("type") == "Sequence":
        inner = component.get("decoders") or component.get("normalizers") \
            or component.get("pretokenizers") or []
        return [c for part in inner for c in _flatten(part)]
    return [component]


def _state(component: Any) -> dict[str, Any] | None:
    """The JSON description of one tokenizer component (decoder, normaliser, ...)."""
    return None if component is None else json.loads(component.__getstate__())


def _pattern(spec: dict[str, Any]) -> tuple[str, bool]:
    pattern = spec.get("pattern") or {}
    if "Regex" in pattern:
        return pattern["Regex"], True
    return pattern.get("String", ""), False


class _Rebuilder:
    """Turns token ids back into text by the rules of one tokenizer's vocabulary."""

    def __init__(self, tokenizer: Any) -> None:
        backend = tokenizer.backend_tokenizer
        self.backend = backend
        self.decoders = _flatten(_state(backend.decoder))
        self.normalizers = _flatten(_state(backend.normalizer))
        self.pre_tokenizers = _flatten(_state(backend.pre_tokenizer))
        self.added = {i: a.content for i, a in backend.get_added_tokens_decoder().items()}
        self.unk_id = getattr(tokenizer, "unk_token_id", None)
        known = {"ByteLevel", "Replace", "ByteFallback", "Fuse", "Metaspace", "Strip",
                 "WordPiece", "BPEDecoder"}
        self.supported = all(d.get("type") in known for d in self.decoders)
        self.byte_level = any(d.get("type") == "ByteLevel" for d in self.decoders)

    def unicode_forms(self) -> list[str]:
        return [n["type"] for n in self.normalizers if n.get("type") in _UNICODE_FORMS]

    def adds_prefix_space(self) -> bool:
        parts = self.pre_tokenizers + self.normalizers
        for p in parts:
            if p.get("type") == "ByteLevel" and p.get("add_prefix_space"):
                return True
            if p.get("type") == "Metaspace" and p.get("prepend_scheme", "always") != "never":
                return True
            if p.get("type") == "Prepend":
                return True
        return False

    def token_bytes(self, token_id: int, first: bool) -> bytes:
        if token_id in self.added:
            return self.added[token_id].encode()
        piece = self.backend.id_to_token(token_id)
        if piece is None:
            return b""
        for d in self.decoders:
            kind = d.get("type")
            if kind == "WordPiece":
                prefix = d.get("prefix", "##")
                piece = piece[len(prefix):] if piece.startswith(prefix) else (
                    piece if first else " " + piece)
            elif kind == "BPEDecoder":
                suffix = d.get("suffix", "</w>")
                piece = piece.replace(suffix, " ")
            elif kind == "Replace":
                pattern, regex = _pattern(d)
                content = d.get("content", "")
                piece = re.sub(pattern, content, piece) if regex else piece.replace(pattern, content)
            elif kind == "Metaspace":
                piece = piece.replace(d.get("replacement", "▁"), " ")
        m = _BYTE_TOKEN.match(piece)
        if m and any(d.get("type") == "ByteFallback" for d in self.decoders):
            return bytes([int(m.group(1), 16)])
        if self.byte_level:
            table = _byte_decoder()
            if all(ch in table for ch in piece):
                return bytes(table[ch] for ch in piece)
        return piece.encode()

    def strip_left(self) -> int:
        return sum(int(d.get("start", 0)) for d in self.decoders
                   if d.get("type") == "Strip" and d.get("content") == " ")

    def metaspace_strips_first(self) -> bool:
        return any(d.get("type") == "Metaspace" and d.get("prepend_scheme", "always") != "never"
                   for d in self.decoders)


def _rebuilder(tokenizer: Any) -> _Rebuilder | None:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    # cached per tokenizer (str_tokens rebuild one token at a time); a replaced decoder counts
    decoder = None if backend.decoder is None else backend.decoder.__getstate__()
    cached = _CACHE.get(id(tokenizer))
    if cached is None or cached[0] is not backend or cached[1] != decoder:
        if len(_CACHE) > 16:
            _CACHE.clear()
        cached = (backend, decoder, _Rebuilder(tokenizer))
        _CACHE[id(tokenizer)] = cached
    rebuilder = cached[2]
    return rebuilder if rebuilder.supported else None


_CACHE: dict[int, tuple[Any, Any, _Rebuilder]] = {}


def rebuild_text(tokenizer: Any, ids: Sequence[int]) -> str | None:
    """The text ``ids`` stand for, rebuilt token by token (no decoder, no clean-up); unknown
    tokens are spelled with their own token text. None when the tokenizer's vocabulary scheme
    is not one this module knows (then only ``decode`` can say)."""
    rb = _rebuilder(tokenizer)
    if rb is None:
        return None
    data = b"".join(rb.token_bytes(int(i), k == 0) for k, i in enumerate(ids))
    text = data.decode("utf-8", errors="replace")
    strip = rb.strip_left()
    for _ in range(strip):
        text = text[1:] if text.startswith(" ") else text
    return text


def check_tokenization(tokenizer: Any, text: str) -> TextCheck:
    """Does the tokenizer's tokenization of ``text`` (no special tokens) stand for ``text``?

    See the module docstring for the three outcomes. A tokenizer without a fast backend, or
    with a vocabulary scheme this module does not know, is judged by ``decode``.
    """
    rb = _rebuilder(tokenizer)
    if rb is None:
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        read = tokenizer.decode(ids, clean_up_tokenization_spaces=False)
        return _judge(text, read, [], [], prefix_space=False)
    enc = rb.backend.encode(text, add_special_tokens=False)
    ids, offsets = list(enc.ids), list(enc.offsets)
    unknown: list[int] = []
    if rb.unk_id is not None:
        for i, (start, end) in zip(ids, offsets):
            if i == rb.unk_id:
                unknown.extend(range(start, end))
    read = rebuild_text(tokenizer, ids) or ""
    if rb.metaspace_strips_first() and read.startswith(" ") and not text.startswith(" "):
        read = read[1:]
    return _judge(text, read, sorted(set(unknown)), rb.unicode_forms(),
                  prefix_space=rb.adds_prefix_space())


def _judge(text: str, read: str, unknown: list[int], forms: list[str],
           prefix_space: bool) -> TextCheck:
    if not unknown:
        if read == text or (prefix_space and read == " " + text and not text.startswith(" ")):
            return TextCheck("exact", "", read)
        for form in forms:
            normal = unicodedata.normalize(form, text)
            if read in (normal, " " + normal):
                return TextCheck("normalised", _normalised_message(text, normal, form), read)
    if unknown:  # the tokenizer's offsets name them exactly, in the text as given
        target, lost = text, unknown
    else:
        target = text
        for form in forms:  # report only what the normaliser does not explain
            target = unicodedata.normalize(form, target)
        ops = difflib.SequenceMatcher(None, target, read, autojunk=False).get_opcodes()
        lost = [i for tag, i1, i2, _, _ in ops if tag in ("delete", "replace")
                for i in range(i1, i2)]
    if not lost:
        return TextCheck("lossy", f"tokenizing {text!r} adds text: the model would read "
                         f"{read!r}", read)
    chars = sorted({target[i] for i in lost})
    i, ch = lost[0], target[lost[0]]
    head = (f"character {ch!r}{_cp(ch)} at position {i} of {target!r} is unknown to the "
            "model's tokenizer or changed by it")
    if len(chars) > 1:
        joined = "".join(chars)
        head += f" (lost characters: {joined!r}{_cp(joined)})"
    return TextCheck("lossy", f"{head}: the model would read {read!r}", read)


def _cp(text: str) -> str:
    """Code points in brackets when ``text`` has a character that does not print as itself."""
    plain = all(ch.isascii() and ch.isprintable() for ch in text)
    return "" if plain else f" [{code_points(text)}]"


def _normalised_message(text: str, normal: str, form: str) -> str:
    ops = difflib.SequenceMatcher(None, text, normal, autojunk=False).get_opcodes()
    changes = [(text[i1:i2], normal[j1:j2]) for tag, i1, i2, j1, j2 in ops if tag != "equal"]
    shown = "; ".join(f"{a!r} [{code_points(a)}] is read as {b!r} [{code_points(b)}]"
                      for a, b in changes[:3])
    more = f" and {len(changes) - 3} more" if len(changes) > 3 else ""
    return (f"the tokenizer's normaliser rewrites {text!r} to Unicode {form}: {shown}{more}; "
            "the model reads the normalised text")
