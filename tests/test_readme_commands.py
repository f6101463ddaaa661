"""The README's commands work as written, each after the one before it ("Watching a run" was refused
after a first `tokrl train`, and `--resume runs/x/checkpoint-60` named a checkpoint the run had pruned).

Every ```bash block after a `<!-- readme-commands -->` marker is run in order, in one working directory: each
`tokrl` line through `tokrl.cli.main` (other lines, pip and tensorboard, are skipped). Budgets shrink so the
sequence takes seconds: every `tokrl train` gets the small-run flags below (a resume passes the values its
checkpoint already holds; a run without --steps runs 2), and the README's step counts and checkpoint names
are mapped to small ones by STEPS; every mapping must be used, so the README cannot drift from this test.
The Python snippet after `<!-- readme-python -->` runs the same way, with its budgets made small.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tokrl.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"
SMALL = [
    *"--sft-steps 2 --sft-batch-size 4 --prompts-per-step 2 --num-generations 4".split(),
    *"--max-new-tokens 4 --eval-size 4 --eval-batch-size 4 --num-threads 1 --progress false".split(),
    *"--max-empty-steps 0 --task-options".split(),
    "{digits_a: 2, digits_b: 1, train_size: 8, test_size: 4}",
]
STEPS = {
    "100": "4",
    "200": "6",
    "80": "5",
    "300": "7",
    "20": "1",
    "runs/x/checkpoint-60": "runs/x/checkpoint-3",
    "runs/x/checkpoint-200": "runs/x/checkpoint-6",
}


def readme_blocks(marker: str, language: str) -> list[str]:
    text = README.read_text(encoding="utf-8")
    sections = text.split(marker)[1:]
    assert sections, f"README.md has no {marker}"
    blocks = []
    for section in sections:
        match = re.match(rf"\s*```{language}\n(.*?)```", section, re.S)
        assert match, f"{marker} must be followed by a ```{language} block"
        blocks.append(match.group(1))
    return blocks


def readme_commands() -> list[list[str]]:
    commands = []
    for block in readme_blocks("<!-- readme-commands -->", "bash"):
        for line in block.splitlines():
            if line.startswith("tokrl "):
                commands.append(shlex.split(line.split("  #", 1)[0])[1:])
    return commands


def test_readme_commands_run_in_order(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the README's paths are relative
    commands = readme_commands()
    assert [c[0] for c in commands][:2] == ["train", "train"] and ["env"] in commands
    used = set()
    for command in commands:
        args = []
        for arg in command:
            used.add(arg) if arg in STEPS else None
            args.append(STEPS.get(arg, arg))
        if args[0] == "train":
            args += SMALL + ([] if "--steps" in args or "--resume" in args else ["--steps", "2"])
        code = main(args)
        assert code == 0, (command, capsys.readouterr().err)
    assert used == set(STEPS), f"README no longer uses {set(STEPS) - used}"
    assert (tmp_path / "runs" / "x" / "checkpoint-7").is_dir() and (tmp_path / "curves.png").is_file()
    assert (tmp_path / "runs" / "x-from-60" / "checkpoint-5").is_dir()
    assert list((tmp_path / "runs" / "watched" / "tensorboard").glob("events.out.tfevents.*"))


@pytest.mark.slow
def test_readme_python_snippet_runs(tmp_path, monkeypatch):
    (code,) = readme_blocks("<!-- readme-python -->", "python")
    small = {"steps=20": "steps=2, sft_steps=2", "eval_size=200": "eval_size=4"}
    for old, new in small.items():
        assert old in code, f"the README snippet no longer passes {old}"
        code = code.replace(old, new)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md:readme-python", "exec"), namespace)
    result = namespace["result"]
    assert result.steps == 2 and result.eval_before is not None and result.eval_after is not None
    assert (tmp_path / "runs" / "quick" / "results.json").is_file()


def test_python_api_shows_progress_lines(tmp_path):
    # tokrl.train from Python printed nothing for minutes: logging was never configured outside the CLI.
    code = (
        "import tokrl; tokrl.train(steps=1, sft_steps=2, sft_batch_size=4, prompts_per_step=2, num_generations=4, "
        "max_new_tokens=4, eval_size=4, eval_batch_size=4, num_threads=1, progress=False, max_empty_steps=0, "
        f"task_options={{'digits_a': 2, 'digits_b': 1, 'train_size': 8, 'test_size': 4}}, output_dir={str(tmp_path)!r})"
    )
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr
    assert "sft: warm start of 'tiny': 2 steps" in done.stderr and "eval (before, step 0)" in done.stderr
