"""The shared-prompt loss forward equals the packed forward in both layouts (two passes; one pass over prefix
trees): log-probs and LoRA gradients, every model family; the layouts by hand, and the choice between them.

Rows are built the way a step builds them: G completions per prompt, some prompts repeated across groups (a
prompt may come twice in a batch) or longer than others (a T-SPMO replay prefix), completions of a group that
share prefixes (a tree node read by several rows), selected positions that include 0 (read at the prompt's
last column) and rows whose only selection is position 0 (no continuation row at all). LoRA dropout is off
so both forwards see the same network; the LoRA B weights are randomised so the adapter changes the hidden
states and its gradients are not trivially zero.
"""

from __future__ import annotations

import logging

import pytest
import torch

from tests.model_families import FAMILIES, build_family_model
from tests.trainer_helpers import HashRewardTrainer, small_config
from tokrl.models.forward import hidden_states, lm_head_weight
from tokrl.models.lora import apply_lora
from tokrl.stages.prefix_tree import PrefixTreeBatch, PrefixTrees, pack_prefix_trees
from tokrl.stages.prompt_sharing import pack_shared_prompts, pack_two_passes, shared_prompt_hidden, unsupported_reason
from tokrl.stages.select import LossRows, pack_loss_batch
from tokrl.stages.update import PACKED
from tokrl_kernels import linear_logprob

PAD = 0


def _rows_and_batch(vocab: int, seed: int) -> tuple[list[list[int]], list[list[int]], LossRows]:
    gen = torch.Generator().manual_seed(seed)
    draw = lambda n: torch.randint(3, vocab, (n,), generator=gen).tolist()  # noqa: E731
    distinct = [draw(5), draw(7), draw(3)]
    group_prompts = [distinct[0], distinct[1], distinct[0], distinct[2]]  # prompt 0 in two groups
    prompts = [p for p in group_prompts for _ in range(3)]  # G = 3
    stems = [draw(3) for _ in group_prompts]  # rows of a group start alike, as sampled answers often do
    completions = [
        stems[b // 3][: int(torch.randint(0, 4, (1,), generator=gen))]
        + draw(int(torch.randint(1, 4, (1,), generator=gen)))
        for b in range(len(prompts))
    ]
    row, position = [], []
    for b, completion in enumerate(completions):
        if b % 5 == 4:
            continue  # a row with nothing selected
        picks = [0] if b % 4 == 1 else sorted({0, len(completion) - 1, int(torch.randint(len(completion), (1,)))})
        row += [b] * len(picks)
        position += picks
    token = [completions[b][t] for b, t in zip(row, position, strict=True)]
    k = len(row)
    rows = LossRows(torch.tensor(row), torch.tensor(position), torch.tensor(token), torch.randn(k), torch.rand(k))
    return prompts, completions, rows


def _lora_model(name: str) -> torch.nn.Module:
    model, _ = build_family_model(name)
    model = apply_lora(model, r=4, dropout=0.0, target_modules="all-linear")  # every family's own linear layers
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0.0, 0.3, generator=torch.Generator().manual_seed(len(n)))
    return model.eval()


def _logp_and_grads(model, flat_hidden, index, rows):
    logp = linear_logprob(flat_hidden, lm_head_weight(model), rows.token, index, impl="torch")  # [k]
    (logp * rows.advantage).sum().backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad])
    model.zero_grad(set_to_none=True)
    return logp.detach(), grads


