"""What the task YAMLs beside this file name with `!function functions.<name>` (lm-eval
imports this file by path); the code lives in `eval/tax_tasks.py`."""

from eval.tax_tasks import (  # noqa: F401
    gsm8k_dataset,
    humaneval_completions,
    humaneval_dataset,
    humaneval_pass,
    ifeval_dataset,
    ifeval_instruction_accuracy,
    ifeval_results,
)
