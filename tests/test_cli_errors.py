"""Bad input to `tokrl` ends in one line naming the cause (no traceback): YAML syntax, dataset files,
rewards, eval flags, a missing adapter; and a reward module in the working directory imports from the
`tokrl` console script as it does from `python -m tokrl`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import tokrl.models.adapters as adapters_module
from tokrl.cli import EXIT_CONFIG_ERROR, main

ROWS = [{"prompt": f"{a}+{a}=", "answer": str(2 * a)} for a in range(1, 9)]
EVAL = ["eval", "--model", "tiny", "--task", "multiplication", "--max-new-tokens", "2", "--device", "cpu"]


def _error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def _write_rows(path: Path, rows=ROWS) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture
def cwd_on_path(tmp_path, monkeypatch):
    """Run in tmp_path; `main` may put it on sys.path, so sys.path and imported modules are restored."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", os.getcwd())])
    yield tmp_path


def test_yaml_syntax_error_in_config_file(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("steps: 10\nlora: {r: 8\nlr: 0.1\n")
    assert main(["train", "--config", str(config), "--output-dir", str(tmp_path / "o")]) == EXIT_CONFIG_ERROR
    err = _error(capsys)
    assert f"config: {str(config)!r} is not valid YAML" in err and "line 3" in err


def test_yaml_syntax_error_in_task_options(tmp_path, capsys):
    assert main(["train", "--task-options", "{digits_a: [2", "--output-dir", str(tmp_path)]) == EXIT_CONFIG_ERROR
    assert "task_options: cannot parse '{digits_a: [2' as YAML" in _error(capsys)
    assert main([*EVAL, "--task-options", "{digits_a: 2"]) == EXIT_CONFIG_ERROR
    assert "task_options: cannot parse '{digits_a: 2' as YAML (" in _error(capsys)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--limit", "-5"], "--limit: must be >= 1, got -5"),
        (["--batch-size", "0"], "--batch-size: must be >= 1, got 0"),
        (["--device", "garbage"], "device: expected auto, cpu, cuda or cuda:N, got 'garbage'"),
        (["--model", "./no/such/model"], "model: unknown './no/such/model'"),
    ],
    ids=["limit", "batch-size", "device", "model"],
)
def test_eval_flags(capsys, args, message):
    assert main([*EVAL, *args]) == EXIT_CONFIG_ERROR
    assert message in _error(capsys)


def test_eval_missing_local_adapter_fails_before_loading(tmp_path, capsys, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("the model must not load (and the hub must not be asked) for a missing adapter")

    monkeypatch.setattr("tokrl.models.adapters.load_model", never)
    for adapter in (str(tmp_path / "run" / "checkpoint-3"), "checkpoint-3", "./runs/x"):
        assert main([*EVAL, "--adapter", adapter]) == EXIT_CONFIG_ERROR
        assert f"adapter: {adapter!r} does not exist" in _error(capsys)
    assert not adapters_module.missing_local_path("org/adapter-on-the-hub")  # may be a hub id


def _custom(dataset: str, reward: str, *extra: str) -> list[str]:
    options = f"{{dataset: {dataset}, reward: '{reward}', test_size: 2}}"
    return [
        "train",
        "--task",
        "custom",
        "--task-options",
        options,
        "--sft-steps",
        "0",
        "--steps",
        "1",
        "--prompts-per-step",
        "2",
        "--num-generations",
        "2",
        "--max-new-tokens",
        "2",
        "--progress",
        "false",
        *extra,
    ]


def test_empty_dataset_file(cwd_on_path, capsys):
    (cwd_on_path / "empty.jsonl").write_text("\n")
    assert main(_custom("empty.jsonl", "exact_match", "--output-dir", "o")) == EXIT_CONFIG_ERROR
    assert "dataset file 'empty.jsonl' is empty" in _error(capsys)


def test_bad_json_line_names_file_and_line(cwd_on_path, capsys):
    path = _write_rows(cwd_on_path / "rows.jsonl")
    lines = path.read_text().splitlines()
    lines[2] = '{"prompt": "3+3=", "answer": 6'  # missing brace on line 3
    path.write_text("\n".join(lines) + "\n")
    assert main(_custom("rows.jsonl", "exact_match", "--output-dir", "o")) == EXIT_CONFIG_ERROR
    assert "dataset file 'rows.jsonl', line 3: not valid JSON (" in _error(capsys)


def test_non_callable_reward(cwd_on_path, capsys):
    _write_rows(cwd_on_path / "rows.jsonl")
    (cwd_on_path / "rewards_not_callable.py").write_text("score = 3\n")
    code = main(_custom("rows.jsonl", "rewards_not_callable:score", "--output-dir", "o"))
    assert code == EXIT_CONFIG_ERROR
    assert "reward 'rewards_not_callable:score': 'score' is a int, not a callable" in _error(capsys)


def test_reward_returning_the_wrong_type_is_one_line(cwd_on_path, capsys):
    _write_rows(cwd_on_path / "rows.jsonl")
    (cwd_on_path / "rewards_scalar.py").write_text("def score(completions, **kw):\n    return 1.0\n")
    code = main(_custom("rows.jsonl", "rewards_scalar:score", "--output-dir", "o", "--eval-size", "2"))
    assert code == 1
    assert "score: returned 1.0 instead of a list of rewards (a float;" in _error(capsys)


def test_reward_module_in_cwd_imports_from_the_console_script(tmp_path):
    script = Path(sys.executable).parent / "tokrl"
    assert script.is_file(), "the editable install provides the tokrl console script"
    _write_rows(tmp_path / "rows.jsonl")
    (tmp_path / "cwd_reward.py").write_text("def score(completions, **kw):\n    return [0.5] * len(completions)\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONWARNINGS": "ignore"}
    done = subprocess.run(
        [
            str(script),
            "eval",
            "--model",
            "tiny",
            "--task",
            "custom",
            "--task-options",
            "{dataset: rows.jsonl, reward: 'cwd_reward:score'}",
            "--split",
            "train",
            "--limit",
            "2",
            "--max-new-tokens",
            "2",
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["n"] == 2 and result["mean_reward"] == 0.5
