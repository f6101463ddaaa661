"""The trainer's sampler metrics: timing split, and the sampler-vs-loss log-prob gap on selected tokens."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from tests.trainer_helpers import HashRewardTrainer, small_config
from tokrl.sampler import cuda_graph
from tokrl.stages.record import sampler_gap_stats


def test_gap_stats_on_known_values():
    gaps = [0.0, 0.05, -0.2, 0.1] * 5  # ratios 1, 1.051, 0.819, 1.105
    stats = sampler_gap_stats(gaps)
    assert stats["sampler_logp_gap_mean"] == pytest.approx(0.0875)
    assert stats["sampler_logp_gap_p95"] == pytest.approx(0.2)
    assert stats["sampler_ratio_outside"] == pytest.approx(0.5)  # -0.2 and 0.1 (exp(0.1) = 1.105 > 1.1)
    assert set(sampler_gap_stats(None).values()) == {None}


@pytest.mark.parametrize(
    ("algorithm", "replay", "sampler"),
    [("s-grpo", 0.0, "tokrl"), ("t-spmo", 1.0, "tokrl"), ("s-grpo", 0.0, "tokrl-merged")],
)
def test_tokrl_sampler_matches_the_loss_policy_without_dropout(tmp_path, algorithm, replay, sampler):
    """lora_dropout=0, fp32: the sampler's log-probs are the loss's up to rounding (of the merged weights for
    tokrl-merged), replay prefixes included."""
    config = small_config(
        tmp_path, algorithm=algorithm, replay_prob=replay, steps=2, lora_dropout=0.0, sampler=sampler, eval_size=2
    )
    trainer = HashRewardTrainer(config)
    trainer.setup()
    if replay:  # successes in the buffer, so T-SPMO hands out replay prefixes (prompt rows with a prefix)
        for example in trainer.collector.order.examples(0) + trainer.collector.order.examples(1):
            answer = trainer.tokenizer("1234567", add_special_tokens=False)["input_ids"]
            trainer.algorithm.replay.add(trainer.task.format_prompt(example["prompt"]), answer, 1.0)
    for step in range(2):
        record = trainer.train_step(step)
        if record["selected_tokens"]:
            assert record["sampler_logp_gap_p95"] < 1e-4, record
            assert record["sampler_ratio_outside"] == 0.0
        assert 0 < record["gen_seconds"] and 0 < record["update_seconds"]
        assert record["gen_seconds"] + record["update_seconds"] <= record["step_time_s"]
    if algorithm == "t-spmo":
        assert record["prefix_len"] > 0  # the replay path was exercised


def test_dropout_makes_a_gap_and_hf_reports_none(tmp_path):
    torch.manual_seed(0)
    with_dropout = HashRewardTrainer(small_config(tmp_path / "a", steps=1, lora_dropout=0.5, sampler="tokrl"))
    with_dropout.setup()
    for p in with_dropout.model.parameters():  # a non-zero LoRA-B, so dropout on the adapter input matters
        if p.requires_grad and p.dim() == 2 and p.shape[1] < p.shape[0]:
            p.data.normal_(0, 0.1)
    record = with_dropout.train_step(0)
    assert record["sampler_logp_gap_mean"] > 1e-4  # the gap metric can see a mismatch
    hf = HashRewardTrainer(small_config(tmp_path / "b", steps=1, sampler="hf"))
    hf.setup()
    record = hf.train_step(0)
    assert record["sampler_logp_gap_mean"] is None and not math.isnan(record["gen_seconds"])


class _FailingCapture(cuda_graph.CallReplay):
    def capture(self, step):
        raise RuntimeError("injected capture failure")


@pytest.mark.parametrize(("backend", "share"), [(None, None), (cuda_graph.CallReplay, 1.0), (_FailingCapture, 0.0)])
def test_sampler_graphed_metric_reports_failed_captures(tmp_path, monkeypatch, caplog, backend, share):
    """`sampler_graphed` is the share of decode steps replayed from a graph: None on CPU (no graphs by
    design), 1.0 when every capture worked, 0.0 with a warning at every step when capture fails."""
    if backend is not None:
        monkeypatch.setattr(cuda_graph, "backend_for", lambda device: backend())
    trainer = HashRewardTrainer(small_config(tmp_path, steps=2, sampler="tokrl"))
    trainer.setup()
    for step in range(2):
        with caplog.at_level(logging.WARNING, logger="tokrl"):
            caplog.clear()
            record = trainer.train_step(step)
        assert record["sampler_graphed"] == share
        failures = [r for r in caplog.records if "CUDA-graph capture failed" in r.getMessage()]
        assert bool(failures) == (share == 0.0)  # warned at every step it happens, not once per process
