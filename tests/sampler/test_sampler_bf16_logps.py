"""The CPU twin of the GPU test of bf16 log-probs on every family (tests/sampler/test_sampler_gpu.py,
`test_families_in_bf16_are_graphed_and_match_a_forward`): the same models, prompts and check on the eager
path, which does the graphed path's math per row without graphs (one forward row per distinct prefix). The
sampler's log-probs of its own tokens may be no further than HF's own bf16 decode's from a forward of the
policy the sampler runs (its adapters in bf16) and from the exact policy (an fp32 forward):
`tests.sampler.helpers.assert_bf16_logps_as_close_as_hf_decode` says why, with the numbers. The last test
shows the check catches small faults."""

from __future__ import annotations

import pytest
import torch

from tests.sampler.helpers import BF16_FAMILIES, check_bf16_family
from tokrl.sampler import adapters, engine, prefix_decode

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize(("name", "overrides"), BF16_FAMILIES, ids=[name for name, _ in BF16_FAMILIES])
def test_families_in_bf16_log_probs_are_as_close_to_the_model_as_hf_decode(name, overrides):
    sampler = check_bf16_family(name, overrides, CPU)
    assert sampler.graphed_share is None  # the eager path (no graphs on CPU)


def _position_off_by_one(monkeypatch):
    forward = engine.forward_logits

    def shifted(body, ids, positions, bias, cache, overrides=None):
        return forward(body, ids, positions + (ids.shape[1] == 1), bias, cache, overrides)  # decode steps only

    for module in (engine, prefix_decode):  # the graphed steps' loop and the eager one
        monkeypatch.setattr(module, "forward_logits", shifted)


def _lora_b_copies_off_by_3_percent(monkeypatch):
    def refresh(self):
        for name, copy in self.copies.items():
            copy.copy_(self.sources[name].detach() * (0.97 if ".lora_B." in name else 1.0))

    monkeypatch.setattr(adapters.AdapterCopies, "refresh", refresh)


@pytest.mark.parametrize("fault", [_position_off_by_one, _lora_b_copies_off_by_3_percent])
@pytest.mark.parametrize("name", ["phi3", "llama"])
def test_the_check_catches_a_sampler_that_is_not_the_model(monkeypatch, fault, name):
    fault(monkeypatch)
    with pytest.raises(AssertionError, match=r"^(mean|p95|max): \w+: decode gaps"):
        check_bf16_family(name, {}, CPU)
