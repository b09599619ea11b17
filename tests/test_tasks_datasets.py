"""Data-set tasks and the prompts-file task, read from small local files in each data set's schema.

Everything runs offline: the fixture below switches the Hub client to offline mode and points the
``datasets`` cache at a temporary folder, so no test can hang on the network or touch ~/.cache.
"""

from __future__ import annotations

import json
import random

import pytest

from effective_depth.errors import TaskError
from effective_depth.tasks import get_task, list_tasks, task_info
from effective_depth.tasks.datasets import last_boxed, parse_gsm8k_answer


@pytest.fixture(autouse=True)
def offline_hub(monkeypatch, tmp_path):
    datasets = pytest.importorskip("datasets")
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    # datasets and huggingface_hub read these variables once, at import: patch the copies too.
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def by_source(examples):
    return {ex.meta["source_id"]: ex for ex in examples}


# ---------------------------------------------------------------------------------------------
# GSM8K
# ---------------------------------------------------------------------------------------------

GSM8K_ROWS = [
    {
        "question": "Natalia sold clips to 48 of her friends in April, and then she sold half as "
        "many clips in May. How many clips did Natalia sell altogether in April and May?",
        "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
        "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72",
    },
    {
        "question": "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes "
        "of babysitting. How much did she earn?",
        "answer": "Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute.\n"
        "Working 50 minutes, she earned 0.2 x 50 = $<<0.2*50=10>>10.\n#### 10",
    },
    {"question": "No final line here?", "answer": "Just reasoning, no marker."},
    {"question": "What is 2+3?", "answer": "2+3 = <<2+3=5>>5\n#### 5"},
    {"question": "What is 1000*1?", "answer": "It is 1,000.\n#### 1,000"},
    {"question": "What is 7-7?", "answer": "7-7 = <<7-7=0>>0\n#### 0"},
]


@pytest.fixture
def gsm8k_file(tmp_path):
    return write_jsonl(tmp_path / "gsm8k_test.jsonl", GSM8K_ROWS)


def test_gsm8k_format_and_final_answer(gsm8k_file):
    examples = get_task("gsm8k", data_files=gsm8k_file).examples()
    assert len(examples) == 5  # the row without "#### X" is skipped
    ex = by_source(examples)[0]
    assert ex.prompt == (
        "Question: Natalia sold clips to 48 of her friends in April, and then she sold half as "
        "many clips in May. How many clips did Natalia sell altogether in April and May?\n"
        "Answer: "
    )
    assert ex.answer == (
        "Natalia sold 48/2 = 24 clips in May.\n"
        "Natalia sold 48+24 = 72 clips altogether in April and May.\n"
        "The final answer is 72"
    )
    assert ex.meta["final"] == "72"
    assert ex.meta["n_steps"] == 2
    assert ex.meta["difficulty"] is None
    assert ex.difficulty is None
    weng = by_source(examples)[1]
    assert "<<" not in weng.answer and "$0.2 per minute" in weng.answer
    assert weng.answer.endswith("$10.\nThe final answer is 10")
    assert by_source(examples)[4].meta["final"] == "1,000"


def test_parse_gsm8k_answer():
    assert parse_gsm8k_answer("a = <<1+1=2>>2\n#### 2") == ("a = 2", "2")
    assert parse_gsm8k_answer("#### 7") == ("", "7")
    assert parse_gsm8k_answer("no marker") is None


def test_seed_reproducible_and_private(gsm8k_file):
    # the order depends on the task's seed only, never on the global RNG's state
    random.seed(1234)
    first = [ex.prompt for ex in get_task("gsm8k", data_files=gsm8k_file, seed=0).examples()]
    random.seed(98765)
    again = [ex.prompt for ex in get_task("gsm8k", data_files=gsm8k_file, seed=0).examples()]
    assert first == again
    orders = {
        tuple(
            ex.meta["source_id"]
            for ex in get_task("gsm8k", data_files=gsm8k_file, seed=s).examples()
        )
        for s in range(5)
    }
    assert len(orders) > 1
    assert sorted(next(iter(orders))) == [0, 1, 3, 4, 5]


def test_n_takes_first_of_shuffled_order(gsm8k_file):
    task = get_task("gsm8k", data_files=gsm8k_file, seed=3)
    every = task.examples()
    assert task.examples(2) == every[:2]
    assert len(task.examples(100)) == 5


