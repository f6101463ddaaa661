"""Reward parsing on tricky strings; every expected value is worked out by hand from the rules in rewards.py."""

from __future__ import annotations

import pytest

from tokrl.tasks.rewards import (
    exact_match,
    final_integer,
    final_number,
    format_number,
    multiplication_exact,
    parse_gold,
    svamp_accuracy,
)

FINAL_NUMBER_CASES = [
    ("The answer is 1,200.", 1200.0),  # thousands separator; trailing period is not a decimal point
    ("answer: -3", -3.0),  # sign right before the digits
    ("#### 42", 42.0),
    ("####42", 42.0),
    ("3.0", 3.0),
    ("3.00001", 3.00001),
    ("no number", None),
    ("", None),
    ("12 apples and 5 oranges: 17", 17.0),  # no marker: the last number
    ("answer: 7 (because 3+4)", 7.0),  # marker: the number right after it, not the last one
    ("ANSWER : 8", 8.0),  # marker is case-insensitive, spaces before the colon allowed
    ("answer:\n  17", 17.0),  # the number may start on the next line
    ("answer: 8\nQuestion: Tom has 3 pens.\nanswer: 3", 8.0),  # first marker: base models ramble on
    ("answer: unknown\nthen 6 left", 6.0),  # marker without a number on its line: last number
    ("1e3", 1000.0),  # decided: scientific notation is a number
    ("2.5E-2", 0.025),
    ("4,5", 5.0),  # decided: a comma without three digits after it separates two numbers, "4,5" is 4 then 5
    ("1,2345", 2345.0),  # same rule: not "1,234" + "5"
    ("abc123", None),  # digits glued to a word are not a number
    ("mp3 player costs 5", 5.0),
    ("5kg", 5.0),  # letters after the digits are fine (units)
    ("It is 5.", 5.0),
    ("10-3", 3.0),  # a minus after a digit is an operator
    ("x =-3", -3.0),
    ("\u22124", -4.0),  # Unicode minus sign
    ("$1,200.50 in total", 1200.5),
    ("costs .5 dollars", 0.5),
    ("1e999", None),  # overflows to inf: no usable number
    ("3/4", 4.0),  # fractions are not evaluated
]


@pytest.mark.parametrize(("text", "expected"), FINAL_NUMBER_CASES, ids=[repr(t) for t, _ in FINAL_NUMBER_CASES])
def test_final_number(text: str, expected: float | None) -> None:
    assert final_number(text) == expected


SVAMP_CASES = [
    ("The answer is 1,200.", "1200", 1.0),
    ("answer: -3", "-3", 1.0),
    ("answer: -3", "3", 0.0),
    ("#### 42", "42", 1.0),
    ("3.0", "3", 1.0),
    ("3.00001", "3", 1.0),  # |diff| = 1e-5 <= 1e-4
    ("3.0002", "3", 0.0),  # |diff| = 2e-4 > 1e-4
    ("2.99995", "3", 1.0),
    ("no number", "0", 0.0),  # no number scores 0 even against an answer of 0
    ("", "0", 0.0),
    ("17", "7", 0.0),  # never substring matching
    ("7", "17", 0.0),
    ("The total is 17 apples", "17", 1.0),
    ("answer: 7 (because 3+4)", "7", 1.0),
    ("answer: 7 (because 3+4)", "4", 0.0),
    ("0.5", "0.5", 1.0),
    ("1e3", "1000", 1.0),
]


@pytest.mark.parametrize(("completion", "answer", "expected"), SVAMP_CASES)
def test_svamp_accuracy_single(completion: str, answer: str, expected: float) -> None:
    assert svamp_accuracy([completion], answer=[answer]) == [expected]


def test_svamp_accuracy_is_vectorised_and_accepts_numeric_gold() -> None:
    completions = ["answer: 51", "52", "", "answer: 51.0"]
    assert svamp_accuracy(completions, answer=[51.0, "51", 51, "51"]) == [1.0, 0.0, 0.0, 1.0]
    assert svamp_accuracy([], answer=[]) == []


def test_svamp_accuracy_ignores_other_columns_and_reads_chat_messages() -> None:
    chat = [[{"role": "assistant", "content": "answer: 9"}]]  # TRL's conversational completion
    assert svamp_accuracy(chat, answer=["9"], prompt=["q"], Type=["Addition"]) == [1.0]


def test_reward_errors() -> None:
    with pytest.raises(ValueError, match="needs an 'answer' column"):
        svamp_accuracy(["1"])
    with pytest.raises(ValueError, match="2 completions but 1 answers"):
        svamp_accuracy(["1", "2"], answer=["1"])
    with pytest.raises(ValueError, match="'seven' is not a number"):
        svamp_accuracy(["7"], answer=["seven"])
    with pytest.raises(TypeError, match="must be a string"):
        svamp_accuracy([7], answer=["7"])


FINAL_INTEGER_CASES = [
    ("56088", 56088),
    ("x=5, so 10", 5),  # the first integer after the last "="
    ("123*456=56088", 56088),
    ("12*3=36, 36*2=72", 72),
    ("the product is 56,088.", 56088),
    ("56088=", 56088),  # nothing after the last "=": fall back to the last integer
    ("= 56088.0", None),  # decided: a decimal is not an exact integer answer
    ("5.6e4", None),
    ("-12", -12),
    ("abc56088", None),
    ("", None),
    ("no digits", None),
]


@pytest.mark.parametrize(("text", "expected"), FINAL_INTEGER_CASES, ids=[repr(t) for t, _ in FINAL_INTEGER_CASES])
def test_final_integer(text: str, expected: int | None) -> None:
    assert final_integer(text) == expected


def test_multiplication_exact() -> None:
    completions = ["56088", " 56088\n", "56089", "560880", "5608", "x=5, so 56088", "", "56088.0"]
    assert multiplication_exact(completions, answer=["56088"] * len(completions)) == [
        1.0,
        1.0,
        0.0,
        0.0,
        0.0,
        0.0,
        0.0,
        0.0,
    ]


def test_multiplication_exact_is_exact_beyond_float_precision() -> None:
    product = 123456789012 * 987654321098  # 24 digits: float64 cannot tell it from product + 1
    assert float(product) == float(product + 1)
    assert multiplication_exact([str(product), str(product + 1)], answer=[str(product)] * 2) == [1.0, 0.0]


def test_exact_match() -> None:
    assert exact_match([" Paris\n", "paris", "Paris!"], answer=["Paris"] * 3) == [1.0, 0.0, 0.0]


@pytest.mark.parametrize(
    ("value", "expected"), [(51.0, "51"), ("51.0", "51"), (0.5, "0.5"), ("1,200.0", "1200"), (-3.0, "-3"), (7, "7")]
)
def test_format_number(value: object, expected: str) -> None:
    assert format_number(value) == expected


def test_parse_gold_rejects_bool() -> None:
    with pytest.raises(ValueError, match="not a number"):
        parse_gold(True)
