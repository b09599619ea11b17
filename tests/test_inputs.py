"""Inputs as researchers have them (issue 19): chat templates, the BOS by the tokenizer's own
rule, the exact lossy-text check, and what a run records about its tokens.

Every tokenizer is built here, offline: Qwen2-style byte-level BPE (``benchmarks.paper_shapes``)
with Qwen2.5- and R1-style chat templates written as Jinja strings, character-level WordLevel
tokenizers with and without a decoder or a normaliser. The real SmolLM2 and Gemma-3 tokenizers
come from the real/ cache that ``effective-depth fetch`` writes (marker ``real``: they skip when
the models cannot be fetched, and fail instead under ``CI=true``).
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
import torch

from benchmarks.paper_shapes import R1_SPECIALS, corpus, hf_config, train_bpe
from effective_depth.engine import encode_batch
from effective_depth.engine.batch import bos_read
from effective_depth.errors import ConfigError, TaskError
from effective_depth.models.chat import ChatFormat, chat_format
from effective_depth.models.evaluate import encode_example
from effective_depth.models.token_text import check_tokenization
from effective_depth.tasks import Example
from tests.helpers import real_checkpoint

#: Qwen2.5-Instruct's template, shortened (no tools): a default system turn when none is given
QWEN_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a "
    "helpful assistant.<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}{%- if message['role'] != 'system' %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
#: DeepSeek-R1-Distill's template, shortened: it writes the BOS itself
R1_TEMPLATE = (
    "{% set ns = namespace(system_prompt='') %}"
    "{%- for message in messages %}{%- if message['role'] == 'system' %}"
    "{% set ns.system_prompt = message['content'] %}{%- endif %}{%- endfor %}"
    "{{ bos_token }}{{ ns.system_prompt }}"
    "{%- for message in messages %}{%- if message['role'] == 'user' %}"
    "{{ '<｜User｜>' + message['content'] }}{%- endif %}{%- endfor %}"
    "{% if add_generation_prompt %}{{ '<｜Assistant｜><think>\\n' }}{% endif %}"
)
BOS_R1 = R1_SPECIALS[3]
PROMPT = "Question: Natalia sold 48 clips to her friends in April.\nAnswer: "
ANSWER = "Natalia sold 48/2 = 24 clips in May.\nThe final answer is 72"
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=512)


@pytest.fixture(scope="module")
def qwen():
    tok = train_bpe(list(corpus(40)), vocab_size=800, pad_to=None)
    tok.chat_template = QWEN_TEMPLATE
    return tok


@pytest.fixture(scope="module")
def r1():
    tok = train_bpe(list(corpus(40)), vocab_size=800, pad_to=None, specials=R1_SPECIALS,
                    bos=BOS_R1, eos=R1_SPECIALS[0])
    tok.chat_template = R1_TEMPLATE
    return tok


def _char_tokenizer(alphabet: str, *, decoder: bool, normalizer=None, bos: bool = False):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<bos>": 1}
    for ch in alphabet:
        vocab[ch] = len(vocab)
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    if decoder:
        backend.decoder = decoders.Fuse()
    if normalizer is not None:
        backend.normalizer = normalizer
    if bos:
        backend.post_processor = processors.TemplateProcessing(
            single="<bos> $A", special_tokens=[("<bos>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>",
                                   bos_token="<bos>", clean_up_tokenization_spaces=False)


def _chat_ids(tok, prompt, system=None):
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": prompt}]
    out = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


# ------------------------------------------------------------------------------ chat templates
@pytest.mark.slow
@pytest.mark.parametrize("which", ["qwen", "r1"])
@pytest.mark.parametrize("system", [None, "Solve the problem step by step."])
def test_chat_template_reads_apply_chat_template_then_the_answer(which, system, request):
    tok = request.getfixturevalue(which)
    chat = ChatFormat(None, system)
    batch = encode_batch(tok, [Example(PROMPT, ANSWER), Example("2+3=", "5")], chat=chat)
    for b, ex in enumerate(batch.examples):
        prompt_ids = _chat_ids(tok, ex.prompt, system)
        answer_ids = tok(ex.answer, add_special_tokens=False)["input_ids"]
        assert batch.token_ids(b) == prompt_ids + answer_ids
        assert int(batch.answer_start[b]) == len(prompt_ids)
    ids = batch.token_ids(0)
    if which == "r1":  # the template writes the BOS; nothing is added on top: read once
        assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
        assert bos_read(tok, batch)
        start = int(batch.answer_start[0])
        assert tok.convert_ids_to_tokens(ids[start - 3: start - 1]) == ["<｜Assistant｜>",
                                                                       "<think>"]
    else:  # Qwen: no BOS at all; the system turn comes first
        assert tok.convert_ids_to_tokens(ids[:1]) == ["<|im_start|>"]
        assert not bos_read(tok, batch)
    text = tok.decode(ids[: int(batch.answer_start[0])])
    if system is not None:
        assert system in text
    elif which == "qwen":
        assert "You are Qwen" in text  # the template's own default system turn
    assert batch.warnings == []


@pytest.mark.slow
def test_chat_template_from_a_file_and_the_study_options(tmp_path, qwen):
    path = tmp_path / "t.jinja"
    path.write_text(R1_TEMPLATE.replace("<think>\\n", ""))
    chat = chat_format(str(path), None)
    assert chat is not None and chat.template == path.read_text()
    assert chat_format(True, "sys") == ChatFormat(None, "sys")
    assert chat_format(False, None) is None
    with pytest.raises(ConfigError, match="system_prompt needs chat_template"):
        chat_format(False, "sys")
    with pytest.raises(ConfigError, match="neither a file nor a Jinja template"):
        chat_format("no/such/template.jinja", None)
    from effective_depth.study import StudyConfig

    with pytest.raises(ConfigError, match="neither a file nor a Jinja template"):
        StudyConfig(chat_template="missing.jinja")
    assert StudyConfig(chat_template=str(path)).to_dict()["chat_template"] == str(path)


def test_a_tokenizer_without_a_chat_template_is_a_clear_error(r1):
    from transformers import PreTrainedTokenizerFast

    plain = PreTrainedTokenizerFast(tokenizer_object=r1.backend_tokenizer, bos_token=BOS_R1)
    with pytest.raises(TaskError, match="has no chat template; pass one as a Jinja file"):
        encode_batch(plain, [Example("1+1=", "2")], chat=ChatFormat())


# ------------------------------------------------------------------------------ double BOS
def test_a_prompt_that_begins_with_the_bos_is_a_double_bos_warning(r1):
    """Before: [bos, bos, ...] silently (the R1 template rendered into the prompt text)."""
    rendered = r1.apply_chat_template([{"role": "user", "content": "2+3="}],
                                      add_generation_prompt=True, tokenize=False)
    assert rendered.startswith(BOS_R1)
    batch = encode_batch(r1, [Example(rendered, "5"), Example("2+3=", "5")])
    assert batch.token_ids(0)[:2] == [r1.bos_token_id] * 2
    assert batch.token_ids(1).count(r1.bos_token_id) == 1
    assert [w["code"] for w in batch.warnings] == ["double_bos"]
    assert batch.warnings[0]["message"] == (
        f"1 of 2 examples (first: example 0) are read with the BOS token {BOS_R1!r} twice: "
        "their prompt text begins with it and the tokenizer adds it too; remove it from the "
        "prompts, or use --chat-template (the template writes it once)")
    # with the template the same conversation reads the BOS once
    chat = encode_batch(r1, [Example("2+3=", "5")], chat=ChatFormat())
    assert chat.token_ids(0) == batch.token_ids(0)[1:]
    assert chat.warnings == []


# ------------------------------------------------------------------------------ BOS rule
def test_a_tokenizer_that_names_a_bos_but_does_not_add_it_gets_none(qwen):
    """Before: the toolkit prepended bos_token (87 ids against Hugging Face's 86)."""
    from transformers import PreTrainedTokenizerFast

    named = PreTrainedTokenizerFast(tokenizer_object=qwen.backend_tokenizer,
                                    bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    assert named.bos_token_id is not None
    ids, n_prompt = encode_example(named, Example(PROMPT, ANSWER))
    assert ids == named(PROMPT + ANSWER)["input_ids"]
    assert named.bos_token_id not in ids
    batch = encode_batch(named, [Example(PROMPT, ANSWER)])
    assert batch.token_ids(0) == ids and not bos_read(named, batch)


def test_a_tokenizer_that_adds_its_bos_gets_it_once(r1):
    ids, n_prompt = encode_example(r1, Example(PROMPT, ANSWER))
    assert ids == r1(PROMPT + ANSWER)["input_ids"]
    assert ids[0] == r1.bos_token_id and ids.count(r1.bos_token_id) == 1
    spans = r1(PROMPT + ANSWER, add_special_tokens=False, return_offsets_mapping=True)
    first_answer = next(i for i, (_, end) in enumerate(spans["offset_mapping"]) if end > len(PROMPT))
    assert n_prompt == first_answer + 1  # the BOS, then the prompt's own tokens
    # prepend_bos=False: no special token at all
    bare, n_bare = encode_example(r1, Example(PROMPT, ANSWER), prepend_bos=False)
    assert bare == ids[1:] and n_bare == n_prompt - 1


def test_add_bos_token_style_tokenizers_follow_their_own_setting():
    """A post-processor decides: the same vocabulary with and without a BOS template."""
    with_bos = _char_tokenizer("0123456789+=", decoder=True, bos=True)
    without = _char_tokenizer("0123456789+=", decoder=True, bos=False)
    ex = Example("12+3=", "15")
    assert encode_example(with_bos, ex) == ([1, *with_bos(ex.text, add_special_tokens=False)
                                              ["input_ids"]], 6)
    assert encode_example(without, ex) == (without(ex.text)["input_ids"], 5)


@pytest.mark.slow
def test_zoo_tokenizer_adds_its_bos_and_the_zoo_model_is_unchanged():
    from effective_depth import load_model

    model = load_model("zoo/add-4l", device="cpu")
    tok = model.tokenizer
    ids = tok("123+456=579")["input_ids"]
    assert ids[0] == tok.bos_token_id == 1 and ids.count(1) == 1
    batch = encode_batch(tok, [Example("123+456=", "579")])
    assert batch.token_ids(0) == ids and bos_read(tok, batch)
    from effective_depth.models.evaluate import exact_match

    assert exact_match(model, [Example("123+456=", "579"), Example("250+250=", "500")]) == [True,
                                                                                          True]


@pytest.mark.real
def test_smollm2_tokenizer_reads_no_bos_and_its_own_chat_template():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(real_checkpoint("real/smollm2-135m-instruct"))
    assert tok.bos_token == "<|im_start|>"  # named, never added by the tokenizer
    batch = encode_batch(tok, [Example(PROMPT, ANSWER)])
    assert batch.token_ids(0) == tok(PROMPT + ANSWER)["input_ids"]
    assert batch.token_ids(0)[0] != tok.bos_token_id
    chat = encode_batch(tok, [Example("2+2=", "4")], chat=ChatFormat(None, "Be brief."))
    assert chat.token_ids(0) == _chat_ids(tok, "2+2=", "Be brief.") + tok(
        "4", add_special_tokens=False)["input_ids"]


@pytest.mark.slow
@pytest.mark.real
def test_gemma_tokenizer_adds_bos_once():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(real_checkpoint("real/gemma-3-270m"))
    batch = encode_batch(tok, [Example(PROMPT, ANSWER)])
    assert batch.token_ids(0) == tok(PROMPT + ANSWER)["input_ids"]
    assert batch.token_ids(0)[:2] == [2, tok(PROMPT, add_special_tokens=False)["input_ids"][0]]
    assert check_tokenization(tok, "e\u0301 中文 😀  x\n\t").kind == "exact"


# ------------------------------------------------------------------------------ lossy check
def test_a_char_tokenizer_without_a_decoder_is_not_lossy():
    """Before: "tokenizing '655+815=1470' adds text: the model would read '6 5 5 + 8 1 5 = ...'"."""
    tok = _char_tokenizer("0123456789+=", decoder=False)
    assert tok.decode(tok("655+815=1470")["input_ids"]) == "6 5 5 + 8 1 5 = 1 4 7 0"
    batch = encode_batch(tok, [Example("655+815=", "1470")])
    assert batch.warnings == []
    assert batch.str_tokens[0] == list("655+815=1470")
    assert int(batch.answer_start[0]) == 8


def test_unicode_normalisation_by_the_tokenizer_is_a_note_with_code_points():
    """Before: "character 'é' ... is unknown to the model's tokenizer or changed by it ...
    lost characters: 'é'" for a decomposed accent that the tokenizer's NFC step composes."""
    from tokenizers import normalizers

    tok = _char_tokenizer("0123456789+=é", decoder=True, normalizer=normalizers.NFC())
    check = check_tokenization(tok, "e\u0301=1")
    assert check.kind == "normalised"
    assert check.message == (
        "the tokenizer's normaliser rewrites 'e\u0301=1' to Unicode NFC: 'e\u0301' [U+0065 "
        "U+0301] is read as '\u00e9' [U+00E9]; the model reads the normalised text")
    batch = encode_batch(tok, [Example("e\u0301=", "1"), Example("e\u0301+1=", "2")])
    assert [w["code"] for w in batch.warnings] == ["unicode_normalised"]
    assert batch.warnings[0]["message"].endswith("(and in 1 more examples)")
    # a character the vocabulary lacks is still lost, named by the tokenizer's offsets
    with pytest.raises(TaskError, match=re.escape("character 'x' at position 2 of 'e\u0301x=1' is unknown")):
        encode_batch(tok, [Example("e\u0301x=", "1")])


def test_lost_characters_that_print_alike_show_code_points():
    tok = _char_tokenizer("0123456789+= ", decoder=True)
    with pytest.raises(TaskError, match=r"character '\\xa0' \[U\+00A0\] at position 1"):
        encode_batch(tok, [Example("1\u00a0+1=", "2")])


def test_byte_level_bpe_is_exact_on_fuzzed_text(qwen, r1):
    """Byte-level BPE with an NFC normaliser, on random text from many scripts."""
    rng = random.Random(0)
    alphabet = ("abcxyz 0123456789+-=*/()\n\t.,:;'\"" "éüßøñçΩπ中文字😀🎉ا\u2028\u00a0<>|")
    for _ in range(200):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40)))
        for tok in (qwen, r1):
            check = check_tokenization(tok, text)
            assert check.kind == "exact", (text, check.message)
            assert check.read == text
    assert check_tokenization(qwen, "<|im_start|>user\n1<|im_end|>").kind == "exact"
    assert check_tokenization(r1, BOS_R1 + "<｜User｜>1").kind == "exact"


