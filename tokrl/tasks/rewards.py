"""Verifiable rewards: find the final number of a completion and compare it with the gold answer.

Every reward here follows TRL's contract, `fn(completions: list[str], **columns) -> list[float]`, with the
columns (e.g. `answer=[...]`) aligned with `completions`, so these functions plug into TRL unchanged.

What counts as a number (`NUMBER`), decided once for every task:
- an optional sign right before the digits ("-3", "+3", the Unicode minus "−3"); a sign glued to a word or
  digit is an operator, not a sign ("10-3" reads 10 and 3);
- digits with optional thousands separators: a comma followed by exactly three digits ("1,200" = 1200);
  any other comma separates two numbers ("4,5" = 4 and 5, a list; decimal commas are not supported);
- an optional decimal part (".5", "3.25"); a trailing sentence period is not part of it ("3." = 3);
- an optional exponent ("1e3" = 1000, "2.5E-2" = 0.025), since models do write that form;
- never inside a word: digits right after a letter, digit, "_" or "." do not start a number ("mp3", "x2"),
  so "abc123" holds no number. Letters after the digits are fine ("5kg", "2nd" read 5 and 2).
Fractions and expressions are not evaluated ("1/2" reads 1 and 2). Matching is always numeric, never by
substring, so "17" does not match an answer of 7.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

TOLERANCE = 1e-4  # absolute tolerance of the numeric comparison (paper.md, Tasks)

NUMBER = re.compile(
    r"(?<![\w.])"  # not inside a word or right after a decimal point
    r"(?P<sign>[-+\u2212])?"
    r"(?P<body>(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)"
    r"(?P<exp>[eE][-+]?\d+)?"
    r"(?!\d)"  # "1,2345" must not read as "1,234" followed by a stray 5
)

# "answer:" (any case, optional spaces before the colon) or the GSM8K-style "####".
ANSWER_MARKER = re.compile(r"\banswer\s*:|#{4}", re.IGNORECASE)


def _value(match: re.Match[str]) -> float:
    sign = "-" if match["sign"] in ("-", "\u2212") else ""
    return float(sign + match["body"].replace(",", "") + (match["exp"] or ""))


def _text(completion: Any) -> str:
    """A completion's text; conversational completions (TRL's list of messages) give their last message."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content", ""))
    raise TypeError(f"a completion must be a string (or a list of chat messages), got {type(completion).__name__}")


def final_number(text: str) -> float | None:
    """The number a completion answers with, or None when it holds none.

    The first "answer:" or "####" marker followed by a number on the rest of its line wins (the number
    right after it, so "answer: 7 (because 3+4)" is 7). The first marker, not the last, because base models
    often ramble on into a made-up next question with its own "answer:". Without such a marker, the last
    number in the text. Non-finite values ("1e999") count as no number.
    """
    for marker in ANSWER_MARKER.finditer(text):
        line = text[marker.end() :].lstrip().split("\n", 1)[0]
        match = NUMBER.search(line)
        if match is not None:
            value = _value(match)
            return value if math.isfinite(value) else None
    matches = list(NUMBER.finditer(text))
    if not matches:
        return None
    value = _value(matches[-1])
    return value if math.isfinite(value) else None


def final_integer(text: str) -> int | None:
    """The integer a multiplication completion answers with, or None.

    The first number after the last "=" ("x=5, so 10" is 5), failing that the last number in the text.
    Thousands separators are accepted ("56,088"); the chosen number must be written as an integer, so
    "56088.0" or "5.6e4" give None rather than a rounded guess. Parsed with int(), exact at any length.
    """
    head, equals, tail = text.rpartition("=")
    match = NUMBER.search(tail) if equals else None
    if match is None:
        matches = list(NUMBER.finditer(text))
        match = matches[-1] if matches else None
    if match is None or "." in match["body"] or match["exp"]:
        return None
    sign = "-" if match["sign"] in ("-", "\u2212") else ""
    return int(sign + match["body"].replace(",", ""))


def format_number(value: Any) -> str:
    """Canonical answer text: integers without a trailing ".0" (51.0 -> "51"), other numbers as repr."""
    number = parse_gold(value)
    if number.is_integer():
        return str(int(number))
    return repr(number)


def parse_gold(answer: Any) -> float:
    """A gold answer (number or numeric string, commas allowed) as a float; a clear error otherwise."""
    if isinstance(answer, bool):
        raise ValueError(f"gold answer {answer!r} is not a number")
    if isinstance(answer, int | float):
        return float(answer)
    try:
        return float(str(answer).strip().replace(",", ""))
    except ValueError:
        raise ValueError(f"gold answer {answer!r} is not a number") from None


def _aligned(name: str, completions: Sequence[Any], answer: Sequence[Any] | None) -> Sequence[Any]:
    if answer is None:
        raise ValueError(f"{name}: needs an 'answer' column aligned with the completions")
    if len(answer) != len(completions):
        raise ValueError(f"{name}: {len(completions)} completions but {len(answer)} answers")
    return answer


def svamp_accuracy(completions: Sequence[Any], answer: Sequence[Any] | None = None, **columns: Any) -> list[float]:
    """1.0 where the completion's final number equals the answer within TOLERANCE, else 0.0."""
    answer = _aligned("svamp_accuracy", completions, answer)
    scores = []
    for completion, gold in zip(completions, answer, strict=True):
        predicted = final_number(_text(completion))
        correct = predicted is not None and abs(predicted - parse_gold(gold)) <= TOLERANCE
        scores.append(1.0 if correct else 0.0)
    return scores


def multiplication_exact(
    completions: Sequence[Any], answer: Sequence[Any] | None = None, **columns: Any
) -> list[float]:
    """1.0 where the completion's final integer (see `final_integer`) is exactly the product, else 0.0."""
    answer = _aligned("multiplication_exact", completions, answer)
    scores = []
    for completion, gold in zip(completions, answer, strict=True):
        predicted = final_integer(_text(completion))
        scores.append(1.0 if predicted is not None and predicted == int(str(gold).strip()) else 0.0)
    return scores


def exact_match(completions: Sequence[Any], answer: Sequence[Any] | None = None, **columns: Any) -> list[float]:
    """1.0 where the completion equals str(answer) after stripping surrounding whitespace, else 0.0."""
    answer = _aligned("exact_match", completions, answer)
    return [
        1.0 if _text(completion).strip() == str(gold).strip() else 0.0
        for completion, gold in zip(completions, answer, strict=True)
    ]


# Built-in rewards a custom task may name instead of giving a callable or a dotted path.
REWARDS = {fn.__name__: fn for fn in (svamp_accuracy, multiplication_exact, exact_match)}
