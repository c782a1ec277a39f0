"""Token classification (named-entity recognition): ``train.task: token_classification``."""
from tfllm.tasks.base import Task, register


@register
class TokenClassificationTask(Task):
    name = "token_classification"
    head = "TFBertForTokenClassification"
