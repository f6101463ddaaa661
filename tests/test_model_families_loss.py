"""The loss path serves every family: `models.hidden_states` + the kernels give the model's own log-probs and
gradients (fp32, 1e-5).

For each family of `tests/model_families.py` (tied and untied heads, MoE, logit scale and soft-cap), a left-padded
batch of prompts + completions goes through both paths:

    tokrl: hidden_states(model, ids, mask) [B, L, D] -> linear_logprob(rows, W, targets, **logit_transform) [k]
    model: model(ids, mask, position_ids).logits [B, L, V] -> log_softmax(logits / T) gathered at the targets [k]

and the same weighted sum of the log-probs is backpropagated through each: with LoRA (all-linear, random A and B,
so every adapter gradient is non-zero) the LoRA gradients must agree, and in a full fine-tune (the warm start)
every gradient must, the LM head's (or tied embedding's) included.
"""

from __future__ import annotations

import pytest
import torch

from tests.model_families import FAMILIES, build_family_model
from tokrl.config import load_config
from tokrl.models.forward import hidden_states, lm_head_weight
from tokrl.models.head import logit_transform
from tokrl.models.lora import apply_lora
from tokrl.stages.select import LossRows
from tokrl.stages.update import PolicyUpdate
from tokrl.stages.warm_start import sft_loss
from tokrl_kernels import linear_logprob

TOL = 1e-5
TEMPERATURE = 0.7  # != 1: the transform and the temperature must compose in the right order
# Left padding of different lengths and several real tokens per row (wrong position ids would show).
TEXTS = ["12*3=36", "7*8=5", "Tom has 3 apples; 2 more?"]


def _batch(tokenizer):
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    ids, mask = batch["input_ids"], batch["attention_mask"]  # [B, L]
    real = mask.bool()
    real[:, -1] = False  # the last column predicts nothing
    b, t = real.nonzero(as_tuple=True)  # every real position predicts the next token
    index = b * ids.shape[1] + t  # [k] flat hidden rows
    targets = ids[b, t + 1]  # [k]
    weights = torch.rand(len(index)) + 0.5  # [k] distinct per row, so a permuted row would show
    return ids, mask, index, targets, weights


def _tokrl_logp(model, ids, mask, index, targets):
    hidden = hidden_states(model, ids, mask)  # [B, L, D]
    flat = hidden.reshape(-1, hidden.shape[-1])  # [B * L, D]
    kwargs = logit_transform(model).kernel_kwargs()
    return linear_logprob(flat, lm_head_weight(model), targets, index, temperature=TEMPERATURE, impl="torch", **kwargs)


def _model_logp(model, ids, mask, index, targets):
    positions = (mask.cumsum(-1) - 1).clamp_min(0)  # [B, L] as hidden_states counts them
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits.float()  # [B, L, V]
    logp = torch.log_softmax(logits / TEMPERATURE, dim=-1).reshape(-1, logits.shape[-1])  # [B * L, V]
    return logp[index, targets]  # [k]


def _grads(model, logp, weights):
    model.zero_grad(set_to_none=True)
    (weights * logp).sum().backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}


def _compare(model, batch):
    ids, mask, index, targets, weights = batch
    ours = _tokrl_logp(model, ids, mask, index, targets)
    grads = _grads(model, ours, weights)
    theirs = _model_logp(model, ids, mask, index, targets)
    grads_ref = _grads(model, theirs, weights)
    assert ours.shape == theirs.shape == (len(index),)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=TOL)
    assert grads.keys() == grads_ref.keys() and grads
    for name, g_ref in grads_ref.items():
        scale = g_ref.abs().max()
        assert scale > 0, f"{name}: zero gradient, the comparison would prove nothing"
        diff = (grads[name] - g_ref).abs().max()
        assert diff <= TOL * max(1.0, scale), f"{name}: {diff:.3g} vs |g| {scale:.3g}"
    return grads


@pytest.mark.parametrize("family", list(FAMILIES))
def test_lora_logprobs_and_gradients_match_the_model(family):
    model, tokenizer = build_family_model(family)
    model = apply_lora(model, r=4, alpha=8, dropout=0.0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.1)  # peft starts B at zero: make every adapter change the output
    model.eval()
    grads = _compare(model, _batch(tokenizer))
    assert all("lora_" in name for name in grads)
    assert not lm_head_weight(model).requires_grad