def test_glob_reads_every_matching_file(tmp_path):
    write_jsonl(tmp_path / "gsm8k_a.jsonl", GSM8K_ROWS[:2])
    write_jsonl(tmp_path / "gsm8k_b.jsonl", GSM8K_ROWS[3:])
    examples = get_task("gsm8k", data_files=str(tmp_path / "gsm8k_*.jsonl")).examples()
    assert sorted(ex.meta["final"] for ex in examples) == ["0", "1,000", "10", "5", "72"]


def test_missing_file_names_the_path(tmp_path):
    missing = str(tmp_path / "nope" / "gsm8k.jsonl")
    with pytest.raises(TaskError, match="nope/gsm8k.jsonl"):
        get_task("gsm8k", data_files=missing).examples(1)
    with pytest.raises(TaskError, match=r"gsm8k_\*\.parquet"):
        get_task("gsm8k", data_files=str(tmp_path / "gsm8k_*.parquet")).examples(1)


def test_unknown_extension(tmp_path):
    path = tmp_path / "gsm8k.csv"
    path.write_text("question,answer\nq,#### 1\n")
    with pytest.raises(TaskError, match=r"\.jsonl"):
        get_task("gsm8k", data_files=str(path)).examples(1)


def test_missing_column_lists_expected_and_found(tmp_path):
    path = write_jsonl(tmp_path / "wrong.jsonl", [{"q": "1+1?", "a": "#### 2"}])
    with pytest.raises(TaskError) as info:
        get_task("gsm8k", data_files=path).examples(1)
    msg = str(info.value)
    assert "question" in msg and "answer" in msg and "found q, a" in msg


