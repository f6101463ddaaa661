"""A run that fails part-way keeps what it trained, and says so in one line: a NaN reward, a stall and a non-finite
loss save the last good step and name the way to continue; a reward function that raises gets one tokrl line naming
it and the step (its own traceback under --debug); a conversational reward that treats messages as text gets a hint;
rewards of +-1e308 no longer overflow the step statistics."""

from __future__ import annotations

import json
import os
import sys

import pytest

from tests.trainer_helpers import ConstantRewardTrainer, HashRewardTrainer, hash_reward, small_config
from tokrl.cli import main
from tokrl.run.progress import StalledRunError
from tokrl.run.resume import missing_files
from tokrl.stages.record import reward_stats
from tokrl.tasks.base import RewardError


class FailingRewardTrainer(HashRewardTrainer):
    """hash_reward, except that call `fail_on` (1 = the evaluation before training, 2 = step 1's rollout, ...)
    returns NaN for every completion."""

    fail_on = 3

    def __init__(self, config):
        super().__init__(config)
        calls = []

        def reward(completions, **columns):
            calls.append(1)
            return [float("nan")] * len(completions) if len(calls) == self.fail_on else hash_reward(completions)

        self.task.reward_fn = reward  # under the task's own validation: NaN is a RewardError
        self.task.reward = type(self.task).reward.__get__(self.task)


@pytest.fixture
def custom_config(tmp_path):
    rows = [{"prompt": f"{a}*3=", "answer": str(3 * a)} for a in range(10, 22)]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = {"dataset": str(tmp_path / "rows.jsonl"), "reward": "exact_match", "test_size": 4}
    return lambda **kw: small_config(tmp_path, task="custom", task_options=task, **kw)


def test_nan_reward_saves_the_last_good_step(custom_config, tmp_path):
    trainer = FailingRewardTrainer(custom_config(algorithm="grpo", steps=4))
    with pytest.raises(RewardError) as info:
        trainer.run()
    message = str(info.value)
    checkpoint = tmp_path / "run" / "checkpoint-1"
    assert "reward function 'reward': rewards must be finite numbers or None, got nan at step 2" in message
    assert f"the last good step is saved in {checkpoint}" in message
    assert f"--output-dir {tmp_path / 'run'} --resume" in message
    assert missing_files(checkpoint) == []
    resumed = HashRewardTrainer(custom_config(algorithm="grpo", steps=4, resume=True))
    resumed.task.reward_fn = hash_reward
    result = resumed.run()
    assert result.steps == 4 and not result.interrupted


def test_a_failing_first_step_says_nothing_was_trained(custom_config, tmp_path):
    trainer = FailingRewardTrainer(custom_config(algorithm="grpo", steps=4))
    trainer.fail_on = 2
    with pytest.raises(RewardError, match="at step 1; no step had been trained"):
        trainer.run()
    assert not list((tmp_path / "run").glob("checkpoint-*"))


def test_a_stalled_run_saves_its_steps(tmp_path):
    trainer = ConstantRewardTrainer(small_config(tmp_path, algorithm="grpo", steps=6, max_empty_steps=2))
    with pytest.raises(StalledRunError, match=r"saved in .*checkpoint-2: fix the cause, then continue with"):
        trainer.run()
    assert missing_files(tmp_path / "run" / "checkpoint-2") == []


REWARD_MODULES = {
    "raising": "CALLS = []\n"
    "def score(completions, **kw):\n"
    "    CALLS.append(1)\n"
    "    if len(CALLS) == 3:\n"
    "        return [1 / 0 for _ in completions]\n"
    "    return [float(len(c) % 2) for c in completions]\n",
    # Alternating signs keep the running sum finite, so the squares of the deviations overflowed.
    "huge": "def score(completions, **kw):\n    return [1e308 if i % 2 else -1e308 for i in range(len(completions))]\n",
}


@pytest.fixture
def cwd_with_rewards(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", os.getcwd())])
    for name, code in REWARD_MODULES.items():
        (tmp_path / f"reward_{name}.py").write_text(code)
        sys.modules.pop(f"reward_{name}", None)
    rows = [{"prompt": f"{a}*3=", "answer": str(3 * a)} for a in range(10, 22)]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    yield tmp_path
    for name in REWARD_MODULES:
        sys.modules.pop(f"reward_{name}", None)


def _train(reward: str, *extra: str) -> list[str]:
    options = f"{{dataset: rows.jsonl, reward: 'reward_{reward}:score', test_size: 4}}"
    return [
        "train",
        "--task",
        "custom",
        "--task-options",
        options,
        "--sft-steps",
        "0",
        "--steps",
        "3",
        "--prompts-per-step",
        "2",
        "--num-generations",
        "4",
        "--max-new-tokens",
        "3",
        "--eval-size",
        "4",
        "--progress",
        "false",
        "--num-threads",
        "1",
        "--algorithm",
        "grpo",
        "--output-dir",
        "o",
        *extra,
    ]


def test_reward_that_raises_is_one_line_naming_it_and_the_step(cwd_with_rewards, capsys):
    assert main(_train("raising")) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith("tokrl train: error: reward function 'score' raised ZeroDivisionError: division by zero")
    assert "at step 2" in line and "checkpoint-1" in line


def test_debug_shows_the_users_traceback(cwd_with_rewards, capsys):
    assert main(_train("raising", "--debug")) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "reward_raising.py" in err and "1 / 0" in err
    assert err.strip().splitlines()[-1].startswith("tokrl train: error: reward function 'score' raised")


def test_rewards_near_the_float_limit_do_not_overflow(cwd_with_rewards, capsys):
    # reward_stats raised OverflowError on +-1e308.
    assert reward_stats([-1e308, 1e308, -1e308, 1e308]) == (0.0, 1e308)
    assert reward_stats([0.0, 1.0]) == (0.5, 0.5)  # ordinary rewards: the plain sums, as before
    code = main(_train("huge"))
    err = capsys.readouterr().err
    assert "Traceback" not in err and "OverflowError" not in err
    if code == 0:
        records = [json.loads(line) for line in (cwd_with_rewards / "o" / "metrics.jsonl").read_text().splitlines()]
        assert all(r["reward_std"] is not None for r in records if r["kind"] == "train")
    else:  # the loss may overflow on such rewards: then it is the one-line non-finite-loss stop
        assert code == 1 and "non-finite loss" in err


def test_conversational_reward_treating_messages_as_text_gets_a_hint():
    import datasets

    from tokrl.tasks import get_task

    chats = [[{"role": "user", "content": f"{a}+1?"}] for a in range(4)]
    data = datasets.Dataset.from_dict({"prompt": chats, "answer": [str(a + 1) for a in range(4)]})

    def strip_reward(completions, **kwargs):
        return [float(c.strip() == "1") for c in completions]

    task = get_task("custom", dataset=data, reward=strip_reward)
    with pytest.raises(RewardError) as info:
        task.reward(["1", "2"], prompt=chats[:2], answer=["1", "2"])
    message = str(info.value)
    assert "reward function 'strip_reward' raised AttributeError" in message
    assert "each completion is a list of messages" in message and "completion[-1]['content']" in message
    assert isinstance(info.value.__cause__, AttributeError)
