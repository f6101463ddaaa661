"""End-to-end step: forward to the loss, loss, backward, for one GRPO batch; time and peak memory per method.

The model: on CUDA, the Qwen2-1.5B architecture built from its config with random weights (bf16, no
download, gradient checkpointing OFF, sdpa attention); on CPU, tokrl's tiny Qwen2 model (fp32). Both with
LoRA r=16 (alpha 32, dropout 0.05, q/k/v/o/gate/up/down), as in the paper. The batch: 4 prompts x 8
completions of 256 tokens after a 32-token prompt, random token ids and random 0/1 rewards from a fixed
seed. Completions branch off earlier completions of their group at random depths, so prefixes are shared
as in real sampling and T-SPMO finds branching points deeper than the first token.

The real algorithms choose the rows (`process_group`); weights are divided by the batch's norm_units,
as the trainer does. Variants:
- grpo_naive    the model's forward with full [B, L, V] logits, fp32 log_softmax, gather at the selected
                rows, `tokrl_kernels.reference.pg_epilogue`: what full-token GRPO costs with TRL today.
- grpo_tokrl    `tokrl.models.hidden_states` (no logits) + `tokrl_kernels.linear_pg_loss` at every token.
- s-grpo_tokrl  the same at S-GRPO's rows, forward truncated after the last selected position.
- t-spmo_tokrl  the same at T-SPMO's (prefix, next token) rows, forward truncated likewise.
`linear_pg_loss` runs with impl="auto": Triton on CUDA, the PyTorch twin on CPU.

Before timing, every tokrl variant's loss and LoRA gradients are checked against the full-logits path on
the same rows (dropout off for the check), so a wrong selection-to-row mapping or truncation fails.
The timed step excludes the optimiser step (identical for all variants: only the LoRA weights train).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from bench_utils import DEVICE, ON_CUDA, check_close, extra_info, peak_mib, rounds, sync

import tokrl_kernels
from tokrl.algorithms import Group, get_algorithm
from tokrl.models import apply_lora, build_tiny_model, hidden_states, lm_head_weight
from tokrl_kernels.reference import pg_epilogue

PROMPTS, GROUP, PROMPT_LEN, COMPLETION_LEN = 4, 8, 32, 256
LORA_R = 16
TOL = 5e-2 if ON_CUDA else 1e-4  # relative L2 error of loss and LoRA gradients against the full-logits path
VARIANTS = ("grpo_naive", "grpo_tokrl", "s-grpo_tokrl", "t-spmo_tokrl")


def _build_model() -> tuple[torch.nn.Module, str]:
    if ON_CUDA:
        from transformers import Qwen2Config, Qwen2ForCausalLM

        config = Qwen2Config(
            vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
            num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=131072,
            tie_word_embeddings=True, rope_theta=1e6, rms_norm_eps=1e-6, use_cache=False, attn_implementation="sdpa",
        )  # fmt: skip  # Qwen2-1.5B
        torch.manual_seed(0)
        with torch.device(DEVICE):
            model = Qwen2ForCausalLM(config).to(torch.bfloat16)
        name = "qwen2-1.5b-arch (random weights, bf16, grad ckpt off)"
    else:
        model, _tokenizer = build_tiny_model(seed=0)
        name = "tokrl tiny qwen2 (fp32)"
    return apply_lora(model, r=LORA_R), name


@dataclass
class Batch:
    input_ids: torch.Tensor  # [B, P + C] int64
    attention_mask: torch.Tensor  # [B, P + C]
    rows: dict[str, dict[str, torch.Tensor]]  # algorithm -> {"sequence", "position", "token", "advantage", "weight"}


def _completions(gen: torch.Generator, vocab: int) -> list[list[int]]:
    """G completions of COMPLETION_LEN tokens; each after the first copies a prefix of an earlier one."""
    group: list[list[int]] = []
    for i in range(GROUP):
        fresh = torch.randint(0, vocab, (COMPLETION_LEN,), generator=gen).tolist()
        if i == 0:
            group.append(fresh)
            continue
        parent = group[int(torch.randint(0, i, (1,), generator=gen))]
        cut = int(torch.randint(0, COMPLETION_LEN, (1,), generator=gen))
        group.append(parent[:cut] + fresh[cut:])
    return group


def _make_batch(vocab: int) -> Batch:
    gen = torch.Generator().manual_seed(0)
    prompts = torch.randint(0, vocab, (PROMPTS, PROMPT_LEN), generator=gen)  # [Q, P]
    groups = []
    for q in range(PROMPTS):
        rewards = (torch.rand(GROUP, generator=gen) < 0.5).float().tolist()
        rewards[0], rewards[1] = 1.0, 0.0  # every group carries signal
        groups.append(Group(_completions(gen, vocab), rewards, prompt_key=f"prompt-{q}"))
    completions = torch.tensor([c for g in groups for c in g.completions])  # [B, C]
    input_ids = torch.cat([prompts.repeat_interleave(GROUP, dim=0), completions], dim=1)  # [B, P + C]
    rows = {}
    for algo_name in ("grpo", "s-grpo", "t-spmo"):
        algo = get_algorithm(algo_name)
        algo_gen = torch.Generator().manual_seed(1)
        selections = [algo.process_group(g, algo_gen) for g in groups]
        norm = max(sum(s.norm_units for s in selections), 1.0)
        rows[algo_name] = {
            "sequence": torch.cat([s.completion + q * GROUP for q, s in enumerate(selections)]),  # [k]
            "position": torch.cat([s.position for s in selections]),  # [k]
            "token": torch.cat([s.token for s in selections]),  # [k]
            "advantage": torch.cat([s.advantage for s in selections]),  # [k] fp32
            "weight": torch.cat([s.weight for s in selections]) / norm,  # [k] fp32
        }
        rows[algo_name] = {key: value.to(DEVICE) for key, value in rows[algo_name].items()}
    return Batch(input_ids.to(DEVICE), torch.ones_like(input_ids, device=DEVICE), rows)


def _naive_loss(model: torch.nn.Module, batch: Batch, sel: dict[str, torch.Tensor]) -> torch.Tensor:
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits  # [B,L,V]
    logprobs = torch.log_softmax(logits.float(), dim=-1)  # [B, L, V] fp32
    # Completion token t is predicted from the hidden state at prompt_len + t - 1.
    logp = logprobs[sel["sequence"], PROMPT_LEN + sel["position"] - 1, sel["token"]]  # [k]
    loss_rows, _clipped = pg_epilogue(
        logp, sel["advantage"], None, None, sel["weight"], eps_low=0.2, eps_high=0.2, beta=0.0
    )  # [k]
    return loss_rows.sum()


def _tokrl_loss(model: torch.nn.Module, batch: Batch, sel: dict[str, torch.Tensor]) -> torch.Tensor:
    length = PROMPT_LEN + int(sel["position"].max())  # the forward stops after the last selected position
    hidden = hidden_states(model, batch.input_ids[:, :length], batch.attention_mask[:, :length])  # [B, L', D]
    index = sel["sequence"] * length + PROMPT_LEN + sel["position"] - 1  # [k] rows of the flattened hidden
    out = tokrl_kernels.linear_pg_loss(
        hidden.reshape(-1, hidden.shape[-1]), lm_head_weight(model), sel["token"], sel["advantage"], index,
        weights=sel["weight"],
    )  # fmt: skip
    return out.loss


def _algorithm(variant: str) -> str:
    return variant.split("_")[0]


def _loss_fn(variant: str):
    return _naive_loss if variant.endswith("_naive") else _tokrl_loss


_SETUP: dict[str, object] = {}


def _setup() -> tuple[torch.nn.Module, str, Batch]:
    if not _SETUP:
        model, name = _build_model()
        _SETUP.update(model=model, name=name, batch=_make_batch(lm_head_weight(model).shape[0]))
    return _SETUP["model"], _SETUP["name"], _SETUP["batch"]


def _lora_grads(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.flatten().float() for p in model.parameters() if p.requires_grad])


def _check(model: torch.nn.Module, batch: Batch, variant: str) -> None:
    """The variant's loss and LoRA gradients equal the full-logits path's on the same rows."""
    if variant.endswith("_naive"):
        return  # it is the reference
    sel = batch.rows[_algorithm(variant)]
    model.eval()  # no dropout: both passes must see the same network
    results = []
    for fn in (_naive_loss, _tokrl_loss):
        model.zero_grad(set_to_none=True)
        loss = fn(model, batch, sel)
        loss.backward()
        results.append((loss.detach(), _lora_grads(model)))
    model.zero_grad(set_to_none=True)
    model.train()
    (want_loss, want_grad), (got_loss, got_grad) = results
    scale = float((sel["weight"] * sel["advantage"].abs()).sum())
    err = abs(float(got_loss) - float(want_loss)) / scale
    assert err <= TOL, f"{variant}: loss error {err:.3e} (relative to sum |w*A|) > {TOL:.1e}"
    check_close(f"{variant} LoRA grads", got_grad, want_grad, TOL)


@pytest.mark.parametrize("variant", VARIANTS)
def test_train_step(benchmark, variant: str) -> None:
    model, model_name, batch = _setup()
    _check(model, batch, variant)
    sel = batch.rows[_algorithm(variant)]
    loss_fn = _loss_fn(variant)
    model.train()

    def step() -> torch.Tensor:
        loss = loss_fn(model, batch, sel)
        loss.backward()
        sync()
        return loss.detach()

    def clear_grads() -> None:
        model.zero_grad(set_to_none=True)

    clear_grads()
    peak, seconds = peak_mib(step)
    benchmark.group = f"train_step {model_name} {PROMPTS}x{GROUP}x{COMPLETION_LEN} LoRA r={LORA_R}"
    benchmark.pedantic(step, setup=clear_grads, iterations=1, **rounds(seconds))
    clear_grads()
    head = lm_head_weight(model)
    info = extra_info(
        provider=variant, mode="train_step", n_rows=PROMPTS * GROUP * COMPLETION_LEN,
        n_selected=int(sel["token"].numel()), hidden=head.shape[1], vocab=head.shape[0], dtype=head.dtype,
        peak_mem_mib=peak, tflops=None,
    )  # fmt: skip
    info.update(model=model_name, lora_r=LORA_R, grad_checkpointing=False)
    benchmark.extra_info.update(info)
