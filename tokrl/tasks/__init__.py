"""Tasks: datasets with `prompt`/`answer` columns, the model's prompt template and a verifiable reward.

`get_task(name, **options)` builds "svamp", "multiplication" or "custom" (or any `register_task`-ed
class); `Task.split("train" | "test")` gives a `datasets.Dataset`, `Task.reward(completions, **columns)`
follows TRL's reward contract.
"""

from tokrl.tasks import custom, multiplication, svamp  # noqa: F401  (import registers the tasks)
from tokrl.tasks.base import Task
from tokrl.tasks.registry import available_tasks, get_task, register_task
from tokrl.tasks.rewards import exact_match, final_integer, final_number, multiplication_exact, svamp_accuracy

__all__ = [
    "Task",
    "available_tasks",
    "exact_match",
    "final_integer",
    "final_number",
    "get_task",
    "multiplication_exact",
    "register_task",
    "svamp_accuracy",
]
