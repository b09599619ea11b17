"""Tokens at the paper's shape: a byte-level BPE tokenizer (Qwen2 pre-tokenizer) with and without
a BOS, the prompt/answer boundary rule, and lossy tokenization as an error (issue 10 item 2).

The checkpoints are tiny Qwen2 models: the tokenizer kind matters here, not the widths.
"""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks.paper_shapes import (
    QWEN_SPECIALS,
    R1_SPECIALS,
    corpus,
    hf_config,
    save_tokenizer,
    train_bpe,
)
from effective_depth import load_model
from effective_depth.engine import encode_batch
from effective_depth.engine.batch import measured_mask
from effective_depth.errors import TaskError
from effective_depth.models.evaluate import encode_example, exact_match
from effective_depth.tasks import Example

TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=512)
PROMPT = "Question: Natalia sold 48 clips to her friends in April.\nAnswer: "
ANSWER = "Natalia sold 48/2 = 24 clips in May.\nThe final answer is 72"


@pytest.fixture(scope="module")
def bpe():
    return train_bpe(list(corpus(60)), vocab_size=1000, pad_to=None)


@pytest.fixture(scope="module")
def bpe_bos():
    bos = R1_SPECIALS[3]
    return train_bpe(list(corpus(60)), vocab_size=1000, pad_to=None, specials=R1_SPECIALS, bos=bos,
                     eos=R1_SPECIALS[0])


def _tiny_qwen(path, tokenizer, shape="qwen2.5-0.5b", qwen_class=False, seed=0):
    """A tiny Qwen2 checkpoint; the embedding has 37 rows more than the tokenizer's ids."""
    from transformers import Qwen2ForCausalLM

    cfg = hf_config(shape, vocab_size=len(tokenizer) + 37, bos_token_id=tokenizer.bos_token_id,
                    eos_token_id=tokenizer.eos_token_id, **TINY)
    torch.manual_seed(seed)
    Qwen2ForCausalLM(cfg).eval().save_pretrained(path)
    save_tokenizer(tokenizer, path, qwen_class=qwen_class)
    return path


def _boundary_by_offsets(tokenizer, prompt, answer):
    """Independent answer start: the first token whose character span ends after the prompt."""
    enc = tokenizer(prompt + answer, add_special_tokens=False, return_offsets_mapping=True)
    return next(i for i, (_, end) in enumerate(enc["offset_mapping"]) if end > len(prompt))


@pytest.mark.parametrize("prompt,answer,merges", [
    (PROMPT, ANSWER, True),                       # ": " + "Natalia": the space joins the answer
    ("The final answer is", " 72", False),       # no merge; " 72" is three tokens
    ("Question: Nata", "lia sold 48 clips.", True),  # " Natalia" straddles the boundary
])
def test_answer_tokens_follow_the_stated_rule(bpe, prompt, answer, merges):
    ids, n_prompt = encode_example(bpe, Example(prompt, answer), prepend_bos=True)
    # the model reads exactly the tokenizer's own ids of the whole text (no BOS: Qwen-style)
    assert ids == bpe(prompt + answer)["input_ids"]
    assert bpe.bos_token_id is None
    prompt_ids = bpe(prompt, add_special_tokens=False)["input_ids"]
    assert (ids[: len(prompt_ids)] != prompt_ids) == merges
    assert n_prompt == _boundary_by_offsets(bpe, prompt, answer)
    assert prompt.startswith(bpe.decode(ids[:n_prompt]))
    assert bpe.decode(ids[n_prompt:]).endswith(answer)
    assert len(ids) - n_prompt >= 2  # several answer tokens
    batch = encode_batch(bpe, [Example(prompt, answer)])
    assert batch.token_ids(0) == ids and int(batch.answer_start[0]) == n_prompt
    assert batch.answer_predicting_positions(0) == list(range(n_prompt - 1, len(ids) - 1))


def test_multi_digit_answer_is_one_token_per_digit(bpe):
    ids, n_prompt = encode_example(bpe, Example("The final answer is", " 721"))
    assert [bpe.decode([i]) for i in ids[n_prompt:]] == [" ", "7", "2", "1"]


