"""End-to-end update step at the paper's shape: forward to the loss, loss, backward; time, update peak memory
and forward tokens per method, with gradient checkpointing off and on.

The model: on CUDA, the Qwen2-1.5B architecture built from its config with random weights (bf16, no
download, sdpa attention); on CPU, tokrl's tiny Qwen2 model (fp32). Both with LoRA r=16 (alpha 32,
dropout 0.05, q/k/v/o/gate/up/down), as in the paper. The batch is the paper preset's: 4 prompts x 8
completions of 200 tokens after a SVAMP-length prompt (48 tokens), random token ids and random 0/1
rewards from a fixed seed. Completions branch off an earlier completion of their group at a depth drawn
from an exponential distribution with mean BRANCH_MEAN tokens (sampled completions of one prompt share
their first tokens and drift apart early), so T-SPMO finds branching points as in real groups.

The rows come from the real algorithms (`process_group`, `gather_rows`), and the tokrl variants run the function
the trainer's update runs first, `PolicyUpdate.loss_backward` (tokrl.stages.update, default LossConfig: one
micro-batch, beta 0): `pack_loss_batch` (only completions with a selected token, each cut after its own last
selected position, left-padded into one batch), the model's final hidden states (no logits) and
`tokrl_kernels.linear_pg_loss` (impl="auto": Triton on CUDA, the PyTorch twin on CPU), then backward. Variants:
- grpo_naive           the model's forward with full [B, L, V] logits, fp32 log_softmax, gather at every
                       completion token, `tokrl_kernels.reference.pg_epilogue`: full-token GRPO as TRL did it.
- grpo_tokrl           every completion token with tokrl.
- s-grpo_tokrl         S-GRPO's default (sequential) rule: alpha 25, k 50, P 0.5 -> last pick near position 75.
- s-grpo-spread_tokrl  S-GRPO's earlier spread rule: picks over the whole completion.
- t-spmo_tokrl         T-SPMO's (prefix, next token) rows.
`extra_info` adds `forward_tokens` (real tokens the forward ran over), `forward_padded` (rows x padded
length: what compute and activations scale with) and `grad_checkpointing`. Peak memory is MiB above what
was allocated before the call (the model's weights and the batch), so it is the update's own memory.

Before timing, every tokrl variant's loss and LoRA gradients are checked against the full-logits path on
the same rows (dropout off for the check), so a wrong selection-to-row mapping or truncation fails.
The timed step excludes the optimiser step (identical for all variants: only the LoRA weights train).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from bench_utils import DEVICE, ON_CUDA, build_bench_model, check_close, extra_info, peak_mib, rounds, sync

from tokrl.algorithms import AlgoConfig, Group, get_algorithm
from tokrl.config.sections import LossConfig, OptimConfig
from tokrl.models.forward import lm_head_weight
from tokrl.models.lora import apply_lora
from tokrl.stages.select import LossRows, gather_rows, pack_loss_batch
from tokrl.stages.update import PolicyUpdate
from tokrl_kernels.reference import pg_epilogue

PROMPTS, GROUP, PROMPT_LEN, COMPLETION_LEN = 4, 8, 48, 200
BRANCH_MEAN = 16.0  # mean depth (tokens) at which a completion leaves the one it shares a prefix with
LORA_R = 16
PAD_ID = 0
TOL = 5e-2 if ON_CUDA else 1e-4  # relative L2 error of loss and LoRA gradients against the full-logits path
# variant -> (algorithm, options); "_naive" variants use the full-logits loss on that algorithm's rows
VARIANTS = {
    "grpo_naive": ("grpo", {}),
    "grpo_tokrl": ("grpo", {}),
    "s-grpo_tokrl": ("s-grpo", {"selection": "sequential"}),
    "s-grpo-spread_tokrl": ("s-grpo", {"selection": "spread"}),
    "t-spmo_tokrl": ("t-spmo", {}),
}


def _build_model() -> tuple[torch.nn.Module, str]:
    model, name = build_bench_model()
    return apply_lora(model, r=LORA_R), name


@dataclass
class Batch:
    prompts: list[list[int]]  # B prompt rows (B = PROMPTS * GROUP)
    completions: list[list[int]]  # B completion rows
    input_ids: torch.Tensor  # [B, P + C] int64: every prompt + completion (no padding: equal lengths)
    rows: dict[str, LossRows]  # variant's algorithm -> its selected rows, weights normalised as the trainer does


def _completions(gen: torch.Generator, vocab: int) -> list[list[int]]:
    """G completions of COMPLETION_LEN tokens; each after the first copies an earlier one's first d tokens."""
    group: list[list[int]] = []
    for i in range(GROUP):
        fresh = torch.randint(1, vocab, (COMPLETION_LEN,), generator=gen).tolist()
        if i == 0:
            group.append(fresh)
            continue
        parent = group[int(torch.randint(0, i, (1,), generator=gen))]
        depth = int(torch.empty(1).exponential_(1.0 / BRANCH_MEAN, generator=gen))
        cut = min(depth, COMPLETION_LEN - 1)
        group.append(parent[:cut] + fresh[cut:])
    return group


