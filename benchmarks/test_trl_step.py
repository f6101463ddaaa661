"""TRL's GRPOTrainer loss step with and without `use_tokrl_kernels`: time and peak memory per variant.

One `trainer.compute_loss(model, inputs)` + backward on a fixed GRPO batch (generation excluded: it is the same
for every variant). The model: on CUDA the Qwen2-1.5B architecture with random weights (bf16, sdpa, gradient
checkpointing off), on CPU tokrl's tiny Qwen2 (fp32); LoRA r=16 on q/k/v/o/gate/up/down in both. The batch:
B completions of C tokens after a P-token prompt, some completions ending early, advantages of both signs,
off-policy old log-probs (so TRL computes the clipped ratio), loss_type "grpo", beta 0.
Variants:
- trl            plain GRPOTrainer: TRL's fused LM head (`ChunkedLogProbFunction`) and TRL's loss.
- tokrl_logprob  use_tokrl_kernels(mode="logprob"): the fused head through tokrl_kernels.linear_logprob.
- tokrl_pg_loss  use_tokrl_kernels(mode="pg_loss"): the loss as one tokrl_kernels.linear_pg_loss call.
Before timing, each tokrl variant's loss and LoRA gradients are checked against the plain trainer's.
On CPU, tokrl runs its PyTorch twin (impl="auto" without CUDA); TRL runs its PyTorch path: GPU figures pending.
"""

from __future__ import annotations

import pytest
import torch
from bench_utils import DEVICE, ON_CUDA, build_bench_model, check_close, extra_info, peak_mib, rounds, sync

trl = pytest.importorskip("trl", reason="TRL is an optional extra: pip install tokrl[trl]")

from datasets import Dataset  # noqa: E402
from peft import LoraConfig  # noqa: E402

from tokrl.config import PAPER_LORA_TARGETS  # noqa: E402
from tokrl.integrations.trl import use_tokrl_kernels  # noqa: E402
from tokrl.models.tokenizer import build_char_tokenizer  # noqa: E402

BATCH, PROMPT_LEN, COMPLETION_LEN = (8, 64, 512) if ON_CUDA else (8, 16, 64)
LORA_R = 16
TOL = 2e-2 if ON_CUDA else 1e-5  # relative L2 error of loss and LoRA gradients against the plain trainer
VARIANTS = ("trl", "tokrl_logprob", "tokrl_pg_loss")


def _model() -> tuple[torch.nn.Module, str]:
    return build_bench_model(pad_token_id=0, eos_token_id=1)


def _trainer(variant: str, tmp_path) -> trl.GRPOTrainer:
    model, name = _model()
    args = trl.GRPOConfig(
        output_dir=str(tmp_path / variant),
        per_device_train_batch_size=BATCH,
        num_generations=BATCH,
        max_completion_length=COMPLETION_LEN,
        loss_type="grpo",
        beta=0.0,
        report_to="none",
        use_cpu=not ON_CUDA,
        bf16=ON_CUDA,
        gradient_checkpointing=False,
        disable_tqdm=True,
    )
    lora = LoraConfig(r=LORA_R, lora_alpha=2 * LORA_R, lora_dropout=0.0, target_modules=list(PAPER_LORA_TARGETS))
    trainer = trl.GRPOTrainer(
        model=model,
        reward_funcs=lambda completions, **kw: [0.0] * len(completions),
        args=args,
        peft_config=lora,
        train_dataset=Dataset.from_dict({"prompt": ["x"] * BATCH}),
        processing_class=build_char_tokenizer(),
    )
    if variant != "trl":
        use_tokrl_kernels(trainer, mode=variant.removeprefix("tokrl_"))
    trainer.model.to(DEVICE).train()
    trainer.current_gradient_accumulation_steps = 1
    trainer.model_name = name
    return trainer


def _inputs(trainer, vocab: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    completion_mask = torch.ones(BATCH, COMPLETION_LEN, dtype=torch.long)
    for b in range(0, BATCH, 3):  # some completions end early
        completion_mask[b, COMPLETION_LEN // 2 + b :] = 0
    inputs = {
        "prompt_ids": torch.randint(3, vocab, (BATCH, PROMPT_LEN), generator=gen),
        "prompt_mask": torch.ones(BATCH, PROMPT_LEN, dtype=torch.long),
        "completion_ids": torch.randint(3, vocab, (BATCH, COMPLETION_LEN), generator=gen),
        "completion_mask": completion_mask,
        "advantages": torch.randn(BATCH, generator=gen),
        "num_items_in_batch": completion_mask.sum().float(),
    }
    inputs = {k: v.to(DEVICE) for k, v in inputs.items()}
    with torch.no_grad():
        ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
        mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)
        logps, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, COMPLETION_LEN)
    noise = torch.randn(logps.shape, generator=gen).to(DEVICE)
    inputs["old_per_token_logps"] = (logps + 0.2 * noise).float()
    return inputs


def _step(trainer, inputs) -> tuple[torch.Tensor, torch.Tensor]:
    trainer.model.zero_grad(set_to_none=True)
    loss = trainer.compute_loss(trainer.model, inputs)
    loss.backward()
    sync()
    grads = torch.cat([p.grad.flatten().float() for p in trainer.model.parameters() if p.requires_grad])
    return loss.detach(), grads


_REFERENCE: dict[str, object] = {}


@pytest.mark.parametrize("variant", VARIANTS)
def test_trl_step(benchmark, variant: str, tmp_path) -> None:
    trainer = _trainer(variant, tmp_path)
    head = trainer.model.get_output_embeddings().weight
    if not _REFERENCE:  # the same inputs for every variant; the plain trainer's results are the reference
        plain = trainer if variant == "trl" else _trainer("trl", tmp_path)
        inputs = _inputs(plain, head.shape[0])
        _REFERENCE.update(inputs=inputs, result=_step(plain, inputs))
        del plain
    inputs = _REFERENCE["inputs"]
    if variant != "trl":
        loss, grads = _step(trainer, inputs)
        want_loss, want_grads = _REFERENCE["result"]
        check_close(f"{variant} loss", loss.reshape(1), want_loss.reshape(1), TOL)
        check_close(f"{variant} LoRA grads", grads, want_grads, TOL)

    def step() -> torch.Tensor:
        loss = trainer.compute_loss(trainer.model, inputs)
        loss.backward()
        sync()
        return loss.detach()

    def clear_grads() -> None:
        trainer.model.zero_grad(set_to_none=True)

    clear_grads()
    peak, seconds = peak_mib(step)
    benchmark.group = f"trl_step {trainer.model_name} {BATCH}x({PROMPT_LEN}+{COMPLETION_LEN}) LoRA r={LORA_R}"
    benchmark.pedantic(step, setup=clear_grads, iterations=1, **rounds(seconds))
    clear_grads()
    info = extra_info(
        provider=variant,
        mode="trl_step",
        n_rows=BATCH * COMPLETION_LEN,
        n_selected=int(inputs["completion_mask"].sum()),
        hidden=head.shape[1],
        vocab=head.shape[0],
        dtype=head.dtype,
        peak_mem_mib=peak,
        tflops=None,
    )
    info.update(model=trainer.model_name, lora_r=LORA_R, grad_checkpointing=False, trl_version=trl.__version__)
    benchmark.extra_info.update(info)
