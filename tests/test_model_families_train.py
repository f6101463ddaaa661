"""Every family trains by path with the defaults: `tokrl.train(model=PATH, steps=2)`, and its adapter loads back.

Each tiny model of `tests/model_families.py` is saved with `save_pretrained` next to the character tokenizer and
passed by path, as a user passes theirs. The run keeps tokrl's defaults (all-linear LoRA, T-SPMO, the kernels'
loss) and is only made short: one warm-start step (a full fine-tune through the kernels, LM head included),
2 RL steps on a 4-prompt custom task whose reward is a hash of the completion text (a random model would score
0 on any real task and train nothing). Both samplers run: `hf`, and the default `auto`.

After the run: the step trained (selected tokens, a finite loss), the checkpoint's adapter loads back into the
saved model with peft, covers every linear layer of the decoder and changes its logits.
"""

from __future__ import annotations

import json
import logging
import zlib

import pytest
import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer

import tokrl
from tests.model_families import FAMILIES, save_family_model
from tokrl.models.loading import load_model
from tokrl.models.lora_targets import linear_layer_names

PROMPTS = ["3*4=", "12*5=", "7*9=", "21*3=", "8*8=", "2*6="]


def hash_reward(completions, **columns):
    """Rewards that differ within a group of a random model's completions (a stable hash of the text)."""
    return [float(zlib.crc32(c.encode()) % 5) for c in completions]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("family-data") / "train.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "answer": str(eval(p[:-1]))}) + "\n" for p in PROMPTS))
    return str(path)


def _run(family, sampler, dataset, tmp_path):
    model_dir = save_family_model(family, tmp_path / "model")
    result = tokrl.train(
        model=str(model_dir),
        output_dir=str(tmp_path / "run"),
        sampler=sampler,
        task="custom",
        task_options={"dataset": dataset, "reward": f"{__name__}:hash_reward", "test_size": 2},
        steps=2,
        sft_steps=1,
        sft_batch_size=2,
        prompts_per_step=2,
        num_generations=4,
        max_new_tokens=5,
        eval_size=2,
        eval_batch_size=2,
        save_every=2,
        progress=False,
        num_threads=1,
    )
    return model_dir, result


@pytest.mark.parametrize(("family", "sampler"), [(f, s) for s in ("hf", "auto") for f in FAMILIES])
def test_family_trains_by_path_and_its_adapter_loads_back(family, sampler, dataset, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="tokrl"):
        model_dir, result = _run(family, sampler, dataset, tmp_path)
    assert result.steps == 2 and not result.interrupted
    steps = [json.loads(line) for line in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    trained = [s for s in steps if s["kind"] == "train"]
    assert len(trained) == 2 and all(torch.isfinite(torch.tensor(s["loss"])) for s in trained)
    assert sum(s["selected_tokens"] for s in trained) > 0, "no step trained anything"
    moe_notes = [r for r in caplog.records if "router load-balancing loss" in r.getMessage()]
    assert len(moe_notes) == (1 if FAMILIES[family].moe else 0)

    base, _ = load_model(str(result.output_dir / "sft"))  # the warm-started model RL adapted
    peft_model = PeftModel.from_pretrained(base, str(result.output_dir / "checkpoint-2")).eval()
    adapted = {
        name.removeprefix("base_model.model.") for name, m in peft_model.named_modules() if isinstance(m, LoraLayer)
    }
    assert adapted == set(linear_layer_names(load_model(str(model_dir))[0]))  # every linear layer of the decoder
    assert any(p.abs().max() > 0 for name, p in peft_model.named_parameters() if "lora_B" in name)
    ids = torch.tensor([[5, 9, 12, 7, 3]])
    with torch.no_grad():
        adapted_logits = peft_model(input_ids=ids).logits  # [1, 5, V]
        with peft_model.disable_adapter():
            base_logits = peft_model(input_ids=ids).logits  # [1, 5, V]
    assert not torch.allclose(adapted_logits, base_logits)