def _make_batch(vocab: int) -> Batch:
    gen = torch.Generator().manual_seed(0)
    prompt_rows = torch.randint(1, vocab, (PROMPTS, PROMPT_LEN), generator=gen).tolist()  # Q x P
    groups = []
    for q in range(PROMPTS):
        rewards = (torch.rand(GROUP, generator=gen) < 0.5).float().tolist()
        rewards[0], rewards[1] = 1.0, 0.0  # every group carries signal
        groups.append(Group(_completions(gen, vocab), rewards, prompt_key=f"prompt-{q}"))
    prompts = [prompt_rows[q] for q in range(PROMPTS) for _ in range(GROUP)]
    completions = [c for g in groups for c in g.completions]
    input_ids = torch.tensor([p + c for p, c in zip(prompts, completions, strict=True)], device=DEVICE)
    rows = {}
    for variant, (algo_name, options) in VARIANTS.items():
        algo = get_algorithm(algo_name, AlgoConfig(**options))
        algo_gen = torch.Generator().manual_seed(1)
        rows[variant] = gather_rows([algo.process_group(g, algo_gen) for g in groups], GROUP)
    return Batch(prompts, completions, input_ids, rows)


def _naive_loss(model: torch.nn.Module, batch: Batch, rows: LossRows) -> torch.Tensor:
    """Full-token loss from the full [B, L, V] logits, then backward; returns the loss."""
    ids = batch.input_ids
    logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits  # [B, L, V]
    logprobs = torch.log_softmax(logits.float(), dim=-1)  # [B, L, V] fp32
    # Completion token t is predicted from the hidden state at prompt_len + t - 1.
    seq, pos = rows.row.to(DEVICE), rows.position.to(DEVICE)  # [k], [k]
    logp = logprobs[seq, PROMPT_LEN + pos - 1, rows.token.to(DEVICE)]  # [k]
    loss_rows, _clipped = pg_epilogue(
        logp, rows.advantage.to(DEVICE), None, None, rows.weight.to(DEVICE), eps_low=0.2, eps_high=0.2, beta=0.0
    )  # [k]
    loss = loss_rows.sum()
    loss.backward()
    return loss.detach()


def _trainer_update(model: torch.nn.Module) -> PolicyUpdate:
    """The trainer's update for `model`: default loss and optimiser sections, sampling temperature 1."""
    return PolicyUpdate(
        model, LossConfig(), OptimConfig(), steps=1, temperature=1.0, pad_id=PAD_ID, device=torch.device(DEVICE)
    )


def _tokrl_loss(model: torch.nn.Module, batch: Batch, rows: LossRows) -> torch.Tensor:
    """The trainer's own forward, loss and backward (PolicyUpdate.loss_backward); returns the loss."""
    totals = _SETUP["update"].loss_backward(batch.prompts, batch.completions, rows)
    return torch.tensor(totals.loss)


