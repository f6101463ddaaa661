"""The `tokrl` command end to end (subprocesses at tiny budgets) and its error messages (in process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tokrl.cli import EXIT_CONFIG_ERROR, build_parser, main
from tokrl.config import flat_fields

TINY = [
    *"--steps 2 --sft-steps 3 --sft-batch-size 4 --prompts-per-step 2".split(),
    *"--num-generations 4 --max-new-tokens 6 --eval-size 6 --eval-batch-size 6".split(),
    "--task-options",
    "{digits_a: 2, digits_b: 1, train_size: 16, test_size: 6}",
]


def tokrl(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "tokrl", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def test_train_end_to_end_then_resume_and_eval(tmp_path):
    out = tmp_path / "run"
    done = tokrl("train", *TINY, "--output-dir", str(out), "--algorithm", "s-grpo", "--seed", "1")
    assert done.returncode == 0, done.stderr
    assert "accuracy" in done.stdout and "results.json" in done.stdout
    results = json.loads((out / "results.json").read_text())
    assert results["algorithm"] == "s-grpo" and results["task"] == "multiplication" and results["steps"] == 2
    assert 0 <= results["eval_before"] <= 1 and 0 <= results["eval_after"] <= 1
    assert (out / "sft" / "sft_config.json").is_file() and (out / "checkpoint-2").is_dir()
    config = (out / "checkpoint-2" / "config.yaml").read_text()
    assert "algorithm: s-grpo" in config and "seed: 1" in config

    more = tokrl(
        "train", *TINY, "--output-dir", str(out), "--algorithm", "s-grpo", "--seed", "1", "--resume", "--steps", "3"
    )
    assert more.returncode == 0, more.stderr
    assert "reusing the warm start" in more.stderr and "resumed from" in more.stderr
    assert json.loads((out / "results.json").read_text())["steps"] == 3

    evaluated = tokrl(
        "eval",
        "--model",
        str(out / "sft"),
        "--adapter",
        str(out / "checkpoint-3"),
        "--task",
        "multiplication",
        "--task-options",
        "{digits_a: 2, digits_b: 1, test_size: 6}",
        "--limit",
        "3",
        "--max-new-tokens",
        "6",
    )
    assert evaluated.returncode == 0, evaluated.stderr
    metrics = json.loads(evaluated.stdout.strip().splitlines()[-1])
    assert metrics["n"] == 3 and 0 <= metrics["accuracy"] <= 1


def test_env_prints_versions():
    done = tokrl("env", timeout=120)
    assert done.returncode == 0, done.stderr
    for name in ("python", "torch", "triton", "transformers", "peft", "tokrl", "cuda"):
        assert name in done.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--algorithm", "ppo"], "algorithm: unknown 'ppo'; expected one of: grpo, s-grpo, t-spmo"),
        (["--task", "gsm"], "task: unknown 'gsm'"),
        (["--preset", "huge"], "preset: unknown 'huge'; expected one of: svamp-qwen2-1.5b, tiny-multiplication"),
        (["--model", "./missing-model"], "model: unknown './missing-model'; expected one of: 'tiny'"),
        (["--num-generations", "1"], "num_generations: must be >= 2"),
        (["--prompts-per-step", "x"], "prompts_per_step: expected an integer"),
        (["--prompts-per-step", "99", "--task-options", "{train_size: 5}"], "prompts_per_step: 99 prompts"),
        (["--lora-rr", "4"], "unrecognized arguments: --lora-rr (did you mean --lora-r"),
    ],
    ids=["algorithm", "task", "preset", "model", "G", "type", "train-split", "flag"],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, message):
    code = main(["train", "--output-dir", str(tmp_path / "never"), *args])
    err = capsys.readouterr().err
    assert code == EXIT_CONFIG_ERROR
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "never").exists()  # nothing was written, no weights were loaded


def test_bad_input_exit_code_in_a_subprocess(tmp_path):
    done = tokrl("train", "--algorithm", "nope", "--output-dir", str(tmp_path), timeout=120)
    assert done.returncode == EXIT_CONFIG_ERROR
    assert "algorithm: unknown 'nope'" in done.stderr and "Traceback" not in done.stderr


def test_every_config_field_has_a_flag_with_help():
    parser = build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]  # the `train` sub-parser
    flags = {opt for action in train._actions for opt in action.option_strings}
    for key in flat_fields():
        assert "--" + key.replace("_", "-") in flags
    assert "PPO clip: ratio lower bound" in train.format_help()  # the field's metadata help
    for required in (
        "--algorithm",
        "--task",
        "--model",
        "--steps",
        "--output-dir",
        "--resume",
        "--save-every",
        "--eval-every",
        "--seed",
        "--sft-steps",
        "--config",
        "--preset",
    ):
        assert required in flags
    args = parser.parse_args(["train", "--resume", "--lora_r", "4"])
    assert args.resume == "true" and args.lora_r == "4"


def test_no_command_prints_help(capsys):
    assert main([]) == EXIT_CONFIG_ERROR
    assert "train" in capsys.readouterr().out