# ------------------------------------------------------------------------------ in a study
def _tiny_qwen_dir(path, tokenizer):
    from transformers import Qwen2ForCausalLM

    cfg = hf_config("qwen2.5-0.5b", vocab_size=len(tokenizer) + 5,
                    bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                    **TINY)
    torch.manual_seed(0)
    Qwen2ForCausalLM(cfg).eval().save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def r1_dir(tmp_path_factory, r1):
    return _tiny_qwen_dir(tmp_path_factory.mktemp("r1") / "r1-tiny", r1)


def _run(args):
    from click.testing import CliRunner

    from effective_depth.cli import main

    result = CliRunner().invoke(main, ["run", "--metrics", "contributions", "--n-boot", "0",
                                       "--quiet", "--no-dashboard", *args])
    assert result.exit_code == 0, result.output
    return result


@pytest.mark.slow
def test_a_chat_template_study_records_its_tokens(tmp_path, r1_dir, r1):
    from transformers import AutoTokenizer

    prompts = tmp_path / "p.jsonl"
    rows = [{"prompt": "Natalia sold 48 clips. How many?", "answer": " 48"},
            {"prompt": "2+3=", "answer": "5"}]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    _run(["--model", str(r1_dir), "--task", "prompts", "--param", f"path={prompts}",
          "--chat-template", "--system-prompt", "Be brief.", "--out", str(out)])
    hf = AutoTokenizer.from_pretrained(r1_dir)
    inputs = json.loads((out / "inputs.json").read_text())["examples"]
    for row, ex in zip(rows, inputs):
        prompt_ids = _chat_ids(hf, row["prompt"], "Be brief.")
        assert ex["tokens"] == prompt_ids + hf(row["answer"], add_special_tokens=False)["input_ids"]
        assert ex["answer_start"] == len(prompt_ids)
        assert ex["tokens"].count(hf.bos_token_id) == 1
    config = json.loads((out / "config.json").read_text())
    assert config["config"]["chat_template"] is True
    assert config["config"]["system_prompt"] == "Be brief."
    assert config["tokens"] == {"bos_token": BOS_R1, "bos_read": True, "chat_template": True}


