"""Token choice: the warpers equal HF's, the inverse-CDF draw repeats under a seed and never leaves the nucleus,
and the drawn frequencies pass a chi-square test against softmax(logits / T) truncated to the top-p nucleus."""

from __future__ import annotations

import pytest
import torch
from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

from tokrl.sampler.token_sampling import SamplingOptions, choose_tokens, draw, warp_scores

# Upper 0.1% points of the chi-square distribution by degrees of freedom (scipy is not a dependency).
CHI2_CRITICAL_999 = {1: 10.828, 2: 13.816, 3: 16.266, 4: 18.467, 5: 20.515, 6: 22.458, 7: 24.322}


@pytest.mark.parametrize(("temperature", "top_p"), [(1.0, 1.0), (0.7, 1.0), (1.0, 0.9), (1.3, 0.5), (0.6, 0.05)])
def test_warp_scores_equals_hf_warpers(temperature, top_p):
    logits = torch.randn(6, 1000) * 3  # [B, V]
    want = logits.clone()
    if temperature != 1.0:
        want = TemperatureLogitsWarper(temperature)(None, want)
    if top_p < 1.0:
        want = TopPLogitsWarper(top_p, min_tokens_to_keep=1)(None, want)
    torch.testing.assert_close(warp_scores(logits, temperature, top_p), want, rtol=0, atol=0)


def test_draw_repeats_under_a_seed_and_rows_are_independent():
    scores = torch.randn(64, 501)  # [B, V]
    torch.manual_seed(7)
    ours = draw(scores)
    torch.manual_seed(7)
    assert torch.equal(draw(scores), ours)
    assert len(set(ours.tolist())) > 10  # not a constant draw
    same_rows = draw(scores[:1].expand(64, -1).contiguous())  # one distribution, 64 independent draws
    assert len(set(same_rows.tolist())) > 10


@pytest.mark.parametrize("top", [0.0, 1.0 - 2.0**-53, 1.0])
def test_draw_stays_inside_the_nucleus_at_either_end_of_the_unit_interval(monkeypatch, top):
    # The nucleus is the first 3 of 8 tokens; the tail has probability 0. A uniform at (or rounded up to) the
    # top of [0, 1) must still pick the last kept token, never a token past it (or an index past the vocabulary).
    scores = torch.tensor([[0.5, 1.0, 0.2] + [-float("inf")] * 5])  # [1, V]
    monkeypatch.setattr(torch, "rand", lambda *shape, **kw: torch.full(*shape, top, dtype=torch.float64))
    assert draw(scores).tolist() == [0 if top == 0.0 else 2]


def _nucleus_probs(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """The target distribution, written independently in float64: a token stays when the mass of the tokens
    at most as likely as it (itself included) exceeds 1 - top_p; the kept probabilities are renormalised."""
    p = (logits.double() / temperature).softmax(-1)  # [V]
    mass_up_to = torch.stack([p[p <= p[i]].sum() for i in range(p.numel())])  # [V]
    kept = torch.where(mass_up_to > 1 - top_p, p, torch.zeros_like(p))  # [V]
    return kept / kept.sum()


def _chi2(counts: torch.Tensor, probs: torch.Tensor) -> tuple[float, int]:
    expected = probs * counts.sum()  # [V]
    kept = probs > 0
    return float(((counts[kept] - expected[kept]) ** 2 / expected[kept]).sum()), int(kept.sum()) - 1


def test_draws_follow_the_truncated_tempered_softmax():
    logits = torch.tensor([2.0, 1.2, 0.9, 0.1, -0.5, -1.0, 1.6, -2.0])  # [V], no ties at the nucleus edge
    temperature, top_p, n = 0.7, 0.8, 40_000
    options = SamplingOptions(do_sample=True, temperature=temperature, top_p=top_p)
    tokens, logp = choose_tokens(logits.expand(n, -1).contiguous(), options)  # [n], [n]
    counts = torch.bincount(tokens, minlength=logits.numel()).double()  # [V]
    target = _nucleus_probs(logits, temperature, top_p)  # [V]
    assert 2 <= int((target > 0).sum()) < logits.numel()  # the truncation is active and leaves a choice
    assert counts[target == 0].sum() == 0  # nothing outside the nucleus is ever drawn
    stat, dof = _chi2(counts, target)
    assert stat < CHI2_CRITICAL_999[dof], (stat, dof, counts.tolist(), target.tolist())
    untruncated = (logits.double() / temperature).softmax(-1)  # the test can tell the two apart
    assert _chi2(counts, untruncated)[0] > CHI2_CRITICAL_999[logits.numel() - 1]
    # log-probs come from the tempered softmax before truncation: what the loss computes
    torch.testing.assert_close(logp, untruncated.log()[tokens].float(), rtol=1e-6, atol=1e-6)


def test_greedy_takes_the_argmax_with_untempered_logprobs():
    logits = torch.randn(5, 300)  # [B, V]
    tokens, logp = choose_tokens(logits, SamplingOptions(do_sample=False, temperature=0.5))
    assert torch.equal(tokens, logits.argmax(-1))
    torch.testing.assert_close(logp, logits.log_softmax(-1).max(-1).values)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"do_sample": True, "temperature": 0.0}, "temperature: must be > 0"), ({"do_sample": True, "top_p": 0}, "top_p")],
)
def test_bad_options_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingOptions(**kwargs)