def test_unreadable_json_is_a_task_error(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"question": "x", "answer": \n')
    with pytest.raises(TaskError, match="broken.jsonl"):
        get_task("gsm8k", data_files=str(path)).examples(1)


def test_hub_offline_points_to_data_files():
    with pytest.raises(TaskError) as info:
        get_task("gsm8k").examples(2)
    msg = str(info.value)
    assert "openai/gsm8k" in msg and "data_files" in msg


def test_unknown_parameter():
    with pytest.raises(TaskError, match="data_files"):
        get_task("gsm8k", data_file="x.jsonl")


# ---------------------------------------------------------------------------------------------
# HellaSwag
# ---------------------------------------------------------------------------------------------

HELLASWAG_ROWS = [
    {
        "ind": 24,
        "activity_label": "Roof shingle removal",
        "ctx_a": "A man is sitting on a roof.",
        "ctx_b": "he",
        "ctx": "A man is sitting on a roof. he",
        "endings": [
            "is using wrap to wrap a pair of skis.",
            "is ripping level tiles off.",
            "is holding a rubik's cube.",
            "starts pulling up roofing on a roof.",
        ],
        "source_id": "activitynet~v_-JhWjGDPHMY",
        "split": "val",
        "split_type": "indomain",
        "label": "3",
    },
    {
        "ind": 92,
        "activity_label": "Clean and jerk",
        "ctx_a": "A lady walks to a barbell. She bends down and grabs the pole.",
        "ctx_b": "the lady",
        "ctx": "A lady walks to a barbell. She bends down and grabs the pole. the lady",
        "endings": [
            "swings and lands in her arms.",
            "pulls the barbell forward.",
            "pulls a rope attached to the barbell.",
            "stands and lifts the weight over her head.",
        ],
        "source_id": "activitynet~v_-lJS58hyo1c",
        "split": "val",
        "split_type": "zeroshot",
        "label": "3",
    },
    {
        "ind": 106,
        "activity_label": "Canoeing",
        "ctx_a": "Two women in a child are shown in a canoe while a man pulls the canoe.",
        "ctx_b": "the child and a different man",
        "ctx": "Two women in a child are shown in a canoe while a man pulls the canoe. "
        "the child and a different man",
        "endings": [
            "are then shown paddling down a river in a boat.",
            "are driving the canoe.",
            "sit in a canoe while the man paddles.",
            "walking go down the rapids.",
        ],
        "source_id": "activitynet~v_-xQvJmC2jhk",
        "split": "val",
        "split_type": "indomain",
        "label": "2",
    },
    {
        "ind": 7,
        "activity_label": "Test row",
        "ctx_a": "Unlabelled.",
        "ctx_b": "it",
        "ctx": "Unlabelled. it",
        "endings": ["a.", "b.", "c.", "d."],
        "source_id": "activitynet~test",
        "split": "test",
        "split_type": "indomain",
        "label": "",
    },
]


def test_hellaswag_gold_ending_and_unlabelled_rows(tmp_path):
    path = write_jsonl(tmp_path / "hellaswag_val.jsonl", HELLASWAG_ROWS)
    examples = by_source(get_task("hellaswag", data_files=path).examples())
    assert sorted(examples) == [24, 92, 106]  # the row with an empty label is skipped
    ex = examples[24]
    assert ex.prompt == "A man is sitting on a roof. he"
    assert ex.answer == " starts pulling up roofing on a roof."
    assert ex.meta["label"] == 3
    assert ex.meta["activity_label"] == "Roof shingle removal"
    assert len(ex.meta["endings"]) == 4
    assert examples[106].answer == " sit in a canoe while the man paddles."


def test_hellaswag_original_schema_without_ctx(tmp_path):
    rows = [
        {k: v for k, v in row.items() if k != "ctx"} | {"label": int(row["label"])}
        for row in HELLASWAG_ROWS[:2]
    ]
    path = write_jsonl(tmp_path / "hellaswag.jsonl", rows)
    examples = by_source(get_task("hellaswag", data_files=path).examples())
    assert examples[92].prompt == (
        "A lady walks to a barbell. She bends down and grabs the pole. the lady"
    )
    assert examples[92].answer == " stands and lifts the weight over her head."


# ---------------------------------------------------------------------------------------------
# AIME 2024
# ---------------------------------------------------------------------------------------------

AIME_ROWS = [
    {
        "id": 60,
        "problem": "Every morning Aya goes for a $9$-kilometer-long walk ...",
        "solution": "$\\frac{9}{s} + t = 4$ ... so the answer is $\\boxed{204}$.",
        "answer": "204",
        "url": "https://artofproblemsolving.com/wiki/index.php/2024_AIME_I_Problems/Problem_1",
        "year": 2024,
    },
    {
        "id": 61,
        "problem": "There exist real numbers $x$ and $y$ ...",
        "solution": "... $\\boxed{025}$",
        "answer": "025",
        "url": "https://artofproblemsolving.com/wiki/index.php/2024_AIME_I_Problems/Problem_2",
        "year": 2024,
    },
    {
        "id": 62,
        "problem": "Alice and Bob play the following game ...",
        "solution": "...",
        "answer": "809",
        "url": "https://artofproblemsolving.com/wiki/index.php/2024_AIME_I_Problems/Problem_3",
        "year": 2024,
    },
]


def test_aime24_format(tmp_path):
    path = write_jsonl(tmp_path / "aime_2024.jsonl", AIME_ROWS)
    examples = by_source(get_task("aime24", data_files=path).examples())
    assert sorted(examples) == [60, 61, 62]
    ex = examples[61]
    assert ex.prompt == "Problem: There exist real numbers $x$ and $y$ ...\nAnswer: "
    assert ex.answer == "025"
    assert ex.meta["final"] == "025" and ex.meta["year"] == 2024
    assert ex.meta["difficulty"] is None


def test_aime24_parquet_with_integer_answers(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rows = [{"problem": r["problem"], "answer": int(r["answer"])} for r in AIME_ROWS]
    path = tmp_path / "aime.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    examples = by_source(get_task("aime24", data_files=str(path)).examples())
    assert [examples[i].answer for i in range(3)] == ["204", "25", "809"]


# ---------------------------------------------------------------------------------------------
# MATH
# ---------------------------------------------------------------------------------------------

MATH_ROWS = [
    {
        "problem": "What is $\\frac{1}{4}+\\frac{1}{4}$?",
        "level": "Level 1",
        "type": "Prealgebra",
        "solution": "We add: $\\frac{1}{4}+\\frac{1}{4}=\\boxed{\\frac{1}{2}}$.",
    },
    {
        "problem": "Which integers $n$ satisfy $n^2<4$ and $n>0$?",
        "level": "Level 3",
        "type": "Algebra",
        "solution": "Try $\\boxed{0}$? No. The set is $\\boxed{\\{1\\}}$.",
    },
    {
        "problem": "How many ways can 3 people sit in a row?",
        "level": "Level 3",
        "type": "Counting & Probability",
        "solution": "There are $3!=\\boxed{6}$ ways.",
    },
    {
        "problem": "Find $x$ if $2^x=2^{10}$.",
        "level": "Level 5",
        "type": "Intermediate Algebra",
        "solution": "So $x=\\boxed{10}$.",
    },
    {
        "problem": "A problem with an unknown level.",
        "level": "Level ?",
        "type": "Geometry",
        "solution": "$\\boxed{1}$",
    },
]


@pytest.fixture
def math_file(tmp_path):
    return write_jsonl(tmp_path / "math_test.jsonl", MATH_ROWS)


def test_math_all_levels_skip_unknown(math_file):
    examples = by_source(get_task("math", data_files=math_file).examples())
    assert sorted(examples) == [0, 1, 2, 3]  # "Level ?" is skipped
    ex = examples[0]
    assert ex.prompt == "Problem: What is $\\frac{1}{4}+\\frac{1}{4}$?\nSolution: "
    assert ex.answer == MATH_ROWS[0]["solution"]
    assert ex.meta["final"] == "\\frac{1}{2}"
    assert ex.meta["difficulty"] == 1 and ex.difficulty == 1
    assert ex.meta["subject"] == "prealgebra"
    assert examples[1].meta["final"] == "\\{1\\}"  # the last box, escaped braces kept


def test_math_level_filter(math_file):
    task = get_task("math", data_files=math_file, level=3)
    assert task.difficulty == 3
    examples = task.examples()
    assert sorted(ex.meta["source_id"] for ex in examples) == [1, 2]
    assert {ex.meta["difficulty"] for ex in examples} == {3}


def test_math_subject_filter(math_file):
    examples = get_task(
        "math", data_files=math_file, level=3, subject="counting_and_probability"
    ).examples()
    assert [ex.meta["source_id"] for ex in examples] == [2]
    assert examples[0].meta["final"] == "6"


def test_math_empty_selection(math_file):
    with pytest.raises(TaskError, match="level=2"):
        get_task("math", data_files=math_file, level=2).examples()


def test_math_bad_parameters():
    with pytest.raises(TaskError, match=r"1\.\.5"):
        get_task("math", level=7)
    with pytest.raises(TaskError, match="number_theory"):
        get_task("math", subject="calculus")


def test_last_boxed():
    assert last_boxed("$\\boxed{\\frac{a^{2}}{b}}$") == "\\frac{a^{2}}{b}"
    assert last_boxed("\\boxed{1} then \\boxed{2}") == "2"
    assert last_boxed("\\boxed{1} then \\boxed{2") == "1"  # an unbalanced box is ignored
    assert last_boxed("so $\\boxed 5$.") == "5"
    assert last_boxed("\\fbox{x+1}") == "x+1"
    assert last_boxed("no box") is None


# ---------------------------------------------------------------------------------------------
# MQuAKE
# ---------------------------------------------------------------------------------------------


def mquake_case(case_id, questions, answer, hops):
    chain = [(f"Q{i}", f"P{i}", f"Q{i + 1}") for i in range(hops)]
    return {
        "case_id": case_id,
        "requested_rewrite": [
            {
                "prompt": "{} is a citizen of",
                "relation_id": "P27",
                "target_new": {"str": "Spain", "id": "Q29"},
                "target_true": {"str": "United Kingdom", "id": "Q145"},
                "subject": "John Milton",
                "question": "What is the country of citizenship of John Milton?",
            }
        ],
        "questions": questions,
        "answer": answer,
        "answer_alias": [answer.upper()],
        "new_answer": "Madrid",
        "new_answer_alias": [],
        "single_hops": [
            {"question": f"hop {i}?", "cloze": f"hop {i} is", "answer": f"A{i}", "answer_alias": []}
            for i in range(hops)
        ],
        "new_single_hops": [
            {
                "question": f"new hop {i}?",
                "cloze": f"new hop {i} is",
                "answer": f"N{i}",
                "answer_alias": [],
            }
            for i in range(hops)
        ],
        "orig": {
            "triples": [list(t) for t in chain],
            "triples_labeled": [[f"s{i}", f"r{i}", f"o{i}"] for i in range(hops)],
            "new_triples": [list(t) for t in chain],
            "new_triples_labeled": [[f"s{i}", f"r{i}", f"n{i}"] for i in range(hops)],
            "edit_triples": [list(chain[0])],
        },
    }


MQUAKE_CASES = [
    mquake_case(
        1,
        [
            "What is the capital of the country of citizenship of John Milton?",
            "John Milton is a citizen of a country whose capital is what?",
            "Which city is the capital of John Milton's country?",
        ],
        "London",
        2,
    ),
    mquake_case(
        2,
        [
            "On which continent is the country of the creator of Hamlet?",
            "The creator of Hamlet is from a country on which continent?",
            "Hamlet's author's country lies on which continent?",
        ],
        "Europe",
        3,
    ),
    mquake_case(3, ["q4a?", "q4b?", "q4c?"], "Asia", 4),
    mquake_case(4, ["q3a?", "q3b?", "q3c?"], "Africa", 3),
]


@pytest.fixture
def mquake_file(tmp_path):
    # The original release is one JSON list, not JSON Lines.
    path = tmp_path / "MQuAKE-CF-3k.json"
    path.write_text(json.dumps(MQUAKE_CASES, indent=2), encoding="utf-8")
    return str(path)


def test_mquake_format(mquake_file):
    examples = by_source(get_task("mquake", data_files=mquake_file).examples())
    assert sorted(examples) == [1, 2, 3, 4]
    ex = examples[1]
    assert ex.prompt == "Q: What is the capital of the country of citizenship of John Milton?\nA: "
    assert ex.answer == " London"
    assert ex.meta["hops"] == 2 and ex.meta["difficulty"] == 2
    assert ex.meta["answer_alias"] == ["LONDON"]


def test_mquake_hops_filter_and_paraphrase(mquake_file):
    examples = get_task("mquake", data_files=mquake_file, hops=3, question=1).examples()
    assert sorted(ex.meta["source_id"] for ex in examples) == [2, 4]
    assert by_source(examples)[2].prompt == (
        "Q: The creator of Hamlet is from a country on which continent?\nA: "
    )
    assert {ex.difficulty for ex in examples} == {3}


def test_mquake_hops_from_triples_when_single_hops_absent(tmp_path):
    cases = [
        {k: v for k, v in c.items() if k not in ("single_hops", "new_single_hops")}
        for c in MQUAKE_CASES
    ]
    path = tmp_path / "mquake_no_hops.json"
    path.write_text(json.dumps(cases), encoding="utf-8")
    examples = get_task("mquake", data_files=str(path), hops=4).examples()
    assert [ex.meta["source_id"] for ex in examples] == [3]


def test_mquake_bad_hops():
    with pytest.raises(TaskError, match=r"2\.\.4"):
        get_task("mquake", hops=5)


# ---------------------------------------------------------------------------------------------
# Prompts file
# ---------------------------------------------------------------------------------------------


def test_prompts_from_text(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("The capital of France is\n\n  \nAnswer: \n", encoding="utf-8")
    examples = get_task("prompts", path=str(path)).examples()
    assert [(ex.prompt, ex.answer) for ex in examples] == [
        ("The capital of France is", ""),
        ("Answer: ", ""),  # trailing space kept: it changes the tokenization
    ]
    assert [ex.meta["source_id"] for ex in examples] == [1, 4]
    assert examples[0].difficulty is None


def test_prompts_from_jsonl(tmp_path):
    path = write_jsonl(
        tmp_path / "prompts.jsonl",
        [
            {"prompt": "2+2=", "answer": "4", "difficulty": 1},
            {"prompt": "The sky is", "topic": "colour"},
        ],
    )
    examples = get_task("prompts", path=path).examples()
    assert [(ex.prompt, ex.answer, ex.difficulty) for ex in examples] == [
        ("2+2=", "4", 1),
        ("The sky is", "", None),
    ]
    assert examples[1].meta["topic"] == "colour"
    assert get_task("prompts", path=path).examples(1) == examples[:1]


def test_prompts_bad_json_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "ok"}\n\n{"prompt": oops}\n', encoding="utf-8")
    with pytest.raises(TaskError, match=r"bad\.jsonl, line 3"):
        get_task("prompts", path=str(path)).examples()


def test_prompts_record_without_prompt(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"text": "hello"}])
    with pytest.raises(TaskError, match=r"line 1.*prompt"):
        get_task("prompts", path=path).examples()