def test_a_plain_study_records_answer_start_and_warns_of_a_double_bos(tmp_path, r1_dir, r1):
    prompts = tmp_path / "p.jsonl"
    rows = [{"prompt": BOS_R1 + "<｜User｜>2+3=<｜Assistant｜>", "answer": "5"},
            {"prompt": "Question: Nata", "answer": "lia sold 48 clips."}]
    prompts.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    out = tmp_path / "run"
    result = _run(["--model", str(r1_dir), "--task", "prompts", "--param", f"path={prompts}",
                   "--out", str(out)])
    warnings = json.loads((out / "results.json").read_text())["warnings"]
    double = [w for w in warnings if w["code"] == "double_bos"]
    assert len(double) == 1 and "read with the BOS token" in double[0]["message"]
    assert "read with the BOS token" in result.output.replace("\n", " ")
    inputs = json.loads((out / "inputs.json").read_text())["examples"]
    merged = r1("Question: Nata" + "lia sold 48 clips.", return_offsets_mapping=True)
    first_answer = next(i for i, (s, e) in enumerate(merged["offset_mapping"])
                        if e > len("Question: Nata") and i > 0)
    assert inputs[1]["answer_start"] == first_answer  # " Natalia" straddles: an answer token
    assert inputs[1]["tokens"] == merged["input_ids"]
    config = json.loads((out / "config.json").read_text())
    assert config["tokens"]["bos_read"] is True and config["tokens"]["chat_template"] is False


