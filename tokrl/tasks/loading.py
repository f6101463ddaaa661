"""Turn a dataset source (in-memory dataset, local path or hub id) into a `datasets` object.

Local paths are tried before hub ids, so a folder named like "user/data" in the working directory wins.
A string that looks like a file path (a data-file suffix, a leading "." "/" or "~", or more than one "/")
but does not exist is reported as a missing file, never sent to the hub. Hub failures caused by no
network name the dataset id, say the hub could not be reached, and suggest the offline alternatives.
A file or folder `datasets` cannot read (not UTF-8, a CSV with an unclosed quote or only a header, a corrupt
parquet file, a folder of unrelated files) is one ValueError naming it and the reader's own reason.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import datasets

from tokrl.infra.hub import looks_like_path

# Suffix -> `datasets` packaged builder.
BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}

DatasetSource = datasets.Dataset | datasets.DatasetDict | str | os.PathLike


def load_source(source: DatasetSource, *, hint: str) -> datasets.Dataset | datasets.DatasetDict:
    """Load `source`; `hint` is the offline alternative named in a hub error (e.g. "pass a local path")."""
    if isinstance(source, datasets.Dataset | datasets.DatasetDict):
        return source
    if not isinstance(source, str | os.PathLike):
        raise TypeError(
            f"dataset must be a datasets.Dataset, a DatasetDict, a local path or a hub id, got {type(source).__name__}"
        )
    path = Path(source).expanduser()
    if path.is_dir():
        return _load_dir(path)
    if path.is_file():
        builder = BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise ValueError(f"dataset file {str(path)!r}: unsupported suffix; expected one of {sorted(BUILDERS)}")
        check_data_file(path)
        return _reading(
            f"dataset file {str(path)!r}", f"as {builder}", datasets.load_dataset, builder, data_files=str(path)
        )
    text = os.fspath(source)
    if isinstance(source, os.PathLike) or _looks_like_path(text):
        raise FileNotFoundError(f"dataset path {text!r} does not exist")
    return load_hub(text, hint=hint)


def check_data_file(path: Path) -> None:
    """Refuse an empty data file, and a JSON file that is neither one JSON document nor JSON Lines (naming
    the first bad line), before `datasets` turns either into a long traceback."""
    if path.suffix.lower() == ".parquet":
        if path.stat().st_size == 0:
            raise ValueError(f"dataset file {str(path)!r} is empty")
        return
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise ValueError(
            f"dataset file {str(path)!r}, line {line}: not UTF-8 text (byte {data[err.start]:#04x}); save it as UTF-8"
        ) from None
    if not text.strip():
        raise ValueError(f"dataset file {str(path)!r} is empty; it needs rows with 'prompt' and 'answer' columns")
    if BUILDERS[path.suffix.lower()] == "csv" and len([line for line in text.splitlines() if line.strip()]) < 2:
        raise ValueError(f"dataset file {str(path)!r} has a header but no rows")
    if BUILDERS[path.suffix.lower()] != "json":
        return
    try:
        json.loads(text)  # one document (a list of rows, or a mapping of columns)
        return
    except json.JSONDecodeError:
        pass
    for number, line in enumerate(text.splitlines(), start=1):  # else JSON Lines: one row object per line
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"dataset file {str(path)!r}, line {number}: not valid JSON ({err.msg})") from None
        if not isinstance(row, dict):
            raise ValueError(
                f"dataset file {str(path)!r}, line {number}: expected a JSON object (one row), got {line!r:.60}"
            )


def _looks_like_path(text: str) -> bool:
    return Path(text).suffix.lower() in BUILDERS or looks_like_path(text)


def _load_dir(path: Path) -> datasets.Dataset | datasets.DatasetDict:
    # `save_to_disk` writes state.json (Dataset) or dataset_dict.json (DatasetDict); any other folder is a
    # folder of data files that `load_dataset` can read by convention (train.json, test.csv, ...).
    what = f"dataset folder {str(path)!r}"
    if (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():
        return _reading(what, "with datasets.load_from_disk", datasets.load_from_disk, str(path))
    return _reading(
        what,
        "as data files (expected files of one format and the same columns, e.g. train.jsonl and test.jsonl)",
        datasets.load_dataset,
        str(path),
    )


def _reading(what: str, how: str, load: Any, *args: Any, **kwargs: Any) -> Any:
    """`load(*args, **kwargs)`, with an error `datasets` raises about the data (a wrapper around the reader's
    own exception) turned into one ValueError naming `what` and the innermost reason."""
    try:
        return load(*args, **kwargs)
    except (ConnectionError, FileNotFoundError):
        raise
    except Exception as err:  # noqa: BLE001 (pandas, pyarrow and datasets each raise their own types)
        cause: BaseException = err
        while cause.__cause__ is not None or cause.__context__ is not None:
            cause = cause.__cause__ or cause.__context__
        lines = [line for line in str(cause).splitlines() if line.strip()] or [type(cause).__name__]
        reason = (lines[0] + (f" ... {lines[-1]}" if len(lines) > 1 else ""))[:300]  # CastError ends with its "because"
        raise ValueError(f"{what}: cannot be read {how} ({type(cause).__name__}: {reason})") from err


def load_hub(dataset_id: str, *, hint: str) -> datasets.DatasetDict:
    """`datasets.load_dataset(dataset_id)` with a clear error when the hub cannot be reached."""
    try:
        return datasets.load_dataset(dataset_id)
    except (ConnectionError, TimeoutError) as error:
        # datasets raises ConnectionError both offline (HF_HUB_OFFLINE=1) and when requests fail.
        raise ConnectionError(
            f"could not load dataset {dataset_id!r}: the Hugging Face Hub could not be reached ({error}). "
            f"Work offline instead: {hint}."
        ) from error
    except datasets.exceptions.DatasetNotFoundError as error:
        raise ValueError(
            f"dataset {dataset_id!r} is neither a local path nor a dataset on the Hugging Face Hub ({error})"
        ) from error


def pick_split(
    data: datasets.Dataset | datasets.DatasetDict, split: str, *, what: str, or_only: bool = False
) -> datasets.Dataset:
    """Split `split` of `data`; a plain Dataset is its own only split. With `or_only`, a dict holding a
    single split gives that one (a data file loads as {"train": ...} whatever it holds)."""
    if isinstance(data, datasets.Dataset):
        return data
    if or_only and split not in data and len(data) == 1:
        return next(iter(data.values()))
    if split not in data:
        raise ValueError(f"{what}: no split {split!r}; splits found: {sorted(data)}")
    return data[split]


def seeded_permutation(n: int, seed: int) -> list[int]:
    """A permutation of range(n) fixed by `seed` for good.

    Fisher-Yates driven by `random.Random(seed).random()` only: Python guarantees that stream across
    versions, unlike `shuffle`/`randrange`, so a published split never drifts with the interpreter.
    """
    rng = random.Random(seed)
    order = list(range(n))
    for i in range(n - 1, 0, -1):
        j = int(rng.random() * (i + 1))
        order[i], order[j] = order[j], order[i]
    return order


def describe(value: Any) -> Any:
    """A plain, serialisable stand-in for an option value (checkpoints store options as config)."""
    if isinstance(value, datasets.Dataset):
        return f"<in-memory Dataset: {value.num_rows} rows, columns {value.column_names}>"
    if isinstance(value, datasets.DatasetDict):
        return f"<in-memory DatasetDict: splits {sorted(value)}>"
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if callable(value):
        module, qualname = getattr(value, "__module__", None), getattr(value, "__qualname__", None)
        if module and qualname and "<" not in qualname:
            return f"{module}:{qualname}"
        return f"<callable {getattr(value, '__name__', type(value).__name__)}>"
    return value