LAYOUTS = {
    "two passes": lambda p, c, rows, pad, device: pack_two_passes(PrefixTrees.build(p, c, rows), c, rows, pad, device),
    "prefix trees": lambda p, c, rows, pad, device: pack_prefix_trees(PrefixTrees.build(p, c, rows), rows, pad, device),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("name", list(FAMILIES))
def test_shared_prompt_forward_equals_packed_forward(name, layout):
    model = _lora_model(name)
    reason = unsupported_reason(model)
    if reason is not None:  # refused with a reason the error message can show, never run half-right
        assert name in ("gemma2", "gemma3") and "sliding" in reason, reason
        return
    prompts, completions, rows = _rows_and_batch(lm_head_weight(model).shape[0], seed=len(name))
    packed, packed_index = pack_loss_batch(prompts, completions, rows, PAD, torch.device("cpu"))
    hidden = hidden_states(model, packed.input_ids, packed.attention_mask)
    want_logp, want_grads = _logp_and_grads(model, hidden.reshape(-1, hidden.shape[-1]), packed_index, rows)
    shared, index = LAYOUTS[layout](prompts, completions, rows, PAD, torch.device("cpu"))
    got_logp, got_grads = _logp_and_grads(model, shared_prompt_hidden(model, shared), index, rows)
    torch.testing.assert_close(got_logp, want_logp, rtol=1e-5, atol=1e-5)
    assert want_grads.abs().max() > 0
    torch.testing.assert_close(got_grads, want_grads, rtol=1e-4, atol=1e-5 * float(want_grads.abs().max()))
    # Fewer tokens: each distinct prompt once (3 here, for 12 rows), then each row's continuation or each
    # distinct prefix once.
    assert int(shared.tokens) < int(packed.attention_mask.sum())
    if layout == "prefix trees":
        assert len(set(index.tolist())) < len(index)  # some rows read a shared node: the check is not trivial


def test_layout_by_hand():
    # Rows 0, 1 share prompt [7, 8]; row 2 has prompt [9]. Row 1 selects only position 0 (no continuation).
    prompts, completions = [[7, 8], [7, 8], [9]], [[11, 12, 13], [14, 15], [16, 17]]
    rows = LossRows(
        torch.tensor([0, 0, 1, 2]),
        torch.tensor([0, 2, 0, 1]),
        torch.tensor([11, 13, 14, 17]),
        torch.zeros(4),
        torch.ones(4),
    )
    batch, index = pack_two_passes(PrefixTrees.build(prompts, completions, rows), completions, rows, PAD, "cpu")
    assert batch.prompt_ids.tolist() == [[7, 8], [0, 9]] and batch.prompt_mask.tolist() == [[1, 1], [0, 1]]
    assert batch.ids.tolist() == [[11, 12], [16, 0]] and batch.mask.tolist() == [[1, 1], [1, 0]]
    assert batch.prompt_of_row.tolist() == [0, 1] and int(batch.tokens) == 3 + 3
    # flat rows: prompts 0..3 (2 x 2), then continuations 4..7 (2 x 2). Token 0 of a row is predicted at its
    # prompt's last column; token t >= 1 at continuation column t - 1.
    assert index.tolist() == [1, 4 + 1, 1, 6 + 0]


def test_prefix_tree_layout_by_hand():
    # Prompt [7, 8] (rows 0-2) and [9] (row 3). Rows 0 and 1 share the prefix [11]; row 2 selects position 0 only.
    prompts, completions = [[7, 8]] * 3 + [[9]], [[11, 12, 13], [11, 14], [15], [16, 17]]
    rows = LossRows(
        torch.tensor([0, 0, 1, 1, 2, 3]),
        torch.tensor([1, 2, 0, 1, 0, 1]),
        torch.tensor([12, 13, 11, 14, 15, 17]),
        torch.zeros(6),
        torch.ones(6),
    )
    trees = PrefixTrees.build(prompts, completions, rows)
    assert trees.prompts == [(7, 8), (9,)]
    assert trees.tokens == [[11, 12], [16]] and trees.parents == [[-1, 0], [-1]] and trees.depths == [[1, 2], [1]]
    batch, index = pack_prefix_trees(trees, rows, PAD, "cpu")
    # W = Lp 2 + N 2: prompt columns, then the nodes; a node's position continues its own prompt's.
    assert batch.ids.tolist() == [[7, 8, 11, 12], [0, 9, 16, 0]]
    assert batch.positions.tolist() == [[0, 1, 2, 3], [0, 0, 1, 0]]
    assert batch.visible.int().tolist() == [
        [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]],
        [[0, 0, 0, 0], [0, 1, 0, 0], [0, 1, 1, 0], [0, 1, 0, 1]],  # the padding node sees itself only
    ]
    # Token t of a row: its prompt's last column at t == 0, else the column of node completion[:t].
    assert index.tolist() == [2, 3, 1, 2, 1, 4 + 2]
    assert int(batch.tokens) == 3 + 3


def test_the_tree_is_chosen_where_rows_share_short_prefixes_and_not_for_long_distinct_ones():
    prompt = [[5, 6, 7, 8]] * 8
    short = [[10 + (b % 2), 20, 1] for b in range(8)]  # two distinct answers of 3 tokens
    long = [[10 + b] + list(range(30, 230)) for b in range(8)]  # 8 distinct 201-token completions
    for completions, hidden, want in ((short, 64, True), (long, 1536, False)):
        k = len(completions)
        last = [len(c) - 1 for c in completions]
        rows = LossRows(
            torch.arange(k),
            torch.tensor(last),
            torch.tensor([c[-1] for c in completions]),
            torch.zeros(k),
            torch.ones(k),
        )
        batch, _ = pack_shared_prompts(prompt, completions, rows, PAD, "cpu", hidden_size=hidden)
        assert isinstance(batch, PrefixTreeBatch) == want


def test_refused_under_gradient_checkpointing():
    model, _ = build_family_model("qwen2")
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert "gradient checkpointing" in unsupported_reason(apply_lora(model, r=4))


def test_trainer_option_trains_on_fewer_forward_tokens(tmp_path):
    # T-SPMO with replay: later steps continue from prompt + prefix rows. Step 1 samples the same rows with and
    # without sharing (nothing has been updated yet), so its forward tokens compare directly.
    options = {
        "algorithm": "t-spmo",
        "replay_prob": 1.0,
        "steps": 3,
        "lora_dropout": 0.0,
        "task_options": {"digits_a": 2, "digits_b": 1, "train_size": 2, "test_size": 2},
    }
    runs = {}
    for share in (False, True):
        result = HashRewardTrainer(small_config(tmp_path / str(share), share_prompts=share, **options)).run()
        lines = (result.output_dir / "metrics.jsonl").read_text().splitlines()
        runs[share] = [r for r in map(__import__("json").loads, lines) if r["kind"] == "train"]
    assert len(runs[True]) == 3 and all(r["loss"] == r["loss"] for r in runs[True])
    first = [runs[share][0] for share in (False, True)]
    assert first[0]["selected_tokens"] == first[1]["selected_tokens"] > 0
    assert first[1]["forward_tokens"] < first[0]["forward_tokens"]
    assert first[1]["loss"] == pytest.approx(first[0]["loss"], rel=1e-5, abs=1e-7)


def test_trainer_falls_back_to_the_plain_forward_where_it_cannot_run(tmp_path, caplog):
    config = small_config(tmp_path, share_prompts=True, gradient_checkpointing=True)
    trainer = HashRewardTrainer(config)
    with caplog.at_level(logging.WARNING, logger="tokrl"):
        trainer.setup()
    assert trainer.update.forward is PACKED
    assert "share_prompts: gradient checkpointing is on" in caplog.text and "plain forward" in caplog.text