@pytest.mark.slow
def test_a_study_stores_and_prints_the_rows_it_skipped(tmp_path, r1_dir, monkeypatch):
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    rows = [{"question": "What is 2+3?", "answer": "2+3 = 5\n#### 5"},
            {"question": "No final line?", "answer": "Just reasoning."},
            {"question": "What is 4+4?", "answer": "4+4 = 8\n#### 8"}]
    data = tmp_path / "gsm8k.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    result = _run(["--model", str(r1_dir), "--task", "gsm8k", "--param", f"data_files={data}",
                   "-n", "2", "--out", str(out)])
    message = "1 of 3 GSM8K rows have no '#### answer': skipped"
    warnings = json.loads((out / "results.json").read_text())["warnings"]
    assert {"code": "rows_skipped", "message": message} in warnings
    assert f"warning: {message}" in result.output


@pytest.mark.parametrize("backend", ["hooked", "bridge"])
def test_the_loaded_model_reads_its_checkpoints_tokenizer(tmp_path, qwen, backend):
    """A tokenizer that names a BOS it never adds (GPT-2, SmolLM2): TransformerLens rebuilds it
    with add_bos_token=True; the loaded model keeps the checkpoint's own."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from effective_depth import load_model

    named = PreTrainedTokenizerFast(tokenizer_object=qwen.backend_tokenizer,
                                    bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    path = _tiny_qwen_dir(tmp_path / "named-bos", named)
    hf = AutoTokenizer.from_pretrained(path)
    model = load_model(path, device="cpu", backend=backend)
    batch = encode_batch(model.tokenizer, [Example(PROMPT, ANSWER)])
    assert batch.token_ids(0) == hf(PROMPT + ANSWER)["input_ids"]
    assert hf.bos_token_id not in batch.token_ids(0)
    assert model.to_tokens(PROMPT + ANSWER)[0].tolist() == batch.token_ids(0)


def test_sweep_chat_template_overrides_the_grid_base(tmp_path):
    from effective_depth.study.grid import load_grid

    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps({"out": str(tmp_path / "g"), "base": {"n_examples": 2},
                                "models": ["zoo/add-2l", "zoo/add-4l"]}))
    plain = load_grid(grid)
    assert {c.config.chat_template for c in plain.cells} == {False}
    chat = load_grid(grid, base={"chat_template": True, "system_prompt": "Be brief."})
    assert [(c.config.chat_template, c.config.system_prompt, c.config.n_examples)
            for c in chat.cells] == [(True, "Be brief.", 2)] * 2


@pytest.mark.slow
def test_plan_and_run_take_chat_template_and_name_a_missing_template(tmp_path):
    from click.testing import CliRunner

    from effective_depth.cli import main

    for command in ("plan", "run"):
        args = [command, "--model", "zoo/add-2l", "-n", "2", "--chat-template"]
        result = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "r")] if command == "run"
                                    else args)
        assert result.exit_code != 0
        assert "has no chat template; pass one as a Jinja file" in result.output
        assert "Traceback" not in result.output


def test_every_bundled_zoo_tokenizer_adds_the_bos_its_model_was_trained_with():
    from tokenizers import Tokenizer

    from effective_depth.models.tokenizer import build_char_tokenizer

    zoo = Path(__file__).resolve().parents[1] / "effective_depth" / "zoo"
    built = build_char_tokenizer()
    files = sorted(zoo.glob("*/tokenizer.json"))
    assert len(files) >= 10
    for path in files:
        tok = Tokenizer.from_file(str(path))
        assert tok.encode("12+34=46").ids == built("12+34=46")["input_ids"], path
        assert tok.encode("12+34=46").ids[0] == tok.token_to_id("<bos>") == 1, path
