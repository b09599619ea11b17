"""Tasks read from public data sets: GSM8K, HellaSwag, AIME 2024, MATH and MQuAKE.

Each task loads its data set with ``datasets.load_dataset``, either from the Hugging Face Hub or,
for offline use, from local files in the data set's *own* schema (parameter ``data_files``: a
JSON, JSONL or Parquet file, a glob, or a folder holding such files). Rows are shuffled with a
private ``random.Random(seed)`` and the first ``n`` usable rows become examples, so a run is
reproducible and never touches global RNG state.

The formats follow the reference papers: Hu et al. 2025 ("What Affects the Effective Depth of
LLMs?") analyse GSM8K, HellaSwag and AIME 2024 with the reference solution teacher-forced after
the prompt; Csordás et al. 2025 ("Do Language Models Use Their Depth Efficiently?") use MATH
levels and MQuAKE hop counts as difficulty knobs. Every example carries ``meta["source_id"]`` (the
row's id or index in the data set) so a result can be traced back to its row.

``datasets`` is imported inside the functions: it takes seconds to import, and most commands
(listing tasks, generated tasks) never need it.
"""

from __future__ import annotations

import glob
import logging
import os
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from ..errors import TaskError
from .base import Example, Param, Task, register_task

__all__ = [
    "GSM8KTask",
    "HellaSwagTask",
    "AIME24Task",
    "MATHTask",
    "MQuAKETask",
    "last_boxed",
    "parse_gsm8k_answer",
    "load_rows",
    "Unusable",
]

logger = logging.getLogger(__name__)

_BUILDERS = {
    ".json": "json",
    ".jsonl": "json",
    ".json.gz": "json",
    ".jsonl.gz": "json",
    ".parquet": "parquet",
}

MATH_SUBJECTS = (
    "algebra",
    "counting_and_probability",
    "geometry",
    "intermediate_algebra",
    "number_theory",
    "prealgebra",
    "precalculus",
)


def _data_files_param(example: str) -> Param:
    return Param(
        str,
        None,
        "local JSON/JSONL/Parquet file, glob or folder in the data set's own schema "
        f"(instead of downloading from the Hub), e.g. {example}",
    )


_SEED = Param(int, 0, "seed of the shuffle that picks which rows are used", min=0)


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _builder_for(path: str) -> str | None:
    low = path.lower()
    for ext, builder in _BUILDERS.items():
        if low.endswith(ext):
            return builder
    return None


def _resolve_files(data_files: str) -> tuple[str, list[str]]:
    """The builder name and the sorted file list that ``data_files`` (file, glob, folder) means."""
    pattern = os.path.expanduser(data_files)
    if os.path.isdir(pattern):
        files = [
            os.path.join(pattern, f)
            for f in os.listdir(pattern)
            if _builder_for(f) is not None and os.path.isfile(os.path.join(pattern, f))
        ]
        if not files:
            raise TaskError(
                f"data_files={data_files!r} is a folder without any "
                f"{'/'.join(sorted(_BUILDERS))} file; point it at the data file itself"
            )
    else:
        files = [f for f in glob.glob(pattern, recursive=True) if os.path.isfile(f)]
        if not files:
            raise TaskError(
                f"data_files={data_files!r}: no such file (or the glob matches nothing); "
                "check the path, or drop data_files to download the data set from the Hub"
            )
    files.sort()
    builders = {_builder_for(f) for f in files}
    if None in builders:
        odd = next(f for f in files if _builder_for(f) is None)
        raise TaskError(
            f"data_files={data_files!r}: cannot tell the format of {odd!r}; "
            f"use files ending in {', '.join(sorted(_BUILDERS))}"
        )
    if len(builders) > 1:
        raise TaskError(
            f"data_files={data_files!r} mixes JSON and Parquet files; point it at one format"
        )
    return builders.pop(), files


def _load_local(data_files: str) -> Any:
    builder, files = _resolve_files(data_files)
    import datasets

    try:
        return datasets.load_dataset(builder, data_files=files, split="train")
    except Exception as exc:  # the builders raise many types; all mean "unreadable file"
        raise TaskError(
            f"could not read data_files={data_files!r} as {builder.upper()} "
            f"({type(exc).__name__}: {exc}); the file must hold one row per record, "
            "in the data set's own schema"
        ) from exc