def test_prompts_missing_file_and_missing_path(tmp_path):
    missing = str(tmp_path / "absent.txt")
    with pytest.raises(TaskError, match="absent.txt"):
        get_task("prompts", path=missing).examples()
    with pytest.raises(TaskError, match="path"):
        get_task("prompts")


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------


def test_registered_with_difficulty_params():
    names = set(list_tasks())
    assert {"gsm8k", "hellaswag", "aime24", "math", "mquake", "prompts"} <= names
    assert task_info("math")["difficulty_param"] == "level"
    assert task_info("mquake")["difficulty_param"] == "hops"
    assert task_info("gsm8k")["difficulty_param"] is None
    assert "data_files" in task_info("hellaswag")["params"]


# ---------------------------------------------------------------------------------------------
# Every dropped row counted; JSON Lines split as JSON defines lines (issue 19)
# ---------------------------------------------------------------------------------------------


def test_gsm8k_rows_without_a_final_answer_are_a_stored_warning(tmp_path):
    path = write_jsonl(tmp_path / "g.jsonl", GSM8K_ROWS[1:4])  # the middle row has no '####'
    task = get_task("gsm8k", data_files=path)
    examples = task.examples(1)  # counted over every row, not just those reached before n
    assert len(examples) == 1
    assert task.warnings == [{"code": "rows_skipped",
                              "message": "1 of 3 GSM8K rows have no '#### answer': skipped"}]
    task.examples(None)
    assert len(task.warnings) == 1  # a second build starts afresh


