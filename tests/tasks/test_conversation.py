"""Conversational (TRL-style) datasets: chat-message prompts rendered with the chat template, message completions
handed to rewards, and two RL steps of tokrl's trainer on such a dataset with the tiny model."""

from __future__ import annotations

import json

import datasets
import pytest

from tokrl.config import load_config
from tokrl.models.tokenizer import build_char_tokenizer
from tokrl.tasks import get_task
from tokrl.tasks.conversation import as_assistant_messages, is_conversational
from tokrl.trainer import Trainer

CHATS = [
    [{"role": "system", "content": "Answer with a number."}, {"role": "user", "content": f"{a}+{b}?"}]
    for a, b in [(1, 2), (3, 4), (5, 6), (7, 8), (2, 2), (9, 1)]
]
SEEN: list = []


def chat_reward(completions, answer, **kwargs):
    """TRL's conversational contract: each completion is [{"role": "assistant", "content": text}]."""
    assert all(isinstance(c, list) and c[0]["role"] == "assistant" for c in completions), completions
    SEEN.extend(completions)
    return [
        float(c[0]["content"].strip().startswith(str(a))) + 0.1 * len(c[0]["content"])
        for c, a in zip(completions, answer, strict=True)
    ]


def _dataset():
    answers = [sum(int(x) for x in chat[1]["content"].rstrip("?").split("+")) for chat in CHATS]
    return datasets.Dataset.from_dict({"prompt": CHATS, "answer": answers})


def test_is_conversational():
    assert is_conversational(CHATS[0])
    assert not is_conversational("1+2?") and not is_conversational([]) and not is_conversational([{"role": "user"}])


def test_prompt_is_rendered_with_the_chat_template():
    task = get_task("custom", dataset=_dataset(), reward=chat_reward)
    text = task.render_prompt(CHATS[0], build_char_tokenizer())
    assert text == "system: Answer with a number.\nuser: 1+2?\nassistant: "
    assert task.render_prompt("plain", build_char_tokenizer()) == "plain"  # text prompts are unchanged


def test_missing_chat_template_is_a_clear_error():
    tokenizer = build_char_tokenizer()
    tokenizer.chat_template = None
    task = get_task("custom", dataset=_dataset(), reward=chat_reward)
    with pytest.raises(ValueError, match="no chat template"):
        task.render_prompt(CHATS[0], tokenizer)


def test_reward_gets_message_completions():
    task = get_task("custom", dataset=_dataset(), reward=chat_reward)
    SEEN.clear()
    scores = task.reward(["3 apples", "4"], prompt=CHATS[:2], answer=[3, 7])
    assert SEEN == as_assistant_messages(["3 apples", "4"])
    assert scores == pytest.approx([1.8, 0.1])


def test_two_rl_steps_on_a_conversational_dataset(tmp_path):
    data_path = tmp_path / "chats.jsonl"
    data_path.write_text("\n".join(json.dumps(row) for row in _dataset().to_list()))
    config = load_config(
        output_dir=str(tmp_path / "run"),
        task="custom",
        task_options={"dataset": str(data_path), "reward": "tests.tasks.test_conversation:chat_reward", "test_size": 2},
        sft_steps=0,
        steps=2,
        prompts_per_step=2,
        num_generations=4,
        max_new_tokens=4,
        eval_size=2,
        eval_batch_size=2,
        progress=False,
        num_threads=1,
    )
    result = Trainer(config).run()  # chat_reward (imported by path, so another module object) checks the shape
    records = [json.loads(line) for line in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2]
    assert all(r["loss"] is not None and r["reward_mean"] > 0 for r in records if r["kind"] == "train")
