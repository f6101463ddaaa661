"""`tokrl eval` reads what the adapter records: its base model (a mismatched --model is refused: it
used to exit 0 on the wrong base), the run's task settings as defaults (the task's own defaults, 3x3 digits and
200 new tokens, scored 0% on an adapter trained on 3x1), and damaged adapters and a checkpoint passed as
--model are one line each instead of a hub lookup or a tokenizer traceback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tokrl.cli import EXIT_CONFIG_ERROR, main
from tokrl.models.adapters import adapter_base_model
from tokrl.run.eval_defaults import eval_defaults

TINY = [
    *"--sft-steps 2 --sft-batch-size 4 --steps 1 --prompts-per-step 2".split(),
    *"--num-generations 4 --max-new-tokens 4 --eval-size 4 --progress false".split(),
    *"--num-threads 1 --task-options".split(),
    "{digits_a: 2, digits_b: 1, train_size: 8, test_size: 4}",
]
EVAL = ["eval", "--limit", "2", "--device", "cpu", "--examples", "0"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("eval") / "run"
    assert main(["train", *TINY, "--output-dir", str(out)]) == 0
    return out


@pytest.fixture
def adapter(run, tmp_path) -> Path:
    """A copy of the run, so a test may damage its checkpoint."""
    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run" / "checkpoint-1"


def _result(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return err.strip().splitlines()[-1]


def test_adapter_alone_evaluates_on_its_base_with_the_runs_task(run, capsys, caplog):
    assert adapter_base_model(str(run / "checkpoint-1")) == str(run / "sft")
    assert main([*EVAL, "--adapter", str(run / "checkpoint-1")]) == 0
    assert _result(capsys)["n"] == 2
    assert f"eval: {run / 'sft'} on task multiplication" in caplog.text
    assert "'digits_a': 2, 'digits_b': 1" in caplog.text and "max_new_tokens 4" in caplog.text
    assert f"defaults from {run / 'checkpoint-1' / 'config.yaml'}" in caplog.text


def test_a_mismatched_model_is_refused(run, capsys):
    args = [*EVAL, "--task", "multiplication", "--model", "tiny", "--adapter", str(run / "checkpoint-1")]
    assert main(args) == EXIT_CONFIG_ERROR
    line = _error(capsys)
    assert f"model: the adapter {str(run / 'checkpoint-1')!r} was trained on {str(run / 'sft')!r}" in line
    assert "not on 'tiny'" in line
    assert main([*EVAL, "--model", str(run / "sft"), "--adapter", str(run / "checkpoint-1")]) == 0  # its own base


def test_a_checkpoint_passed_as_model_is_named(run, capsys):
    assert main([*EVAL, "--model", str(run / "checkpoint-1"), "--task", "multiplication"]) == EXIT_CONFIG_ERROR
    assert "is a LoRA adapter (it holds adapter_config.json and no config.json), not a model" in _error(capsys)


def test_base_recorded_relative_to_another_directory_is_found_beside_the_checkpoint(adapter):
    config = adapter / "adapter_config.json"
    data = json.loads(config.read_text())
    config.write_text(json.dumps(data | {"base_model_name_or_path": "runs/elsewhere/sft"}))
    assert adapter_base_model(str(adapter)) == str(adapter.parent / "sft")


def _truncate(adapter: Path) -> None:
    weights = adapter / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])


def _other_rank(adapter: Path) -> None:
    config = adapter / "adapter_config.json"
    config.write_text(json.dumps(json.loads(config.read_text()) | {"r": 4}))


DAMAGE = [
    (lambda a: (a / "adapter_model.safetensors").unlink(), "has no adapter weights (adapter_model.safetensors or"),
    (_truncate, "adapter: cannot load"),
    (_other_rank, "adapter: cannot load"),
    (lambda a: (a / "adapter_config.json").write_text("[]"), "holds list, not a JSON object; the adapter is damaged"),
]


@pytest.mark.parametrize(("damage", "message"), DAMAGE, ids=["no-weights", "truncated", "other-r", "config-list"])
def test_damaged_adapter_is_one_line(adapter, capsys, monkeypatch, damage, message):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a missing weights file used to send peft to the hub
    damage(adapter)
    args = [*EVAL, "--task", "multiplication", "--model", str(adapter.parent / "sft"), "--adapter", str(adapter)]
    assert main(args) == EXIT_CONFIG_ERROR
    assert message in _error(capsys)


def test_defaults_without_a_run_come_from_the_preset():
    defaults = eval_defaults("tiny", None, None)
    assert (defaults.task, defaults.task_options, defaults.max_new_tokens) == (
        "multiplication",
        {"digits_a": 3, "digits_b": 1},
        5,
    )
    assert defaults.source == "preset 'tiny-multiplication'"


def test_explicit_flags_win_and_another_task_ignores_the_defaults(run, capsys, caplog):
    args = [*EVAL, "--adapter", str(run / "checkpoint-1"), "--task-options", "{digits_a: 1}", "--max-new-tokens", "3"]
    assert main(args) == 0
    assert "'digits_a': 1, 'digits_b': 1" in caplog.text and "max_new_tokens 3" in caplog.text
