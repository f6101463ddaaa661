"""Multiplication: operand digit counts, disjoint deterministic splits, sizes, prompts and reward."""

from __future__ import annotations

import pytest

from tokrl.tasks import get_task


def pairs(task, split: str) -> list[tuple[int, int]]:
    return [tuple(int(x) for x in prompt.split("*")) for prompt in task.split(split)["prompt"]]


@pytest.mark.parametrize(("digits_a", "digits_b"), [(1, 1), (2, 3), (3, 3), (4, 2)])
def test_digit_counts_and_products(digits_a: int, digits_b: int) -> None:
    task = get_task("multiplication", digits_a=digits_a, digits_b=digits_b, train_size=60, test_size=20)
    for split in ("train", "test"):
        rows = task.split(split)
        for (a, b), answer in zip(pairs(task, split), rows["answer"], strict=True):
            # Exactly digits_a / digits_b digits, so the leading digit is non-zero.
            assert len(str(a)) == digits_a and len(str(b)) == digits_b
            assert answer == str(a * b)


def test_defaults_and_options() -> None:
    task = get_task("multiplication")
    assert task.options == {
        "template": "{prompt}=",
        "digits_a": 3,
        "digits_b": 3,
        "seed": 0,
        "train_size": 10_000,
        "test_size": 500,
    }
    assert (task.split("train").num_rows, task.split("test").num_rows) == (10_000, 500)
    assert task.reward_name == "multiplication_exact"


def test_splits_disjoint_without_duplicates() -> None:
    task = get_task("multiplication", digits_a=2, digits_b=2, train_size=3000, test_size=500)
    train, test = pairs(task, "train"), pairs(task, "test")
    assert len(set(train)) == 3000 and len(set(test)) == 500
    assert not set(train) & set(test)


def test_dense_request_uses_the_whole_space() -> None:
    # 1x1 digits: 9 * 9 = 81 ordered pairs; defaults test = 81 // 5 = 16 and train = 81 - 16 = 65.
    task = get_task("multiplication", digits_a=1, digits_b=1)
    assert (task.options["train_size"], task.options["test_size"]) == (65, 16)
    everything = set(pairs(task, "train")) | set(pairs(task, "test"))
    assert everything == {(a, b) for a in range(1, 10) for b in range(1, 10)}


def test_deterministic_and_seeded() -> None:
    first = get_task("multiplication", seed=3, train_size=50, test_size=10)
    again = get_task("multiplication", seed=3, train_size=50, test_size=10)
    other = get_task("multiplication", seed=4, train_size=50, test_size=10)
    assert first.split("train")["prompt"] == again.split("train")["prompt"]
    assert first.split("test")["prompt"] == again.split("test")["prompt"]
    assert first.split("test")["prompt"] != other.split("test")["prompt"]


def test_test_set_does_not_depend_on_train_size() -> None:
    small = get_task("multiplication", train_size=10, test_size=20)
    large = get_task("multiplication", train_size=1000, test_size=20)
    assert small.split("test")["prompt"] == large.split("test")["prompt"]


def test_space_too_small_names_the_count() -> None:
    with pytest.raises(ValueError, match=r"only 81 distinct \(a, b\) pairs .* = 70 \+ 20 = 90"):
        get_task("multiplication", digits_a=1, digits_b=1, train_size=70, test_size=20)
    get_task("multiplication", digits_a=1, digits_b=1, train_size=61, test_size=20)  # exactly 81 fits


@pytest.mark.parametrize(
    "options", [{"digits_a": 0}, {"digits_b": -1}, {"digits_a": 2.0}, {"train_size": 0}, {"test_size": True}]
)
def test_bad_options(options: dict) -> None:
    with pytest.raises(ValueError, match="must be a positive integer"):
        get_task("multiplication", **options)


def test_prompt_and_reference() -> None:
    task = get_task("multiplication", train_size=5, test_size=5)
    assert task.format_prompt("123*456") == "123*456="
    assert task.reference_completion({"prompt": "123*456", "answer": "56088"}) == "56088"
    row = task.split("train")[0]
    assert task.format_prompt(row["prompt"]).endswith("=") and "*" in row["prompt"]
    assert (
        get_task("multiplication", template="Compute {prompt} =", train_size=1, test_size=1).format_prompt("2*3")
        == "Compute 2*3 ="
    )


def test_reward_on_generated_rows() -> None:
    task = get_task("multiplication", train_size=8, test_size=2)
    rows = task.split("train")
    answers = rows["answer"]
    right = [task.reference_completion(row) for row in rows]
    off_by_one = [str(int(answer) + 1) for answer in answers]
    assert task.reward(right, answer=answers, prompt=rows["prompt"]) == [1.0] * 8
    assert task.reward(off_by_one, answer=answers) == [0.0] * 8
    assert task.reward(["x=5, so 10", "x=10, so 5"], answer=["5", "5"]) == [1.0, 0.0]


def test_long_operands_stay_exact() -> None:
    task = get_task("multiplication", digits_a=12, digits_b=12, train_size=3, test_size=2)
    (a, b) = pairs(task, "test")[0]
    product = a * b
    assert task.split("test")["answer"][0] == str(product) and len(str(product)) >= 23
    assert task.reward([str(product), str(product - 1)], answer=[str(product)] * 2) == [1.0, 0.0]


def test_reward_column_length_mismatch() -> None:
    task = get_task("multiplication", train_size=1, test_size=1)
    with pytest.raises(ValueError, match="column 'answer' must be a list aligned with the 2 completions"):
        task.reward(["1", "2"], answer=["1"])