def test_math_level_unknown_rows_are_counted(math_file):
    task = get_task("math", data_files=math_file)
    assert len(task.examples()) == 4
    assert task.warnings == [{"code": "rows_skipped", "message":
                              "1 of 5 MATH rows have no level 1-5 (e.g. 'Level ?'): skipped"}]
    # rows the user's own filter leaves out are a selection, not a loss
    level3 = get_task("math", data_files=math_file, level=3)
    assert len(level3.examples()) == 2
    assert [w["message"] for w in level3.warnings] == [
        "1 of 5 MATH rows have no level 1-5 (e.g. 'Level ?'): skipped"]


def test_hellaswag_unlabelled_rows_are_counted(tmp_path):
    rows = [{"ctx": "A man sits.", "endings": ["a", "b"], "label": 1},
            {"ctx": "A dog runs.", "endings": ["a", "b"], "label": ""}]
    task = get_task("hellaswag", data_files=write_jsonl(tmp_path / "h.jsonl", rows))
    assert len(task.examples()) == 1
    assert task.warnings[0]["message"].startswith("1 of 2 HellaSwag rows have no label")


@pytest.mark.parametrize("sep", ["\u2028", "\u0085", "\u2029"])
def test_jsonl_keeps_line_separators_inside_strings(tmp_path, sep):
    """json.dumps(..., ensure_ascii=False) writes these raw; str.splitlines broke the line."""
    records = [{"prompt": f"first{sep}line: ", "answer": f"a{sep}b"}, {"prompt": "two", "answer": "2"}]
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records),
                    encoding="utf-8", newline="")
    examples = get_task("prompts", path=str(path)).examples()
    assert [(ex.prompt, ex.answer) for ex in examples] == [(r["prompt"], r["answer"]) for r in records]
    assert [ex.meta["source_id"] for ex in examples] == [1, 2]


def test_jsonl_with_crlf_line_ends(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_bytes(b'{"prompt": "1+2=", "answer": "3"}\r\n\r\n{"prompt": "x\\r", "answer": "y"}\r\n')
    examples = get_task("prompts", path=str(path)).examples()
    assert [(ex.prompt, ex.answer, ex.meta["source_id"]) for ex in examples] == [
        ("1+2=", "3", 1), ("x\r", "y", 3)]


def test_text_prompts_keep_unicode_separators_and_drop_crlf(tmp_path):
    path = tmp_path / "p.txt"
    path.write_bytes("a\u2028b \r\nc\n".encode())
    assert [ex.prompt for ex in get_task("prompts", path=str(path)).examples()] == ["a\u2028b ", "c"]
