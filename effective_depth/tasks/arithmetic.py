"""Generated arithmetic tasks whose difficulty is a number: digits, or the number of steps.

Used by both reference papers' difficulty analyses (Csordás et al. 2025 vary the number of
operations; Hu et al. 2025 vary problem difficulty), and by the bundled zoo, whose models were
trained on exactly these formats. Generation is seeded with a private ``random.Random`` so
results never depend on global RNG state.

Formats (parameter ``format``):

``direct``      ``"123+456="`` -> ``"579"``
``reversed``    the answer written least-significant digit first: ``"975"``
``scratchpad``  digit-by-digit work, then ``;`` and the result:
                ``"3+6+0=9,2+5+0=7,1+4+0=5;579"`` (addition: digit, digit, carry-in = sum);
                ``"123*4=492,123*50=6150;6642"`` (multiplication: one partial product per digit);
                ``"7,5,12;12"`` (multistep: the running total after each operation).

``split`` selects a stable 90/10 split of the problem space by a hash of the prompt, so the zoo's
held-out accuracy is measured on problems the trainer never saw.
"""

from __future__ import annotations

import random
from typing import Any, ClassVar

from ..errors import TaskError
from .base import Example, Param, Task, register_task, stable_bucket

__all__ = ["AdditionTask", "MultiplicationTask", "MultistepTask", "in_split"]

_SPLIT = Param(str, "all", "which problems: all, the 90% train split or the 10% test split",
               choices=("all", "train", "test"))
_SEED = Param(int, 0, "seed of the problem generator", min=0)
_COUNT_DEFAULT = 200


def in_split(prompt: str, split: str) -> bool:
    """Whether a problem belongs to ``split`` ("all", "train": 9 of 10 buckets, "test": 1)."""
    if split == "all":
        return True
    is_test = stable_bucket(prompt) == 0
    return is_test if split == "test" else not is_test


def _operand_range(digits: int) -> tuple[int, int]:
    return (0 if digits == 1 else 10 ** (digits - 1), 10**digits - 1)


class _Generated(Task):
    generated = True
    max_tries_factor: ClassVar[int] = 200

    def problem(self, rng: random.Random) -> tuple[str, str, dict[str, Any]]:
        raise NotImplementedError

    def space_size(self) -> int:
        """How many distinct problems exist (before the split)."""
        raise NotImplementedError

    def build(self, n: int | None) -> list[Example]:
        want = _COUNT_DEFAULT if n is None else n
        rng = random.Random(f"{self.name}:{self.seed}:{self.difficulty}")
        seen: set[str] = set()
        out: list[Example] = []
        space = self.space_size()
        tries = 0
        while len(out) < want and tries < self.max_tries_factor * want + 1000:
            tries += 1
            prompt, answer, meta = self.problem(rng)
            if prompt in seen:
                if len(seen) >= space:
                    break
                continue
            seen.add(prompt)
            if in_split(prompt, self.split):
                out.append(Example(prompt, answer, {"difficulty": self.difficulty, **meta}))
        return out


def _digits_param(max_digits: int) -> Param:
    return Param(int, 3, "number of digits of each operand (the difficulty)", min=1, max=max_digits)


@register_task
class AdditionTask(_Generated):
    name = "addition"
    description = "a+b= with both operands of `digits` digits"
    params = {
        "digits": _digits_param(20),
        "format": Param(str, "direct", "answer format", choices=("direct", "reversed", "scratchpad")),
        "split": _SPLIT,
        "seed": _SEED,
    }
    difficulty_param = "digits"

    def space_size(self) -> int:
        lo, hi = _operand_range(self.digits)
        return (hi - lo + 1) ** 2

    def problem(self, rng: random.Random) -> tuple[str, str, dict[str, Any]]:
        lo, hi = _operand_range(self.digits)
        a, b = rng.randint(lo, hi), rng.randint(lo, hi)
        result = str(a + b)
        if self.format == "direct":
            answer = result
        elif self.format == "reversed":
            answer = result[::-1]
        else:
            answer = _addition_scratchpad(a, b, self.digits) + ";" + result
        return f"{a}+{b}=", answer, {"digits": self.digits, "result": result}


def _addition_scratchpad(a: int, b: int, digits: int) -> str:
    da, db = str(a).zfill(digits)[::-1], str(b).zfill(digits)[::-1]
    carry, steps = 0, []
    for x, y in zip(da, db):
        s = int(x) + int(y) + carry
        steps.append(f"{x}+{y}+{carry}={s}")
        carry = s // 10
    return ",".join(steps)


@register_task
class MultiplicationTask(_Generated):
    name = "multiplication"
    description = "a*b= with both operands of `digits` digits"
    params = {
        "digits": _digits_param(10),
        "format": Param(str, "direct", "answer format", choices=("direct", "reversed", "scratchpad")),
        "split": _SPLIT,
        "seed": _SEED,
    }
    difficulty_param = "digits"

    def space_size(self) -> int:
        lo, hi = _operand_range(self.digits)
        return (hi - lo + 1) ** 2

    def problem(self, rng: random.Random) -> tuple[str, str, dict[str, Any]]:
        lo, hi = _operand_range(self.digits)
        a, b = rng.randint(lo, hi), rng.randint(lo, hi)
        result = str(a * b)
        if self.format == "direct":
            answer = result
        elif self.format == "reversed":
            answer = result[::-1]
        else:
            partials = [
                f"{a}*{int(d) * 10**i}={a * int(d) * 10**i}" for i, d in enumerate(str(b)[::-1])
            ]
            answer = ",".join(partials) + ";" + result
        return f"{a}*{b}=", answer, {"digits": self.digits, "result": result}


@register_task
class MultistepTask(_Generated):
    name = "multistep"
    description = "a chain of `steps` additions/subtractions, evaluated left to right"
    params = {
        "steps": Param(int, 3, "number of operations in the chain (the difficulty)", min=1, max=30),
        "digits": Param(int, 1, "digits of each operand", min=1, max=6),
        "format": Param(str, "direct", "answer format", choices=("direct", "scratchpad")),
        "split": _SPLIT,
        "seed": _SEED,
    }
    difficulty_param = "steps"

    def validate(self) -> None:
        if self.space_size() < 1:
            raise TaskError("multistep: no problems with these parameters")

    def space_size(self) -> int:
        lo, hi = _operand_range(self.digits)
        return min((hi - lo + 1) ** (self.steps + 1) * 2**self.steps, 10**12)

    def problem(self, rng: random.Random) -> tuple[str, str, dict[str, Any]]:
        lo, hi = _operand_range(self.digits)
        total = rng.randint(lo, hi)
        text, running = str(total), []
        for _ in range(self.steps):
            op, x = rng.choice("+-"), rng.randint(lo, hi)
            total = total + x if op == "+" else total - x
            text += f"{op}{x}"
            running.append(str(total))
        result = str(total)
        answer = result if self.format == "direct" else ",".join(running) + ";" + result
        return text + "=", answer, {"steps": self.steps, "result": result}
