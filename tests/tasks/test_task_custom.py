"""Custom tasks: every dataset source, reward as callable / dotted path / built-in name, and the errors."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import datasets
import pytest

from tokrl.tasks import get_task
from tokrl.tasks.base import RewardError
from tokrl.tasks.custom import resolve_reward
from tokrl.tasks.rewards import exact_match

ROWS = {"prompt": ["1+1", "2+2", "3+3", "4+4", "5+5"], "answer": ["2", "4", "6", "8", "10"]}


def starts_with_answer(completions, answer, **kwargs):
    return [1.0 if c.startswith(a) else 0.0 for c, a in zip(completions, answer, strict=True)]


@pytest.fixture
def reward_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A throwaway importable package `my_rewards_pkg.rewards` for dotted-path tests."""
    package = tmp_path / "my_rewards_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "rewards.py").write_text(
        textwrap.dedent(
            """
            NOT_CALLABLE = 3

            def length_is_answer(completions, answer, **kwargs):
                return [1.0 if str(len(c)) == a else 0.0 for c, a in zip(completions, answer)]

            def maybe(completions, **kwargs):
                return [None if c == "?" else 0.5 for c in completions]
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_rewards_pkg.rewards"


def test_in_memory_dataset_with_callable() -> None:
    task = get_task("custom", dataset=datasets.Dataset.from_dict(ROWS), reward=starts_with_answer)
    assert task.split("train")["prompt"] == ROWS["prompt"]
    assert task.format_prompt("1+1") == "1+1"  # default template feeds the prompt as is
    assert task.reference_completion({"prompt": "1+1", "answer": 2}) == "2"
    assert task.reward(["2 apples", "5"], answer=["2", "4"], prompt=["1+1", "2+2"]) == [1.0, 0.0]
    assert task.reward_name == "starts_with_answer"
    assert task.options["reward"].endswith(":starts_with_answer")
    assert task.options["dataset"].startswith("<in-memory Dataset: 5 rows")


def test_dotted_paths(reward_module: str) -> None:
    data = datasets.Dataset.from_dict(ROWS)
    for path in (f"{reward_module}:length_is_answer", f"{reward_module}.length_is_answer"):
        task = get_task("custom", dataset=data, reward=path)
        assert task.reward_name == "length_is_answer"
        assert task.reward(["ab", "abcd"], answer=["2", "2"]) == [1.0, 0.0]
        assert task.options["reward"] == path


def test_builtin_reward_names() -> None:
    assert resolve_reward("exact_match") is exact_match
    assert resolve_reward("tokrl.tasks.rewards:exact_match") is exact_match


def test_none_rewards_pass_through(reward_module: str) -> None:
    task = get_task("custom", dataset=datasets.Dataset.from_dict(ROWS), reward=f"{reward_module}:maybe")
    assert task.reward(["?", "x"], answer=["1", "2"]) == [None, 0.5]


@pytest.mark.parametrize(
    ("reward", "error", "message"),
    [
        ("no_such_reward", ValueError, r"expected a dotted path like 'mypkg.rewards:exact_match'"),
        ("not_a_module_xyz.sub:fn", ValueError, r"cannot import module 'not_a_module_xyz.sub'"),
        ("MODULE:missing", ValueError, r"module 'my_rewards_pkg.rewards' has no attribute 'missing'"),
        ("MODULE:NOT_CALLABLE", TypeError, r"'NOT_CALLABLE' is a int, not a callable"),
        (42, TypeError, "reward must be a callable or a dotted path"),
    ],
)
def test_bad_rewards(reward_module: str, reward, error: type[Exception], message: str) -> None:
    if isinstance(reward, str):
        reward = reward.replace("MODULE", reward_module)
    with pytest.raises(error, match=message):
        get_task("custom", dataset=datasets.Dataset.from_dict(ROWS), reward=reward)


def test_missing_column_names_it_and_the_columns_found() -> None:
    data = datasets.Dataset.from_dict({"question": ["q"], "answer": ["a"]})
    with pytest.raises(ValueError, match=r"missing column\(s\) \['prompt'\]; columns found: \['question', 'answer'\]"):
        get_task("custom", dataset=data, reward=exact_match)


def test_required_options() -> None:
    with pytest.raises(ValueError, match="`dataset` is required"):
        get_task("custom", reward=exact_match)
    with pytest.raises(ValueError, match="`reward` is required"):
        get_task("custom", dataset=datasets.Dataset.from_dict(ROWS))


def test_no_test_split_explains_what_to_pass() -> None:
    task = get_task("custom", dataset=datasets.Dataset.from_dict(ROWS), reward=exact_match)
    with pytest.raises(ValueError, match="no test split; pass test_dataset="):
        task.split("test")


def test_dataset_dict_test_split_and_named_split() -> None:
    data = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict(ROWS),
            "test": datasets.Dataset.from_dict({"prompt": ["t"], "answer": ["1"]}),
            "validation": datasets.Dataset.from_dict({"prompt": ["v"], "answer": ["2"]}),
        }
    )
    assert get_task("custom", dataset=data, reward=exact_match).split("test")["prompt"] == ["t"]
    named = get_task("custom", dataset=data, reward=exact_match, test_dataset="validation")
    assert named.split("test")["prompt"] == ["v"]
    with pytest.raises(ValueError, match=r"no split 'dev'; splits found: \['test', 'train', 'validation'\]"):
        get_task("custom", dataset=data, reward=exact_match, test_dataset="dev")


def test_seeded_holdout() -> None:
    data = datasets.Dataset.from_dict(ROWS)
    task = get_task("custom", dataset=data, reward=exact_match, test_size=2)
    again = get_task("custom", dataset=data, reward=exact_match, test_size=0.4)  # 0.4 * 5 rows = 2
    assert task.split("test")["prompt"] == again.split("test")["prompt"]
    assert task.split("train").num_rows == 3 and task.split("test").num_rows == 2
    assert set(task.split("train")["prompt"]) | set(task.split("test")["prompt"]) == set(ROWS["prompt"])
    with pytest.raises(ValueError, match="leaves no train or no test rows out of 5"):
        get_task("custom", dataset=data, reward=exact_match, test_size=5)
    with pytest.raises(ValueError, match="either test_dataset or test_size"):
        get_task("custom", dataset=data, reward=exact_match, test_size=1, test_dataset=data)


@pytest.mark.parametrize("suffix", ["json", "jsonl", "csv", "parquet", "saved"])
def test_local_paths(tmp_path: Path, suffix: str) -> None:
    data = datasets.Dataset.from_dict(ROWS)
    path = tmp_path / f"rows.{suffix}"
    if suffix == "json":
        path.write_text(json.dumps(data.to_list()))  # a plain JSON array, not JSON lines
    elif suffix == "jsonl":
        data.to_json(str(path), lines=True)
    elif suffix == "csv":
        data.to_csv(str(path), index=False)
    elif suffix == "parquet":
        data.to_parquet(str(path))
    else:
        data.save_to_disk(str(path))
    task = get_task("custom", dataset=str(path), reward=exact_match, test_dataset=str(path))
    assert task.split("train")["prompt"] == ROWS["prompt"]
    # CSV reads "10" back as an int; exact_match compares str(answer), so it still scores.
    assert [str(a) for a in task.split("test")["answer"]] == ROWS["answer"]
    assert task.reward(["2", "5"], answer=task.split("train")["answer"][:2]) == [1.0, 0.0]


def test_local_folder_of_data_files(tmp_path: Path) -> None:
    datasets.Dataset.from_dict(ROWS).to_json(str(tmp_path / "train.jsonl"), lines=True)
    datasets.Dataset.from_dict({"prompt": ["t"], "answer": ["1"]}).to_json(str(tmp_path / "test.jsonl"), lines=True)
    task = get_task("custom", dataset=str(tmp_path), reward=exact_match)
    assert task.split("train").num_rows == 5 and task.split("test")["prompt"] == ["t"]


def test_unsupported_suffix_and_missing_path(tmp_path: Path) -> None:
    (tmp_path / "rows.txt").write_text("x")
    with pytest.raises(ValueError, match="unsupported suffix"):
        get_task("custom", dataset=str(tmp_path / "rows.txt"), reward=exact_match)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        get_task("custom", dataset=str(tmp_path / "missing.parquet"), reward=exact_match)


def test_hub_id_offline_error() -> None:
    with pytest.raises(ConnectionError, match=r"'someone/qa-pairs'.*Hub could not be reached.*local path"):
        get_task("custom", dataset="someone/qa-pairs", reward=exact_match)


def test_trl_style_arguments() -> None:
    seen = {}

    def trl_reward(prompts, completions, **kwargs):  # TRL passes prompts=, completions= and the columns
        seen.update(prompts=prompts, keys=sorted(kwargs))
        return [0.0] * len(completions)

    def narrow(completions, answer):  # no **kwargs: only the arguments it names
        return [1.0] * len(completions)

    def needs_missing(completions, solution):
        return [1.0] * len(completions)

    data = datasets.Dataset.from_dict(ROWS)
    get_task("custom", dataset=data, reward=trl_reward).reward(["a"], prompt=["p"], answer=["x"])
    assert seen == {"prompts": ["p"], "keys": ["answer", "prompt"]}
    assert get_task("custom", dataset=data, reward=narrow).reward(["a"], prompt=["p"], answer=["x"]) == [1.0]
    with pytest.raises(ValueError, match=r"needs argument\(s\) \['solution'\], which are not columns"):
        get_task("custom", dataset=data, reward=needs_missing).reward(["a"], answer=["x"])


@pytest.mark.parametrize(
    ("returned", "error", "message"),
    [
        ([1.0], ValueError, "returned 1 rewards for 2 completions"),
        (["yes", 1.0], TypeError, "rewards must be numbers or None"),
        (None, TypeError, "returned None instead of a list"),
        (0.5, RewardError, r"returned 0\.5 instead of a list of rewards \(a float"),
        ("1.0", RewardError, "returned '1.0' instead of a list of rewards"),
        ([float("nan"), 1.0], RewardError, "rewards must be finite numbers or None, got nan"),
    ],
    ids=["count", "type", "none", "scalar", "string", "nan"],
)
def test_bad_reward_outputs(returned, error: type[Exception], message: str) -> None:
    def bad(completions, **kwargs):
        return returned

    task = get_task("custom", dataset=datasets.Dataset.from_dict(ROWS), reward=bad)
    with pytest.raises(error, match=message):
        task.reward(["a", "b"], answer=["1", "2"])