def _forward_tokens(batch: Batch, variant: str) -> tuple[int, int]:
    """(real tokens, rows x padded length) of the variant's loss forward."""
    if variant.endswith("_naive"):
        n = batch.input_ids.numel()
        return n, n
    packed, _index = pack_loss_batch(batch.prompts, batch.completions, batch.rows[variant], PAD_ID, "cpu")
    return int(packed.attention_mask.sum()), packed.input_ids.numel()


def _loss_fn(variant: str):
    return _naive_loss if variant.endswith("_naive") else _tokrl_loss


_SETUP: dict[str, object] = {}


def _setup() -> tuple[torch.nn.Module, str, Batch]:
    if not _SETUP:
        model, name = _build_model()
        _SETUP.update(model=model, name=name, batch=_make_batch(lm_head_weight(model).shape[0]))
        _SETUP["update"] = _trainer_update(model)
    return _SETUP["model"], _SETUP["name"], _SETUP["batch"]


def _lora_grads(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.flatten().float() for p in model.parameters() if p.requires_grad])


def _check(model: torch.nn.Module, batch: Batch, variant: str) -> None:
    """The variant's loss and LoRA gradients equal the full-logits path's on the same rows."""
    if variant.endswith("_naive"):
        return  # it is the reference
    rows = batch.rows[variant]
    dropouts = [(m, m.p) for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    for module, _ in dropouts:  # no dropout: both passes must see the same network (the update runs train mode)
        module.p = 0.0
    results = []
    for fn in (_naive_loss, _tokrl_loss):
        model.zero_grad(set_to_none=True)
        results.append((fn(model, batch, rows), _lora_grads(model)))
    model.zero_grad(set_to_none=True)
    for module, p in dropouts:
        module.p = p
    model.train()
    (want_loss, want_grad), (got_loss, got_grad) = results
    scale = float((rows.weight * rows.advantage.abs()).sum())
    err = abs(float(got_loss) - float(want_loss)) / scale
    assert err <= TOL, f"{variant}: loss error {err:.3e} (relative to sum |w*A|) > {TOL:.1e}"
    check_close(f"{variant} LoRA grads", got_grad, want_grad, TOL)


def _set_checkpointing(model: torch.nn.Module, on: bool) -> None:
    if on:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_disable()


@pytest.mark.parametrize("checkpointing", [False, True], ids=["ckpt_off", "ckpt_on"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_train_step(benchmark, variant: str, checkpointing: bool) -> None:
    model, model_name, batch = _setup()
    _set_checkpointing(model, checkpointing)
    _check(model, batch, variant)
    rows = batch.rows[variant]
    loss_fn = _loss_fn(variant)
    model.train()

    def step() -> torch.Tensor:
        loss = loss_fn(model, batch, rows)  # forward, loss and backward
        sync()
        return loss

    def clear_grads() -> None:
        model.zero_grad(set_to_none=True)

    try:
        clear_grads()
        peak, seconds = peak_mib(step)
        benchmark.group = (
            f"train_step {model_name} {PROMPTS}x{GROUP}x{COMPLETION_LEN} prompt {PROMPT_LEN} LoRA r={LORA_R} "
            f"grad ckpt {'on' if checkpointing else 'off'}"
        )
        benchmark.pedantic(step, setup=clear_grads, iterations=1, **rounds(seconds))
        clear_grads()
    finally:
        _set_checkpointing(model, False)
    head = lm_head_weight(model)
    real, padded = _forward_tokens(batch, variant)
    info = extra_info(
        provider=variant,
        mode="train_step",
        n_rows=PROMPTS * GROUP * COMPLETION_LEN,
        n_selected=len(rows),
        hidden=head.shape[1],
        vocab=head.shape[0],
        dtype=head.dtype,
        peak_mem_mib=peak,
        tflops=None,
    )
    info.update(
        model=model_name, lora_r=LORA_R, grad_checkpointing=checkpointing, forward_tokens=real, forward_padded=padded
    )
    benchmark.extra_info.update(info)
