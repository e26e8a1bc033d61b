"""Task worlds with ground truth. Knows nothing of models, probes or studies."""

from alignlab.envs.grading import HACK_STYLES, OUTCOMES, Label, flawed_reward, label, summarize
from alignlab.envs.listlang import HARNESS_OVERRIDE, ParseError, Program, parse, run
from alignlab.envs.tasks import Task, TaskConfig, TaskConfigError, generate_task, generate_tasks

__all__ = [
    "HACK_STYLES", "HARNESS_OVERRIDE", "OUTCOMES", "Label", "ParseError", "Program", "Task", "TaskConfig",
    "TaskConfigError", "flawed_reward", "generate_task", "generate_tasks", "label", "parse", "run", "summarize",
]
