"""The registry: names, unknown names and options, registering a new task."""

from __future__ import annotations

import datasets
import pytest

from tokrl.tasks import Task, available_tasks, get_task, register_task
from tokrl.tasks.registry import TASKS


def test_builtin_names() -> None:
    assert available_tasks() == ["custom", "multiplication", "svamp"]


def test_unknown_name_lists_known_names() -> None:
    with pytest.raises(ValueError, match="task: unknown 'gsm8k'; expected one of: custom, multiplication, svamp"):
        get_task("gsm8k")


def test_unknown_option_lists_accepted_options() -> None:
    with pytest.raises(
        ValueError, match=r"task 'multiplication': unknown option\(s\) \['digits'\]; accepted .*digits_a"
    ):
        get_task("multiplication", digits=3)


def test_register_task(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tokrl.tasks.registry.TASKS", dict(TASKS))  # keep the global registry clean

    @register_task("echo")
    class Echo(Task):
        def __init__(self, template: str | None = None) -> None:
            super().__init__(template)
            self.data = datasets.Dataset.from_dict({"prompt": ["a"], "answer": ["a"]})

        @property
        def reward_name(self) -> str:
            return "echo"

        def _split(self, name: str) -> datasets.Dataset:
            return self.data

        def _score(self, completions, columns):
            return [float(c == a) for c, a in zip(completions, columns["answer"], strict=True)]

    task = get_task("echo")
    assert task.name == "echo" and "echo" in available_tasks()
    assert task.reward(["a", "b"], answer=["a", "a"]) == [1.0, 0.0]
    with pytest.raises(ValueError, match="already registered to Echo"):
        register_task("echo")(type("Other", (Echo,), {}))
