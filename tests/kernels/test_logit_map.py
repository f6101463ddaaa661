"""The logit map (scale, soft-cap, temperature): the models' own logits, the Triton tanh, the folded constants.

The float64 cases of the map (both implementations, forward and backward, entropy, frozen and trained head) live
in test_linear_pg_loss.py and test_logprob_features.py; here: that the map is the one Gemma-2, Cohere and
Granite apply (their own full-logits forward against the kernels), and the pieces the kernels build it from.
"""

from __future__ import annotations

import math

import pytest
import torch

from tests.model_families import FAMILIES, build_family_model
from tokrl_kernels import linear_logprob
from tokrl_kernels._logits import LogitMap

IMPLS = ["torch", "triton"]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", ["gemma2", "cohere", "granite", "llama"])
def test_kernels_give_the_models_own_log_probs(name: str, impl: str):
    # The model's forward applies its head transform to full logits; the kernels, given the family's softcap /
    # logit_scale, must give the same log-probs from the last hidden state and the head (fp32, 1e-5). The plain
    # map (no softcap, scale 1) must not: that shows the transform matters at these logits (llama has none).
    family = FAMILIES[name]
    model, _ = build_family_model(name)
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (2, 12))  # [B, L]
    with torch.no_grad():
        logits = model(input_ids=ids).logits.float()  # [B, L, V]
        hidden = model.get_decoder()(input_ids=ids).last_hidden_state  # [B, L, D]
    head = model.get_output_embeddings().weight  # [V, D]
    flat = hidden.reshape(-1, hidden.shape[-1])  # [B*L, D]
    targets = torch.randint(0, vocab, (flat.shape[0],))  # [B*L]
    temperature = 0.7
    expected = torch.log_softmax(logits.reshape(-1, vocab) / temperature, -1).gather(1, targets[:, None])[:, 0]
    with torch.no_grad():
        got = linear_logprob(
            flat,
            head,
            targets,
            temperature=temperature,
            softcap=family.softcap,
            logit_scale=family.logit_scale,
            impl=impl,
        )
        plain = linear_logprob(flat, head, targets, temperature=temperature, impl=impl)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    plain_err = (plain - expected).abs().max().item()
    if family.softcap is None and family.logit_scale == 1.0:
        assert plain_err <= 1e-5
    else:
        assert plain_err > 1e-3, f"control: {name}'s transform changes its log-probs by only {plain_err:.2e}"


def test_folded_constants():
    # z = y * z_scale (no cap: s / T); z = tanh(y * s / c) * c / T (cap); dz/dy = s / T (* (1 - t^2)).
    plain = LogitMap(temperature=2.0, softcap=None, logit_scale=0.5)
    assert (plain.z_scale, plain.cap_in, plain.grad_scale, plain.has_softcap) == (0.25, 1.0, 0.25, False)
    capped = LogitMap(temperature=2.0, softcap=30.0, logit_scale=0.5)
    assert (capped.z_scale, capped.cap_in, capped.grad_scale, capped.has_softcap) == (15.0, 0.5 / 30.0, 0.25, True)


pytest.importorskip("triton")
import triton  # noqa: E402  (after the skip)
import triton.language as tl  # noqa: E402

from tokrl_kernels._triton_tiles import INTERPRET, tanh_fp32  # noqa: E402


@triton.jit
def _tanh_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(y_ptr + offs, tanh_fp32(tl.load(x_ptr + offs, mask=mask, other=0.0)), mask=mask)


def test_tanh_fp32_within_a_few_ulp():
    # The interpreter's exp is numpy's (correctly rounded): 2 ulp. tests/kernels/test_gpu_kernels.py runs the same
    # check on CUDA, whose exp (ex2.approx) may add up to ~2 ulp near the branch boundary.
    if INTERPRET:
        check_tanh_fp32("cpu", bound_ulp=2.0)
    else:
        check_tanh_fp32("cuda", bound_ulp=4.0)


def check_tanh_fp32(device: str, bound_ulp: float) -> None:
    """Both branches, their boundary (0.625), tiny and saturated arguments, and the specials."""
    grid = torch.linspace(-12.0, 12.0, 24001, dtype=torch.float64)
    edges = torch.tensor(
        [0.0, 1e-30, 1e-8, 1e-3, 0.3, 0.6249999, 0.625, 0.6250001, 0.9, 9.0, 44.0, 100.0, 1e30], dtype=torch.float64
    )
    u = torch.cat([grid, edges, -edges]).float().to(device)  # [n] fp32
    specials = torch.tensor([math.inf, -math.inf, math.nan], device=device)
    x = torch.cat([u, specials])
    y = torch.empty_like(x)
    block = 1024
    _tanh_kernel[(triton.cdiv(x.numel(), block),)](x, y, x.numel(), BLOCK=block)
    t, t_special = y[: u.numel()].cpu(), y[u.numel() :].cpu()
    exact = torch.tanh(u.cpu().double())  # [n]
    ulp = torch.finfo(torch.float32).eps * torch.exp2(torch.floor(torch.log2(exact.abs().clamp_min(2.0**-126))))
    worst = ((t.double() - exact).abs() / ulp).max().item()
    assert worst <= bound_ulp, f"tanh_fp32 is {worst:.2f} ulp from tanh on {device} (bound {bound_ulp})"
    assert t_special[0].item() == 1.0 and t_special[1].item() == -1.0 and math.isnan(t_special[2].item())
