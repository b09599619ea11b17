"""Token axes of the maps: thinned to at most MAX_TOKEN_TICKS labels, evenly spaced, the last
position always labelled, rotated unless few and short (the browser test checks the drawn page)."""

from __future__ import annotations

import pytest

from effective_depth.viz.figures import MAX_TOKEN_TICKS, token_ticks


@pytest.mark.parametrize("n", [1, 5, 24, 25, 44, 200, 1000])
def test_token_ticks_are_thinned_and_end_at_the_last_token(n):
    tokens = [f" t{i}" for i in range(n)]
    ticks = token_ticks(tokens)
    vals = ticks["tickvals"]
    assert len(vals) <= MAX_TOKEN_TICKS and vals[0] == 0 and vals[-1] == n - 1
    step = max(1, -(-n // MAX_TOKEN_TICKS))
    assert all(b - a >= step for a, b in zip(vals, vals[1:]))
    assert ticks["ticktext"] == [tokens[i] for i in vals]
    if n == 44:
        assert len(vals) == 22 and ticks["tickangle"] == -90


def test_few_short_tokens_stay_upright():
    assert token_ticks(["1", "+", "2", "="])["tickangle"] == 0
    assert token_ticks([" international", "ization"])["tickangle"] == -90
