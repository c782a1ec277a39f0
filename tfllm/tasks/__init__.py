"""Tasks as plug-ins: each module registers one :class:`~tfllm.tasks.base.Task` subclass.

    >>> from tfllm.tasks import task_for
    >>> task = task_for(load_config("configs/conll2003_minilm.yaml"))   # TokenClassificationTask

========================  =========================================================================
``train.task``            what it trains
========================  =========================================================================
classification            one label per text or sentence pair (softmax, cross-entropy)
regression                a float per text or pair (MSE; Pearson / Spearman)
multi_label               several labels per text (sigmoid, binary cross-entropy, tuned thresholds)
token_classification      a tag per word: named entities (softmax or CRF; entity-level F1)
masked_lm                 masked-language-model pretraining on plain text
========================  =========================================================================
"""
from tfllm.config import Config
from tfllm.tasks import classification, masked_lm, multi_label, regression, token_classification  # noqa: F401 (register)
from tfllm.tasks.base import TASKS, Task, TaskData, get_task, register


def task_for(cfg: Config) -> Task:
    """The task ``cfg.train.task`` names, configured by ``cfg``."""
    return get_task(cfg.train.task)(cfg)


__all__ = ["TASKS", "Task", "TaskData", "get_task", "register", "task_for"]