def _load_hub(hub_path: str, config: str | None, split: str, example: str) -> Any:
    import datasets

    try:
        return datasets.load_dataset(hub_path, config, split=split)
    except Exception as exc:  # offline, missing, gated, bad split: all end the same way for a user
        where = hub_path if config is None else f"{hub_path}' config '{config}"
        raise TaskError(
            f"could not load data set '{where}' split {split!r} "
            f"({type(exc).__name__}: {exc}); to run offline, download it once and pass "
            "data_files=PATH (JSON/JSONL/Parquet in the data set's own schema), "
            f"e.g. --param data_files={example}"
        ) from exc


def _check_columns(
    ds: Any, required: Sequence[str | tuple[str, ...]], what: str, origin: str
) -> None:
    """Raise unless every requirement (a column, or a tuple of alternatives) is met."""
    found = list(ds.column_names)
    missing = []
    for req in required:
        options = (req,) if isinstance(req, str) else req
        if not any(col in found for col in options):
            missing.append(" or ".join(options))
    if missing:
        expected = ", ".join(r if isinstance(r, str) else "/".join(r) for r in required)
        raise TaskError(
            f"{what} rows from {origin} lack column(s) {', '.join(missing)}: expected columns "
            f"{expected}; found {', '.join(found) or '(none)'}. The file must use the data "
            "set's own (Hub) schema"
        )


def load_rows(
    task: str,
    hub_path: str,
    configs: Sequence[str | None],
    split: str,
    data_files: str | None,
    required: Sequence[str | tuple[str, ...]],
    example: str,
) -> list[dict[str, Any]]:
    """All rows of a data set as dicts, from ``data_files`` when given, else from the Hub.

    ``configs`` lists the Hub configs to concatenate (``[None]`` for the default one); local
    files are read as they are. Columns are checked before any row is converted, so a file in
    the wrong schema fails with the expected and found column names.
    """
    rows: list[dict[str, Any]] = []
    if data_files is not None:
        ds = _load_local(data_files)
        _check_columns(ds, required, task, f"data_files={data_files!r}")
        rows.extend(ds.to_list())
    else:
        for config in configs:
            ds = _load_hub(hub_path, config, split, example)
            _check_columns(ds, required, task, f"'{hub_path}'")
            rows.extend(ds.to_list())
    return rows


# --------------------------------------------------------------------------------------------
# Common machinery
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Unusable:
    """What :meth:`_DatasetTask.convert` returns for a row it cannot use (as opposed to None,
    a row the task's own filters leave out): ``reason`` completes "N of M ROWS rows ..."."""

    reason: str


class _DatasetTask(Task):
    """Shared build loop: load, shuffle with a private RNG, convert until ``n`` examples.

    Every row of the data set is converted, so that rows it cannot use (``Unusable``) are
    counted over the whole set and reported as a ``rows_skipped`` warning per reason.
    """

    hub_path: ClassVar[str]
    required_columns: ClassVar[tuple[str | tuple[str, ...], ...]]
    #: how the data_files example in error messages is spelled
    example_file: ClassVar[str]

    def hub_configs(self) -> list[str | None]:
        return [None]

    #: how the rows are named in the rows_skipped warning
    rows_name: ClassVar[str] = "rows"

    def convert(self, row: dict[str, Any], index: int) -> Example | Unusable | None:
        """The example of one row; :class:`Unusable` (with the reason) when the row cannot be
        used; None when the task's filters (level, hops, subject) leave it out."""
        raise NotImplementedError

    def filters(self) -> str:
        """The active filters, for the "no rows left" error ("" when there are none)."""
        return ""

    def build(self, n: int | None) -> list[Example]:
        rows = load_rows(
            self.name,
            self.hub_path,
            self.hub_configs(),
            self.split,
            self.data_files,
            self.required_columns,
            self.example_file,
        )
        order = list(range(len(rows)))
        # Seeded with the task name too, so two tasks with seed=0 do not share one permutation.
        random.Random(f"{self.name}:{self.seed}").shuffle(order)
        out: list[Example] = []
        unusable: dict[str, int] = {}
        for i in order:
            ex = self.convert(rows[i], i)
            if isinstance(ex, Unusable):
                unusable[ex.reason] = unusable.get(ex.reason, 0) + 1
            elif ex is not None and (n is None or len(out) < n):
                out.append(ex)
        for reason, count in unusable.items():
            message = f"{count} of {len(rows)} {self.rows_name} {reason}: skipped"
            logger.warning("%s: %s", self.name, message)
            self.warnings.append({"code": "rows_skipped", "message": message})
        if not out and n != 0:
            source = self.data_files or f"{self.hub_path} ({self.split})"
            why = f" matching {self.filters()}" if self.filters() else ""
            raise TaskError(
                f"task {self.name!r}: no usable rows{why} in {source} ({len(rows)} rows read)"
            )
        return out


