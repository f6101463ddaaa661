"""The update half of a step: loss micro-batches equal one forward, and the update's peak memory is measured.

Micro-batch equality is checked inside real training steps of the tiny model (hash rewards, LoRA dropout
0 so every forward sees the same network): at every step, before the real update, the step's rows go
through the loss once in a single forward and once in micro-batches, and the LoRA gradients and loss
totals must agree to fp32 rounding. T-SPMO with replay_prob 1 makes later steps continue from replay
prefixes, so prompt rows of different lengths (prompt + prefix) are split across micro-batches too.
"""

from __future__ import annotations

import json

import pytest
import torch

from tests.trainer_helpers import HashRewardTrainer, base_and_lora, small_config
from tokrl.stages.update import NonFiniteLossError, PolicyUpdate


def _grads_and_totals(update: PolicyUpdate, prompts, completions, rows, micro: int):
    update.loss.loss_micro_batch = micro
    update.optimizer.zero_grad(set_to_none=True)
    parts = update._micro_batches(prompts, completions, rows)
    totals = sum(update._loss_backward(part, first_iteration=True) for part in parts)
    grads = torch.cat([p.grad.flatten() if p.grad is not None else torch.zeros(p.numel()) for p in update.params])
    update.optimizer.zero_grad(set_to_none=True)
    return grads, totals, len(parts)


@pytest.mark.parametrize(
    ("algorithm", "replay_prob", "share_prompts"),
    [
        ("t-spmo", 0.0, False),
        ("t-spmo", 1.0, False),
        ("s-grpo", 0.0, False),
        ("grpo", 0.0, False),
        ("t-spmo", 1.0, True),
        ("grpo", 0.0, True),
    ],
)
def test_micro_batches_equal_one_forward(tmp_path, monkeypatch, algorithm, replay_prob, share_prompts):
    config = small_config(
        tmp_path,
        algorithm=algorithm,
        replay_prob=replay_prob,
        steps=3,
        lora_dropout=0.0,
        max_new_tokens=8,
        alpha=2,
        max_tokens=4,
        eval_size=1,
        share_prompts=share_prompts,
        # two training prompts, both in every step: from step 2 on, replay finds stored successes to continue
        task_options={"digits_a": 2, "digits_b": 1, "train_size": 2, "test_size": 2},
    )
    checked = []
    real_apply = PolicyUpdate.apply

    def checking_apply(self, prompts, completions, rows, step, selected):
        if len(rows) > 0:
            want_grads, want_totals, n_whole = _grads_and_totals(self, prompts, completions, rows, micro=0)
            got_grads, got_totals, n_parts = _grads_and_totals(self, prompts, completions, rows, micro=3)
            assert n_whole == 1 and n_parts > 1, "the step must really be split"
            scale = float(want_grads.abs().max())
            assert scale > 0, "the step must carry gradient"
            torch.testing.assert_close(got_grads, want_grads, rtol=0, atol=1e-5 * scale)
            # [loss, clipped, kl]; forward tokens too, except that a shared prompt runs once per micro-batch
            torch.testing.assert_close(got_totals[:3], want_totals[:3], rtol=1e-5, atol=1e-6)
            assert got_totals[3] == want_totals[3] if not share_prompts else got_totals[3] >= want_totals[3]
            checked.append(step)
        self.loss.loss_micro_batch = 0
        return real_apply(self, prompts, completions, rows, step, selected)

    monkeypatch.setattr(PolicyUpdate, "apply", checking_apply)
    result = HashRewardTrainer(config).run()
    assert checked, "no step had selected rows"
    records = [json.loads(line) for line in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    if replay_prob > 0:
        assert any(r.get("prefix_len", 0) > 0 for r in records), "replay prefixes were sampled"


def test_micro_batched_run_trains_and_logs_update_memory(tmp_path):
    result = HashRewardTrainer(small_config(tmp_path, algorithm="grpo", loss_micro_batch=2)).run()
    records = [json.loads(line) for line in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert train and all(r["update_peak_mem_mib"] > 0 and r["gen_peak_mem_mib"] > 0 for r in train)
    assert all(r["peak_mem_mib"] == max(r["update_peak_mem_mib"], r["gen_peak_mem_mib"]) for r in train)
    assert all(r["forward_tokens"] > 0 for r in train)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device: the update's CUDA peak memory")
def test_update_peak_memory_grows_with_selected_rows(tmp_path):
    """On CUDA the update peak is the allocator's peak of the update alone, so more forward rows -> higher."""
    peaks = {}
    for size in (2, 8):
        config = small_config(
            tmp_path / str(size),
            algorithm="grpo",
            device="cuda",
            dtype="float32",
            prompts_per_step=size,
            num_generations=8,
            max_new_tokens=64,
            steps=1,
            eval_size=1,
            task_options={"digits_a": 2, "digits_b": 1, "train_size": 16, "test_size": 4},
        )
        result = HashRewardTrainer(config).run()
        records = [json.loads(line) for line in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
        peaks[size] = next(r["update_peak_mem_mib"] for r in records if r["kind"] == "train")
    assert peaks[8] > peaks[2]


def test_non_finite_gradient_norm_stops_before_the_optimiser_step(tmp_path):
    # The loss and the gradient norm are read together after clipping (one device read per iteration); an
    # infinite gradient with a finite loss must still stop the run before AdamW moves a weight.
    trainer = HashRewardTrainer(small_config(tmp_path, algorithm="grpo"))
    trainer.setup()
    _, lora_before = base_and_lora(trainer.model)
    poisoned = next(p for name, p in trainer.model.named_parameters() if "lora_B" in name)
    poisoned.register_hook(lambda grad: grad + float("inf"))
    with pytest.raises(NonFiniteLossError, match=r"non-finite gradient norm \(inf\) at step 1"):
        trainer.run()
    _, lora_after = base_and_lora(trainer.model)
    assert all(torch.equal(lora_before[k], lora_after[k]) for k in lora_before), "the bad update was applied"
    assert not trainer.update.optimizer.state, "AdamW took a step"


def test_cpu_optimiser_is_multi_tensor_adamw_with_the_same_steps(tmp_path):
    # PolicyUpdate asks for the multi-tensor AdamW on CPU (torch picks it on CUDA only) for speed; it must take
    # exactly the per-parameter loop's steps, or runs would change with the switch.
    trainer = HashRewardTrainer(small_config(tmp_path, algorithm="grpo"))
    trainer.setup()
    assert trainer.update.optimizer.defaults["foreach"] is True
    shapes = [p.shape for p in trainer.update.params]
    runs = []
    for foreach in (True, False):
        params = [
            torch.nn.Parameter(torch.randn(s, generator=torch.Generator().manual_seed(i))) for i, s in enumerate(shapes)
        ]
        optimizer = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.01, foreach=foreach)
        grads = torch.Generator().manual_seed(99)
        for _ in range(5):
            for p in params:
                p.grad = torch.randn(p.shape, generator=grads)
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
        runs.append(params)
    assert all(torch.equal(a, b) for a, b in zip(*runs, strict=True))
