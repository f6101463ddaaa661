"""The README's "Use with TRL" code block runs: on the tiny model in place of the hub model it names, and
without CUDA with `use_cpu=True, bf16=False` added to its GRPOConfig (TRL's bf16 default needs a GPU).

The block is read from README.md between `<!-- trl-example -->` and `<!-- /trl-example -->`.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[2] / "README.md"
START, END = "<!-- trl-example -->", "<!-- /trl-example -->"
HUB_MODEL = '"Qwen/Qwen2-0.5B-Instruct"'


def example_code() -> str:
    text = README.read_text(encoding="utf-8")
    assert START in text and END in text, f"README.md has no {START} ... {END} section"
    section = text.split(START, 1)[1].split(END, 1)[0]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "the TRL example section has no ```python block"
    return match.group(1)


def test_readme_trl_example_runs(tiny_path, tmp_path, monkeypatch):
    code = example_code()
    assert HUB_MODEL in code, f"the example should name {HUB_MODEL}; the test swaps it for the tiny model"
    monkeypatch.chdir(tmp_path)  # output_dir is relative
    namespace: dict = {}
    code = code.replace(HUB_MODEL, repr(tiny_path))
    if not torch.cuda.is_available():
        assert code.count("args=GRPOConfig(") == 1
        code = code.replace("args=GRPOConfig(", "args=GRPOConfig(use_cpu=True, bf16=False, ")
    exec(compile(code, "README.md:trl-example", "exec"), namespace)
    trainer = namespace["trainer"]
    assert trainer.state.global_step == 2  # 2 prompts x 4 generations, 4 completions per step, one epoch
    assert trainer.tokrl_kernels_path["loss"] == "tokrl_kernels.linear_pg_loss"
