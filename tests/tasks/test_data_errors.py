"""Dataset files and columns that `datasets` cannot read, or that break a prompt or a reward later, are one
error naming the file (or row) when the task is built: non-UTF-8 CSV and JSONL, a CSV with an
unclosed quote or only a header, a corrupt parquet file, a folder of unrelated files, an int or null prompt,
and a reward whose signature needs a column the data lacks (that one used to fail at the first evaluation)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tokrl.tasks import get_task

ROWS = [{"prompt": f"{a}+{a}=", "answer": str(2 * a)} for a in range(1, 9)]


def _jsonl(path: Path, rows=ROWS) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _unrelated_folder(path: Path) -> Path:
    path.mkdir()
    (path / "a.json").write_text('{"x": 1}\n')
    (path / "b.json").write_text('{"y": "s", "z": 2}\n')
    return path


FILES = [
    ("rows.csv", b'prompt,answer\n"1+1=,2\n2+2=,4\n', r"rows.csv': cannot be read as csv \(ParserError: .*EOF inside"),
    ("rows.csv", b"prompt,answer\n\xff\xfe1+1=,2\n", r"rows.csv', line 2: not UTF-8 text \(byte 0xff\)"),
    ("rows.csv", b"prompt,answer\n", r"rows.csv' has a header but no rows"),
    (
        "rows.jsonl",
        b'{"prompt": "1+1=", "answer": "2"}\n{"prompt": "\xff", "answer": "1"}\n',
        r"rows.jsonl', line 2: not UTF-8 text",
    ),
    ("rows.parquet", b"PAR1 this is not parquet", r"rows.parquet': cannot be read as parquet \(ArrowInvalid: "),
]


@pytest.mark.parametrize(
    ("name", "data", "message"), FILES, ids=["unclosed-quote", "csv-latin1", "header-only", "jsonl-latin1", "parquet"]
)
def test_unreadable_data_file_is_named(tmp_path, name, data, message):
    (tmp_path / name).write_bytes(data)
    with pytest.raises(ValueError, match=message):
        get_task("custom", dataset=str(tmp_path / name), reward="exact_match", test_size=1)


def test_folder_of_unrelated_files(tmp_path):
    folder = _unrelated_folder(tmp_path / "data")
    with pytest.raises(ValueError, match=r"dataset folder .*data': cannot be read as data files .*CastError.*because"):
        get_task("custom", dataset=str(folder), reward="exact_match")


@pytest.mark.parametrize("bad", [5, None], ids=["int", "null"])
def test_prompt_that_is_not_text_names_the_row(tmp_path, bad):
    # `replace() argument 2 must be str, not int` named neither the row nor the column.
    rows = [*ROWS[:3], {"prompt": bad, "answer": "1"}, *ROWS[3:]]
    path = _jsonl(tmp_path / "rows.jsonl", rows)
    with pytest.raises(ValueError, match=rf"custom train split: row 3 of column 'prompt' is {bad!r} \(type "):
        get_task("custom", dataset=str(path), reward="exact_match")


def test_reward_needing_a_missing_column_fails_when_the_task_is_built(tmp_path):
    def needs_solution(completions, solution):
        return [0.0] * len(completions)

    path = _jsonl(tmp_path / "rows.jsonl")
    with pytest.raises(ValueError, match=r"reward 'needs_solution' needs argument\(s\) \['solution'\]"):
        get_task("custom", dataset=str(path), reward=needs_solution, test_size=2)
