import json

import pytest

from eval.tax_tasks import (
    gsm8k_dataset,
    humaneval_completion,
    humaneval_completions,
    humaneval_dataset,
    humaneval_pass,
    ifeval_dataset,
)
from tests.conftest import REPO
from wsd.data.prompt_sets import BenchmarkUnavailable

GSM8K = REPO / "tests" / "fixtures" / "gsm8k_mini.jsonl"


@pytest.fixture(scope="module")
def problems():
    return {row["task_id"]: row for row in humaneval_dataset(humaneval_timeout=2.0)["test"]}


def test_humaneval_ships_164_problems_with_their_timeout(problems):
    assert len(problems) == 164
    first = problems["HumanEval/0"]
    assert first["entry_point"] == "has_close_elements" and first["timeout"] == 2.0


@pytest.mark.parametrize("response, expected", [
    # a chat answer with a whole function in a fence: appended after the stub, which it replaces
    ("Here it is:\n```python\ndef add(a, b):\n    return a + b\n```\nIt adds.", "\ndef add(a, b):\n    return a + b\n"),
    # a body that continues the stub, fenced or not
    ("```\n    return a + b\n```", "    return a + b"),
    ("    return a + b\n", "    return a + b\n"),
    # an unclosed fence (the budget ran out): the code up to the end
    ("```python\ndef add(a, b):\n    return a", "\ndef add(a, b):\n    return a\n"),
])
def test_code_is_extracted_from_chat_and_base_answers(response, expected):
    assert humaneval_completion("def add(a, b):\n    \"\"\"Add.\"\"\"\n", "add", response) == expected


def test_humaneval_execution_scores_right_wrong_and_hanging_code(problems):
    problem = problems["HumanEval/2"]  # truncate_number: the decimal part of a float
    right = f"```python\n{problem['prompt']}{problem['canonical_solution']}```"
    wrong = "```python\ndef truncate_number(number: float) -> float:\n    return number\n```"
    hanging = "    while True:\n        pass\n"
    completions = humaneval_completions([[right], [wrong], [hanging], ["not python at all ("]], [problem] * 4)
    results = [humaneval_pass(dict(problem, timeout=1.0), c)["pass@1"] for c in completions]
    assert results == [1.0, 0.0, 0.0, 0.0]
    body = humaneval_pass(problem, [problem["canonical_solution"]])  # the body alone continues the stub
    assert body == {"pass@1": 1.0}


def test_gsm8k_from_local_files(tmp_path):
    data = gsm8k_dataset(gsm8k_path=str(GSM8K))
    assert data["test"].num_rows == 6 and data["train"].num_rows == 6  # examples from the test file itself
    shots = tmp_path / "train.jsonl"
    shots.write_text(json.dumps({"question": "1 + 1?", "answer": "#### 2", "extra": 1}) + "\n")
    data = gsm8k_dataset(gsm8k_path=str(GSM8K), gsm8k_fewshot_path=str(shots))
    assert data["train"].column_names == ["question", "answer"] and data["train"].num_rows == 1


def test_gsm8k_bad_input_is_named(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q", "answer": "#### 1"}) + "\n" + json.dumps({"question": "q"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: a GSM8K row needs 'question' and 'answer'.*missing answer"):
        gsm8k_dataset(gsm8k_path=str(bad))
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        gsm8k_dataset(gsm8k_path=str(tmp_path / "nope.jsonl"))
    with pytest.raises(BenchmarkUnavailable, match=r"Pass tax.gsm8k_path=FILE"):  # tests run offline
        gsm8k_dataset()


def test_ifeval_ships_541_prompts_with_their_instructions():
    rows = ifeval_dataset()["train"]
    assert rows.num_rows == 541
    assert {"key", "prompt", "instruction_id_list", "kwargs"} <= set(rows.column_names)