def _source_id(row: dict[str, Any], index: int, *keys: str) -> Any:
    for key in keys:
        value = row.get(key)
        if value is not None and value != "":
            return value
    return index


# --------------------------------------------------------------------------------------------
# GSM8K
# --------------------------------------------------------------------------------------------

_CALC = re.compile(r"<<[^<>]*>>")
_FINAL = re.compile(r"^\s*####\s*(.*?)\s*$")


@register_task
class GSM8KTask(_DatasetTask):
    """GSM8K grade-school math word problems (Cobbe et al. 2021), as Hu et al. 2025 format them.

    The prompt is ``"Question: {question}\\nAnswer: "``; the answer is the reference reasoning
    with its calculator annotations (``<<48/2=24>>``) and ``#### X`` line removed, followed by
    ``"The final answer is X"``. The annotations go because they are tool calls from the data
    set's construction, not text a model would write. GSM8K has no difficulty label;
    ``meta["n_steps"]`` (reasoning lines) is a usable proxy.
    """

    name = "gsm8k"
    description = "GSM8K math word problems with the reference reasoning (openai/gsm8k)"
    params = {
        "split": Param(str, "test", "Hub split (ignored with data_files)"),
        "data_files": _data_files_param("gsm8k_test.jsonl"),
        "seed": _SEED,
    }
    hub_path = "openai/gsm8k"
    required_columns = ("question", "answer")
    example_file = "gsm8k_test.jsonl"
    rows_name = "GSM8K rows"

    def hub_configs(self) -> list[str | None]:
        return ["main"]

    def convert(self, row: dict[str, Any], index: int) -> Example | Unusable | None:
        parsed = parse_gsm8k_answer(str(row["answer"] or ""))
        question = str(row["question"] or "").strip()
        if parsed is None:
            return Unusable("have no '#### answer'")
        if not question:
            return Unusable("have an empty question")
        reasoning, final = parsed
        answer = (reasoning + "\n" if reasoning else "") + f"The final answer is {final}"
        return Example(
            f"Question: {question}\nAnswer: ",
            answer,
            {
                "difficulty": None,
                "n_steps": len(reasoning.splitlines()) if reasoning else 0,
                "final": final,
                "source_id": index,
            },
        )


def parse_gsm8k_answer(text: str) -> tuple[str, str] | None:
    """``(reasoning, final)`` of a GSM8K answer, or None when it has no ``#### X`` line."""
    lines = text.strip().splitlines()
    final = None
    kept = []
    for line in lines:
        m = _FINAL.match(line)
        if m:
            final = m.group(1)
            continue
        line = _CALC.sub("", line).rstrip()
        if line.strip():
            kept.append(line)
    if not final:
        return None
    return "\n".join(kept), final


# --------------------------------------------------------------------------------------------
# HellaSwag
# --------------------------------------------------------------------------------------------


@register_task
class HellaSwagTask(_DatasetTask):
    """HellaSwag commonsense sentence completion (Zellers et al. 2019).

    The prompt is the context (``ctx``, or ``ctx_a + " " + ctx_b`` when ``ctx`` is absent) and
    the answer is the gold ending with a leading space, so ``prompt + answer`` reads as the
    original sentence. Only labelled rows are usable: the test split has empty labels, hence the
    default split ``validation``. ``meta["endings"]`` keeps all four candidates for scoring.
    """

    name = "hellaswag"
    description = "HellaSwag context -> gold ending (Rowan/hellaswag)"
    params = {
        "split": Param(str, "validation", "Hub split (ignored with data_files)"),
        "data_files": _data_files_param("hellaswag_val.jsonl"),
        "seed": _SEED,
    }
    hub_path = "Rowan/hellaswag"
    required_columns = (("ctx", "ctx_a"), "endings", "label")
    example_file = "hellaswag_val.jsonl"
    rows_name = "HellaSwag rows"

    def convert(self, row: dict[str, Any], index: int) -> Example | Unusable | None:
        label = row.get("label")
        endings = row.get("endings") or []
        if label is None or str(label).strip() == "":
            return Unusable("have no label (the test split is unlabelled: use validation)")
        try:
            gold = int(label)
        except (TypeError, ValueError):
            return Unusable("have a label that is not an integer")
        if not 0 <= gold < len(endings):
            return Unusable("have a label outside their endings")
        context = row.get("ctx")
        if not context:
            parts = [str(row.get("ctx_a") or "").strip(), str(row.get("ctx_b") or "").strip()]
            context = " ".join(p for p in parts if p)
        context = str(context).strip()
        if not context:
            return Unusable("have an empty context")
        return Example(
            context,
            " " + str(endings[gold]).strip(),
            {
                "difficulty": None,
                "label": gold,
                "endings": [str(e) for e in endings],
                "activity_label": row.get("activity_label"),
                "source_id": _source_id(row, index, "ind"),
            },
        )