@pytest.mark.slow
def test_qwen_without_bos_reads_exactly_the_hf_tokens(bpe, tmp_path):
    """The issue's reproduction: byte-level BPE PreTrainedTokenizerFast with an EOS and no
    BOS/UNK. Before: every prompt failed ("contains tokens unknown") because TransformerLens
    substituted <|endoftext|> for the BOS and Qwen2Tokenizer's unk is <|endoftext|>."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert bpe.bos_token is None and bpe.unk_token is None and bpe.eos_token == QWEN_SPECIALS[0]
    path = _tiny_qwen(tmp_path / "qwen-nobos", bpe)
    model = load_model(path, device="cpu")
    assert model.tokenizer.bos_token is None
    examples = [Example(PROMPT, ANSWER), Example("Question: Nata", "lia sold 48 clips.")]
    batch = encode_batch(model.tokenizer, examples)
    hf_tok = AutoTokenizer.from_pretrained(path)  # what a user of the HF model gets
    eos = hf_tok.eos_token_id
    for b, ex in enumerate(examples):
        ids = batch.token_ids(b)
        assert ids == hf_tok(ex.prompt + ex.answer)["input_ids"]
        assert ids[0] != eos and eos not in ids
    # position 0 is the first prompt token; skip_front=1 leaves it out, nothing else
    assert batch.str_tokens[0][0] == "Question"
    mask = measured_mask(batch.lengths, batch.width, skip_front=1, include_front=False)
    assert mask[0].nonzero().squeeze(-1).tolist() == list(range(1, batch.token_ids(0).__len__()))
    # and the loaded model computes the HF model's logits on those tokens
    hf = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()
    tokens = torch.tensor([batch.token_ids(0)])
    with torch.no_grad():
        ref = hf(tokens).logits.log_softmax(-1)
        got = model(tokens).log_softmax(-1)
    assert got.shape[-1] == len(bpe) + 37
    assert (got - ref).abs().max().item() < 1e-4
    # TransformerLens's own to_tokens agrees (no substituted BOS)
    assert model.to_tokens(PROMPT + ANSWER)[0].tolist() == batch.token_ids(0)


def test_qwen2_tokenizer_class_as_the_real_checkpoint_saves_it(bpe, tmp_path):
    """tokenizer_config.json as Qwen2.5's (class Qwen2Tokenizer, bos/unk null)."""
    path = _tiny_qwen(tmp_path / "qwen-class", bpe, qwen_class=True)
    assert json.loads((path / "tokenizer_config.json").read_text())["tokenizer_class"] == "Qwen2Tokenizer"
    model = load_model(path, device="cpu")
    batch = encode_batch(model.tokenizer, [Example(PROMPT, ANSWER)])
    assert batch.token_ids(0) == bpe(PROMPT + ANSWER)["input_ids"]
    assert exact_match(model, [Example(PROMPT, ANSWER)]) == [False]  # runs; random weights


def test_tokenizer_with_bos_keeps_it_at_position_0(bpe_bos, tmp_path):
    """R1-Distill / Llama style: the tokenizer prepends its BOS; so does the toolkit, once."""
    from transformers import AutoTokenizer

    bos = bpe_bos.bos_token_id
    assert bos is not None and bpe_bos("x")["input_ids"][0] == bos
    path = _tiny_qwen(tmp_path / "r1-bos", bpe_bos, shape="r1-distill-qwen-1.5b")
    model = load_model(path, device="cpu")
    batch = encode_batch(model.tokenizer, [Example(PROMPT, ANSWER)])
    ids = batch.token_ids(0)
    assert ids == AutoTokenizer.from_pretrained(path)(PROMPT + ANSWER)["input_ids"]
    assert ids[0] == bos and ids.count(bos) == 1
    n = _boundary_by_offsets(bpe_bos, PROMPT, ANSWER)
    assert int(batch.answer_start[0]) == n + 1
    mask = measured_mask(batch.lengths, batch.width, skip_front=1, include_front=False)
    assert not mask[0, 0] and mask[0, 1]  # skip_front skips the BOS, nothing more


def test_lossy_tokenization_is_an_error_naming_the_characters():
    """Issue 10 item 2: the zoo tokenizer drops what it cannot represent."""
    model = load_model("zoo/add-4l", device="cpu")
    ex = Example("hello world 12+34=", "46")
    with pytest.raises(TaskError, match=r"character 'h' at position 0 of 'hello world 12\+34=46'.*"
                                        r"lost characters: 'dehlorw'.*allow-lossy-tokenization"):
        encode_batch(model.tokenizer, [ex])
    batch = encode_batch(model.tokenizer, [ex], allow_lossy=True)
    assert batch.warnings and "'hello world 12+34=46'" in batch.warnings[0]["message"]
    assert batch.warnings[0]["code"] == "lossy_tokenization"
    assert encode_batch(model.tokenizer, [Example("12+34=", "46")]).warnings == []


@pytest.mark.slow
def test_lossy_tokenization_in_a_study_and_the_cli(tmp_path):
    from click.testing import CliRunner

    from effective_depth.cli import main

    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "hello 12+34=", "answer": "46"}) + "\n"
                       + json.dumps({"prompt": "1+2=", "answer": "3"}) + "\n")
    args = ["run", "--model", "zoo/add-4l", "--task", "prompts", "--param", f"path={prompts}",
            "--metrics", "contributions", "--n-boot", "0", "--quiet", "--no-dashboard",
            "--skip-mode", "current"]
    bad = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "a")])
    assert bad.exit_code != 0 and "character 'h' at position 0" in bad.output
    assert "Traceback" not in bad.output
    ok = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "b"), "--allow-lossy-tokenization"])
    assert ok.exit_code == 0, ok.output
    results = json.loads((tmp_path / "b" / "results.json").read_text())
    assert any(w["code"] == "lossy_tokenization" and "hello 12+34=46" in w["message"]
               for w in results["warnings"])
    config = json.loads((tmp_path / "b" / "config.json").read_text())["config"]
    assert config["allow_lossy_tokenization"] is True