@pytest.mark.parametrize("family", list(FAMILIES))
def test_full_finetune_gradients_match_the_model(family):
    """The warm start trains every weight, the head through the kernels' dW (tied: the embedding's gradient
    adds the input side and the head side)."""
    model, tokenizer = build_family_model(family)
    grads = _compare(model, _batch(tokenizer))
    head = lm_head_weight(model)
    head_name = next(name for name, p in model.named_parameters() if p is head)
    assert head_name in grads
    assert (head is model.get_input_embeddings().weight) == FAMILIES[family].tied


def test_the_transform_is_read_from_the_config():
    """Each family's expected head transform (tests/model_families.py) is what logit_transform reads."""
    for name, family in FAMILIES.items():
        transform = logit_transform(build_family_model(name)[0])
        assert transform.logit_scale == pytest.approx(family.logit_scale), name
        assert transform.softcap == family.softcap, name


@pytest.mark.parametrize("family", list(FAMILIES))
def test_the_trainer_update_reads_the_model_distribution(family, tmp_path):
    """tokrl's own update (PolicyUpdate: its linear_pg_loss and, with beta > 0, its reference log-probs) scores
    each completion token as the model's own forward does, logit scale and soft-cap included."""
    model, tokenizer = build_family_model(family)
    model = apply_lora(model, r=4, alpha=8, dropout=0.0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.1)
    prompts = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in ("12*3=", "Tom has 3 apples;")]
    completions = [[7, 19, 4, 11], [23, 5, 9]]
    row, position = zip(*[(b, t) for b, c in enumerate(completions) for t in range(len(c))], strict=True)
    rows = LossRows(
        row=torch.tensor(row),
        position=torch.tensor(position),
        token=torch.tensor([completions[b][t] for b, t in zip(row, position, strict=True)]),
        advantage=torch.randn(len(row)),
        weight=torch.full((len(row),), 1.0 / len(row)),
    )

    def own_logp():  # each sequence alone, unpadded, through the model's own forward and logits
        out = []
        with torch.no_grad():
            for p, c in zip(prompts, completions, strict=True):
                logits = model(input_ids=torch.tensor([p + c])).logits[0, len(p) - 1 : -1].float()  # [len(c), V]
                out.append(torch.log_softmax(logits / TEMPERATURE, -1)[torch.arange(len(c)), torch.tensor(c)])
        return torch.cat(out)  # [k]

    for module in model.modules():  # GPT-2's own dropout (0.1) would be active in the train-mode loss forward
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    model.eval()
    want = own_logp()
    with model.disable_adapter():
        want_ref = own_logp()
    config = load_config(beta=0.04, lora_dropout=0.0, temperature=TEMPERATURE, impl="torch", device="cpu")
    update = PolicyUpdate.for_run(model, config, tokenizer.pad_token_id, torch.device("cpu"))
    (part,) = update._micro_batches(prompts, completions, rows)
    torch.testing.assert_close(part.ref_logp, want_ref, rtol=TOL, atol=TOL)
    result = update.apply(prompts, completions, rows, step=0, selected=len(rows))
    torch.testing.assert_close(result.logp, want, rtol=TOL, atol=TOL)  # pi_old: the first iteration's log-probs


@pytest.mark.parametrize("family", list(FAMILIES))
def test_the_warm_start_loss_is_the_model_cross_entropy(family):
    """The warm start's loss (sft_loss: hidden states + linear_logprob) is the model's own mean next-token NLL
    on the completion tokens, logit scale and soft-cap included."""
    model, tokenizer = build_family_model(family)
    prompts = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in ("7*8=", "Tom has 3 apples; 2 more?")]
    completions = [[11, 4, 1], [9, 30, 6, 1]]
    labels = [torch.tensor([-100] * (len(p) - 1) + c) for p, c in zip(prompts, completions, strict=True)]
    with torch.no_grad():
        nll = [
            torch.nn.functional.cross_entropy(
                model(input_ids=torch.tensor([p + c[:-1]])).logits[0].float(), y, reduction="sum"
            )
            for p, c, y in zip(prompts, completions, labels, strict=True)
        ]
        got = sft_loss(model, prompts, completions, tokenizer.pad_token_id, impl="torch")
    want = torch.stack(nll).sum() / sum(len(c) for c in completions)
    torch.testing.assert_close(got, want, rtol=TOL, atol=TOL)
