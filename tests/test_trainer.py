"""The RL loop on the tiny model: smoke runs of every algorithm, exact resume, signals, failures, SFT cache.

The Trainers and config come from tests/trainer_helpers.py (rewards swapped for a deterministic hash).
"""

from __future__ import annotations

import json
import signal

import pytest
import torch
from safetensors.torch import load_file

from tests.trainer_helpers import HashRewardTrainer, base_and_lora, changed, small_config
from tokrl.algorithms import AlgoConfig, GroupSelection, available_algorithms
from tokrl.config import load_config
from tokrl.infra.lr_schedule import lr_scheduler
from tokrl.infra.seeding import step_seed
from tokrl.run.checkpoint import StopSignals
from tokrl.run.warm_start import sft_stage
from tokrl.stages.select import gather_rows
from tokrl.stages.update import NonFiniteLossError
from tokrl.trainer import Trainer


@pytest.mark.parametrize("algorithm", ["grpo", "s-grpo", "t-spmo"])
def test_two_step_smoke(tmp_path, algorithm):
    assert algorithm in available_algorithms()
    trainer = HashRewardTrainer(small_config(tmp_path, algorithm=algorithm))
    trainer.setup()
    base0, lora0 = base_and_lora(trainer.model)
    result = trainer.run()
    base1, lora1 = base_and_lora(trainer.model)
    assert not changed(base0, base1), "base weights must stay frozen"
    # Step 1 moves every lora_B (it starts at 0, so lora_A gets no gradient yet); step 2 moves every lora_A too.
    assert sorted(changed(lora0, lora1)) == sorted(lora0), "every LoRA weight of every adapted module must train"
    records = [json.loads(line) for line in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == [1, 2]
    for r in train:
        assert r["selected_tokens"] > 0 and r["loss"] is not None and r["grad_norm"] > 0
        assert 0 <= r["frac_zero_std"] <= 1 and r["gen_tokens_per_s"] > 0 and r["peak_mem_mib"] > 0
    assert [r["when"] for r in records if r["kind"] == "eval"] == ["before", "after"]
    results = json.loads((result.output_dir / "results.json").read_text())
    assert results["algorithm"] == algorithm and results["steps"] == 2 and results["model"] == "tiny"
    assert 0 <= results["eval_before"] <= 1 and 0 <= results["eval_after"] <= 1 and results["wall_time_s"] > 0
    assert (result.output_dir / "checkpoint-2" / "adapter_model.safetensors").is_file()
    assert not result.interrupted


def test_kl_and_ppo_iterations(tmp_path):
    trainer = HashRewardTrainer(small_config(tmp_path, algorithm="grpo", beta=0.1, num_iterations=2, steps=1))
    result = trainer.run()
    # The logged statistics are the second iteration's: after the first optimiser step the adapter is no longer
    # zero, so the policy differs from the adapter-free reference (KL > 0) and from pi_old (ratio != 1).
    assert result.metrics["kl"] > 0, "the reference log-probs (beta > 0) never reached the loss"
    assert torch.isfinite(torch.tensor(result.metrics["loss"]))
    assert trainer.update.scheduler.last_epoch == 2  # one scheduler step per optimiser step
    plain = HashRewardTrainer(small_config(tmp_path / "plain", algorithm="grpo", num_iterations=2, steps=1)).run()
    assert plain.metrics["kl"] == 0.0  # beta = 0: no reference forward, nothing to report


def _adapter(path):
    return load_file(str(path / "adapter_model.safetensors"))


def test_interrupt_then_resume_is_bit_exact(tmp_path):
    # T-SPMO with replay on a 4-prompt train split: the replay buffer matters across the interruption.
    overrides = {
        "algorithm": "t-spmo",
        "steps": 4,
        "replay_prob": 1.0,
        "task_options": {"digits_a": 2, "digits_b": 1, "train_size": 4, "test_size": 4},
        "lora_dropout": 0.1,
    }
    straight = HashRewardTrainer(small_config(tmp_path / "a", **overrides)).run()

    interrupted_trainer = HashRewardTrainer(small_config(tmp_path / "b", **overrides))
    interrupted_trainer.interrupt_at = 2
    handler = signal.getsignal(signal.SIGINT)
    first = interrupted_trainer.run()
    assert signal.getsignal(signal.SIGINT) is handler  # restored
    assert first.interrupted and first.steps == 2 and first.eval_after is None
    assert (first.output_dir / "checkpoint-2").is_dir()
    state = json.loads((first.output_dir / "checkpoint-2" / "algorithm_state.json").read_text())
    assert state["replay_buffer"]["entries"], "the replay buffer is saved"

    resumed = HashRewardTrainer(small_config(tmp_path / "b", resume=True, **overrides)).run()
    assert resumed.steps == 4 and not resumed.interrupted
    assert resumed.eval_before == straight.eval_before
    a, b = _adapter(straight.checkpoint), _adapter(resumed.checkpoint)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    lines = [
        [
            r
            for r in map(json.loads, (run.output_dir / "metrics.jsonl").read_text().splitlines())
            if r["kind"] == "train"
        ]
        for run in (straight, resumed)
    ]
    assert [r["loss"] for r in lines[0]] == [r["loss"] for r in lines[1]]
    assert any(r["prefix_len"] > 0 for r in lines[0]), "replay groups were sampled"


def test_non_finite_loss_stops_with_a_checkpoint(tmp_path, monkeypatch):
    import tokrl.stages.update as update_module

    real = update_module.linear_pg_loss

    def poisoned(*args, **kwargs):
        out = real(*args, **kwargs)
        return out._replace(loss=out.loss * float("nan"))

    monkeypatch.setattr(update_module, "linear_pg_loss", poisoned)
    trainer = HashRewardTrainer(small_config(tmp_path, algorithm="grpo"))
    trainer.setup()
    _, lora0 = base_and_lora(trainer.model)
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss \(nan\) at step 1.*--lr"):
        trainer.run()
    saved = _adapter(trainer.output_dir / "checkpoint-0")
    assert len(saved) == len(lora0)
    _, lora1 = base_and_lora(trainer.model)
    assert all(torch.equal(lora0[k], lora1[k]) for k in lora0), "the bad update was not applied"


def test_non_finite_loss_in_a_later_iteration_undoes_the_step(tmp_path, monkeypatch):
    # num_iterations 2: the first iteration's optimiser step has moved the weights when the second finds a NaN.
    # The state (weights, AdamW, schedule) goes back to the step's start, so the checkpoint is the last good step.
    import tokrl.stages.update as update_module

    real, calls = update_module.linear_pg_loss, []

    def poisoned(*args, **kwargs):
        calls.append(1)
        out = real(*args, **kwargs)
        return out._replace(loss=out.loss * float("nan")) if len(calls) > 1 else out

    monkeypatch.setattr(update_module, "linear_pg_loss", poisoned)
    trainer = HashRewardTrainer(small_config(tmp_path, algorithm="grpo", num_iterations=2))
    trainer.setup()
    _, lora0 = base_and_lora(trainer.model)
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss \(nan\) at step 1"):
        trainer.run()
    assert len(calls) == 2  # the first iteration ran and stepped; the second stopped
    _, lora1 = base_and_lora(trainer.model)
    assert all(torch.equal(lora0[k], lora1[k]) for k in lora0), "the first iteration's update was kept"
    assert not trainer.update.optimizer.state and trainer.update.scheduler.last_epoch == 0
    saved = _adapter(trainer.output_dir / "checkpoint-0")  # peft's file names drop the adapter name
    initial = {name.replace(".default", ""): weight for name, weight in lora0.items()}
    assert saved.keys() == initial.keys() and all(torch.equal(saved[k], initial[k]) for k in saved)


def test_train_split_too_small_fails_before_weights_load(tmp_path):
    config = small_config(tmp_path, prompts_per_step=9)  # the train split has 8 examples
    with pytest.raises(ValueError, match="prompts_per_step: 9 prompts per step .* only 8 examples"):
        Trainer(config)
    assert not (tmp_path / "run").exists()


def test_sft_stage_is_cached_and_guarded(tmp_path):
    config = small_config(tmp_path, sft_steps=2, sft_batch_size=4)
    trainer = Trainer(config)
    messages: list[str] = []
    path = sft_stage(config, trainer.task, trainer.output_dir, trainer.device, log=messages.append)
    assert (path / "config.json").is_file() and (path / "tokenizer.json").is_file()
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    sft_stage(config, trainer.task, trainer.output_dir, trainer.device, log=messages.append)
    assert "reusing" in messages[-1] and (path / "model.safetensors").stat().st_mtime_ns == stamp
    changed = load_config(base=config, sft_steps=3)
    with pytest.raises(ValueError, match="different settings"):
        sft_stage(changed, trainer.task, trainer.output_dir, trainer.device)


def test_gather_rows_normalises_over_the_batch():
    def selection(rows, units):
        k = len(rows)
        return GroupSelection(
            completion=torch.tensor(rows),
            position=torch.arange(k),
            token=torch.full((k,), 7),
            advantage=torch.ones(k),
            weight=torch.full((k,), 0.5),
            norm_units=units,
            zero_std=False,
        )

    rows = gather_rows([selection([0, 1], 2.0), selection([], 1.0), selection([3], 1.0)], group_size=4)
    assert rows.row.tolist() == [0, 1, 11]  # group 2, completion 3 -> rollout row 2 * 4 + 3
    torch.testing.assert_close(rows.weight, torch.full((3,), 0.5 / 4.0))
    empty = gather_rows([selection([], 0.0)], group_size=4)
    assert len(empty) == 0


def test_scheduler_shapes():
    params = [torch.nn.Parameter(torch.zeros(1))]
    factors = {}
    for name in ("constant", "linear", "cosine"):
        optimizer = torch.optim.SGD(params, lr=1.0)
        scheduler = lr_scheduler(optimizer, name, warmup=2, total=6)
        seen = []
        for _ in range(6):
            seen.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        factors[name] = seen
    assert factors["constant"] == [0.5, 1.0, 1.0, 1.0, 1.0, 1.0]
    assert factors["linear"][:3] == [0.5, 1.0, 1.0] and factors["linear"][-1] == pytest.approx(0.25)
    assert factors["cosine"][2] == 1.0 and factors["cosine"][-1] < factors["cosine"][3]


def test_step_seeds_differ_and_signals_restore():
    assert len({step_seed(s, t) for s in range(3) for t in range(-3, 50)}) == 3 * 53
    before = signal.getsignal(signal.SIGTERM)
    with StopSignals() as stop:
        signal.raise_signal(signal.SIGTERM)
        assert stop.requested
    assert signal.getsignal(signal.SIGTERM) is before


def test_algorithm_options_reach_the_algorithm(tmp_path):
    trainer = Trainer(small_config(tmp_path, algorithm="s-grpo", alpha=3, max_tokens=5))
    assert isinstance(trainer.algorithm.config, AlgoConfig)
    assert (trainer.algorithm.config.alpha, trainer.algorithm.config.max_tokens) == (3, 5)