# --------------------------------------------------------------------------------------------
# AIME 2024
# --------------------------------------------------------------------------------------------


@register_task
class AIME24Task(_DatasetTask):
    """The 30 problems of AIME 2024 (American Invitational Mathematics Examination).

    The prompt is ``"Problem: {problem}\\nAnswer: "`` and the answer is the integer answer
    (0-999) as text. Hu et al. 2025 use it as the hardest end of their difficulty range; with
    only 30 rows, ``n`` above 30 just returns all of them.
    """

    name = "aime24"
    description = "AIME 2024 problems with their integer answers (HuggingFaceH4/aime_2024)"
    params = {
        "split": Param(str, "train", "Hub split (ignored with data_files)"),
        "data_files": _data_files_param("aime_2024.jsonl"),
        "seed": _SEED,
    }
    hub_path = "HuggingFaceH4/aime_2024"
    required_columns = ("problem", "answer")
    example_file = "aime_2024.jsonl"
    rows_name = "AIME rows"

    def convert(self, row: dict[str, Any], index: int) -> Example | Unusable | None:
        problem = str(row["problem"] or "").strip()
        if not problem:
            return Unusable("have an empty problem")
        answer = "" if row["answer"] is None else str(row["answer"]).strip()
        if not answer:
            return Unusable("have no answer")
        meta: dict[str, Any] = {
            "difficulty": None,
            "final": answer,
            "source_id": _source_id(row, index, "id"),
        }
        if row.get("year") is not None:
            meta["year"] = row["year"]
        return Example(f"Problem: {problem}\nAnswer: ", answer, meta)


# --------------------------------------------------------------------------------------------
# MATH
# --------------------------------------------------------------------------------------------

