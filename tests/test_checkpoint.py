"""Checkpoints: exact round trip of adapter, optimiser, scheduler and RNG; atomic writes; pruning."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from tokrl.models.lora import apply_lora
from tokrl.models.tiny import build_tiny_model
from tokrl.run.checkpoint import checkpoint_dirs, latest_checkpoint, load_checkpoint, save_checkpoint


def _policy(seed: int, r: int = 4):
    torch.manual_seed(seed)
    model, _ = build_tiny_model(seed=0)
    model = apply_lora(model, r=r, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"])
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 1.0 / (i + 1))
    return model, optimizer, scheduler


def _train_a_bit(model, optimizer, scheduler, steps: int = 2) -> None:
    for _ in range(steps):
        ids = torch.randint(3, 100, (2, 5))  # [2, 5]
        loss = model(input_ids=ids).logits.float().logsumexp(-1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()


def _lora_state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters() if "lora_" in k}


def _save(tmp_path, step, model, optimizer, scheduler, keep=0):
    return save_checkpoint(
        tmp_path,
        step,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        trainer_state={"eval_before": 0.25},
        algorithm_state={"replay_buffer": {"entries": {"a": [[1, 2]]}}},
        config={"steps": 4, "lora": {"r": 4}},
        keep=keep,
    )


def test_round_trip_is_exact(tmp_path):
    model, optimizer, scheduler = _policy(seed=1)
    _train_a_bit(model, optimizer, scheduler)
    random.seed(5)
    np.random.seed(5)
    torch.manual_seed(5)
    path = _save(tmp_path, 2, model, optimizer, scheduler)
    expected_draws = (random.random(), float(np.random.rand()), torch.rand(3))
    assert (path / "adapter_model.safetensors").is_file() and (path / "adapter_config.json").is_file()

    other, other_opt, other_sched = _policy(seed=2)  # different LoRA init, fresh optimiser
    before = zip(_lora_state(model).values(), _lora_state(other).values(), strict=True)
    assert any(not torch.equal(a, b) for a, b in before)
    state = load_checkpoint(path, model=other, optimizer=other_opt, scheduler=other_sched)
    for (name, a), b in zip(_lora_state(model).items(), _lora_state(other).values(), strict=True):
        assert torch.equal(a, b), name
    assert state.step == 2 and state.trainer_state["eval_before"] == 0.25
    assert state.algorithm_state == {"replay_buffer": {"entries": {"a": [[1, 2]]}}}
    assert not hasattr(state, "config")  # config.yaml is read once, by tokrl.run.resume
    assert other_sched.last_epoch == scheduler.last_epoch
    assert (random.random(), float(np.random.rand())) == expected_draws[:2]
    assert torch.equal(torch.rand(3), expected_draws[2])
    # Continuing both from here gives identical weights: the optimiser moments came back too.
    torch.manual_seed(9)
    _train_a_bit(model, optimizer, scheduler)
    torch.manual_seed(9)
    _train_a_bit(other, other_opt, other_sched)
    for a, b in zip(_lora_state(model).values(), _lora_state(other).values(), strict=True):
        assert torch.equal(a, b)


def test_atomic_replace_prune_and_numeric_order(tmp_path):
    model, optimizer, scheduler = _policy(seed=1)
    for step in (2, 9, 10):
        _save(tmp_path, step, model, optimizer, scheduler)
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["checkpoint-2", "checkpoint-9", "checkpoint-10"]
    assert latest_checkpoint(tmp_path).name == "checkpoint-10"  # numeric, not lexical
    _save(tmp_path, 10, model, optimizer, scheduler, keep=2)  # same step again: replaced in place
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["checkpoint-9", "checkpoint-10"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary leftovers
    assert json.loads((tmp_path / "checkpoint-10" / "trainer_state.json").read_text())["step"] == 10
    assert latest_checkpoint(tmp_path / "missing") is None


def test_a_failed_write_leaves_no_checkpoint(tmp_path):
    model, optimizer, scheduler = _policy(seed=1)

    class Broken:
        def state_dict(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(
            tmp_path,
            3,
            model=model,
            optimizer=optimizer,
            scheduler=Broken(),
            trainer_state={},
            algorithm_state={},
            config={},
        )
    assert list(tmp_path.iterdir()) == []


def test_an_adapter_of_another_shape_is_refused(tmp_path):
    model, optimizer, scheduler = _policy(seed=1, r=4)
    path = _save(tmp_path, 1, model, optimizer, scheduler)
    other, other_opt, other_sched = _policy(seed=1, r=8)
    with pytest.raises(RuntimeError, match="size mismatch|does not match"):
        load_checkpoint(path, model=other, optimizer=other_opt, scheduler=other_sched)
