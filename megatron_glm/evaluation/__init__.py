"""GLM-130B's zero-shot evaluation framework on this project's models (`glm-eval`, docs/evaluation.md).

Task files in GLM-130B's YAML schema (config.py), JSONL data (data.py), inputs built as GLM-130B
builds them (samples.py), scored through any logits function (tasks.py, decoding.py), aggregated
per group (metrics.py) and reported (runner.py).
"""

from megatron_glm.evaluation.config import TaskConfig, load_task_file, parse_task  # noqa: F401
from megatron_glm.evaluation.errors import EvalError  # noqa: F401
from megatron_glm.evaluation.runner import evaluate, format_table, load_tasks  # noqa: F401
from megatron_glm.evaluation.vocab import Vocab, make_vocab  # noqa: F401