_LEVEL = re.compile(r"^\s*Level\s+(\d+)\s*$", re.IGNORECASE)
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*")


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), nested braces included.

    ``\\boxed 5`` (no braces, which a few MATH solutions use) yields the token after it.
    Returns None when there is no complete box.
    """
    for m in reversed(list(_BOXED.finditer(text))):
        pos = m.end()
        if pos < len(text) and text[pos] == "{":
            content = _braced(text, pos)
            if content is not None:
                return content
            continue  # unbalanced: an earlier box may still be complete
        if m.group(0)[-1:].isspace():
            token = re.match(r"[^\s$]+", text[pos:])
            if token:
                return token.group(0)
    return None


def _braced(text: str, start: int) -> str | None:
    """The text inside the brace group opening at ``text[start]``; ``\\{``/``\\}`` do not count."""
    depth = 0
    j = start
    while j < len(text):
        ch = text[j]
        if ch == "\\":
            j += 2  # an escaped character, e.g. the literal braces of a set \{1, 2\}
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : j]
        j += 1
    return None


def _math_subject(type_label: Any) -> str | None:
    """``"Counting & Probability"`` -> ``"counting_and_probability"`` (the Hub config name)."""
    if not type_label:
        return None
    return re.sub(r"\s+", "_", str(type_label).strip().lower().replace("&", "and"))


def _math_level(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value if 1 <= value <= 5 else None
    m = _LEVEL.match(str(value or ""))
    if not m:
        return None  # "Level ?" rows have no usable difficulty
    level = int(m.group(1))
    return level if 1 <= level <= 5 else None


@register_task
class MATHTask(_DatasetTask):
    """MATH competition problems (Hendrycks et al. 2021) with their worked solutions.

    The prompt is ``"Problem: {problem}\\nSolution: "`` and the answer is the reference solution,
    teacher-forced; ``meta["final"]`` is the content of its last ``\\boxed{...}``. The data set's
    level (1-5) is the difficulty, the knob Csordás et al. 2025 vary; rows marked
    ``"Level ?"`` have none and are skipped. ``subject`` restricts to one of the seven subjects:
    from the Hub it picks that config of ``EleutherAI/hendrycks_math``; from ``data_files`` it
    filters on the ``type`` column.
    """

    name = "math"
    description = (
        "MATH problems with worked solutions, by level and subject (EleutherAI/hendrycks_math)"
    )
    params = {
        "level": Param(
            int, None, "difficulty level 1-5 (the difficulty; default: all)", min=1, max=5
        ),
        "subject": Param(str, None, "one subject (default: all)", choices=MATH_SUBJECTS),
        "split": Param(str, "test", "Hub split (ignored with data_files)"),
        "data_files": _data_files_param("math_test.jsonl"),
        "seed": _SEED,
    }
    difficulty_param = "level"
    hub_path = "EleutherAI/hendrycks_math"
    required_columns = ("problem", "level", "solution")
    example_file = "math_test.jsonl"
    rows_name = "MATH rows"

    def hub_configs(self) -> list[str | None]:
        return [self.subject] if self.subject else list(MATH_SUBJECTS)

    def filters(self) -> str:
        parts = [f"{k}={self.values[k]!r}" for k in ("level", "subject") if self.values[k]]
        return " and ".join(parts)

    def convert(self, row: dict[str, Any], index: int) -> Example | Unusable | None:
        level = _math_level(row["level"])
        if level is None:
            return Unusable("have no level 1-5 (e.g. 'Level ?')")
        if self.level is not None and level != self.level:
            return None
        subject = _math_subject(row.get("type"))
        # Hub rows already come from the chosen config; local files need the filter here.
        if self.subject is not None and self.data_files is not None and subject != self.subject:
            return None
        problem = str(row["problem"] or "").strip()
        solution = str(row["solution"] or "").strip()
        if not problem or not solution:
            return Unusable("have an empty problem or solution")
        return Example(
            f"Problem: {problem}\nSolution: ",
            solution,
            {
                "difficulty": level,
                "level": level,
                "subject": subject,
                "final": last_boxed(solution),
                "source_id": _source_id(row, index, "unique_id"),
            },
        )


# --------------------------------------------------------------------------------------------
# MQuAKE
# --------------------------------------------------------------------------------------------


def _mquake_hops(row: dict[str, Any]) -> int | None:
    hops = row.get("single_hops")
    if isinstance(hops, list) and hops:
        return len(hops)
    orig = row.get("orig")
    if isinstance(orig, dict) and isinstance(orig.get("triples"), list) and orig["triples"]:
        return len(orig["triples"])
    # MQuAKE-Remastered on the Hub flattens orig.triples to a top-level column.
    triples = row.get("orig_triples")
    if isinstance(triples, list) and triples:
        return len(triples)
    return None


@register_task
class MQuAKETask(_DatasetTask):
    """MQuAKE multi-hop factual questions (Zhong et al. 2023), asked about the unedited world.

    Each case chains 2-4 Wikidata facts ("the country of citizenship of the author of X") into
    one question; the number of hops is the difficulty Csordás et al. 2025 use to ask whether
    deeper composition uses deeper layers. The prompt is ``"Q: {question}\\nA: "`` with one of
    the case's three paraphrases (parameter ``question``), and the answer is ``" " + answer``,
    the *original* (pre-edit) answer: the knowledge-editing part of the benchmark is not used.
    Works with the original ``MQuAKE-CF-3k.json`` (github.com/princeton-nlp/MQuAKE) and with
    the Hub's ``henryzhongsc/MQuAKE-Remastered``.
    """

    name = "mquake"
    description = "MQuAKE multi-hop questions with their unedited answers, by hop count"
    params = {
        "hops": Param(int, None, "number of hops 2-4 (the difficulty; default: all)", min=2, max=4),
        "question": Param(int, 0, "which of the three paraphrases to ask", min=0, max=2),
        "split": Param(str, "CF3k", "Hub split of MQuAKE-Remastered (ignored with data_files)"),
        "data_files": _data_files_param("MQuAKE-CF-3k.json"),
        "seed": _SEED,
    }
    difficulty_param = "hops"
    hub_path = "henryzhongsc/MQuAKE-Remastered"
    required_columns = ("questions", "answer", ("single_hops", "orig", "orig_triples"))
    example_file = "MQuAKE-CF-3k.json"
    rows_name = "MQuAKE cases"

    def filters(self) -> str:
        return "" if self.hops is None else f"hops={self.hops}"

    def convert(self, row: dict[str, Any], index: int) -> Example | Unusable | None:
        hops = _mquake_hops(row)
        if hops is None:
            return Unusable("have no hop list (single_hops or orig triples)")
        if self.hops is not None and hops != self.hops:
            return None
        questions = row.get("questions") or []
        if len(questions) <= self.question:
            return Unusable(f"have no question {self.question} (parameter question)")
        if row.get("answer") in (None, ""):
            return Unusable("have no answer")
        question = str(questions[self.question]).strip()
        answer = str(row["answer"]).strip()
        return Example(
            f"Q: {question}\nA: ",
            " " + answer,
            {
                "difficulty": hops,
                "hops": hops,
                "answer_alias": list(row.get("answer_alias") or []),
                "source_id": _source_id(row, index, "case_id"),
            },
        )
