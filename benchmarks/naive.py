"""The naive baselines: one full forward per variant, as the reference research scripts do.

Skip effects and erasure reuse the test suite's slow references (``tests/reference.py``).
Integrated gradients use the reference script's scheme (see ``tests/reference.py``) with the
weights requiring grad, as a freshly loaded model has them (``weight_grads=False`` freezes them).
"""

from __future__ import annotations

import torch

from tests import reference


def naive_future_effects(model, batch, cuts):
    L = model.cfg.n_layers
    layer, out = torch.zeros(L, L), torch.zeros(L)
    for b in range(batch.size):
        if not cuts[b]:
            continue
        n = int(batch.lengths[b])
        le, oe = reference.future_effects(model, batch.tokens[b : b + 1, :n], n, cuts[b])
        layer, out = torch.maximum(layer, le), torch.maximum(out, oe)
    return layer, out


def naive_erasure(model, batch, mu):
    maps = []
    for b in range(batch.size):
        n = int(batch.lengths[b])
        maps.append(reference.erasure_map(model, batch.tokens[b : b + 1, :n], mu, int(batch.answer_start[b])))
    return maps


def naive_integrated_gradients(model, batch, n_steps, block=16, weight_grads=True):
    n = int(batch.lengths[0])
    return reference.integrated_gradients(model, batch.tokens[:1, :n], int(batch.answer_start[0]),
                                          n_steps=n_steps, block=block, weight_grads=weight_grads)
