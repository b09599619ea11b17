"""Tasks: where the analysed prompts come from.

>>> from effective_depth.tasks import get_task
>>> task = get_task("addition", digits=3, seed=0)
>>> ex = task.examples(2)[0]
>>> ex.prompt.endswith("="), ex.meta["difficulty"]
(True, 3)
"""

from .base import TASKS, Example, Param, Task, get_task, list_tasks, register_task, task_info

__all__ = ["Example", "Param", "Task", "TASKS", "get_task", "list_tasks", "register_task", "task_info"]
