"""Best-of-N: N seeded samples of one method's answer per prompt, the one the reward model
rates highest kept. Sample i of a batch is drawn after `set_seed(seed + i)`, so sample 0 is
the answer the method itself gives when it samples with that seed (N = 1 is that method)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

from transformers import set_seed

from wsd.backends.reward import RewardModel
from wsd.core.registration import Method, MethodEntry, decode_options, method_entry, source_config
from wsd.core.schemas import MethodBlock, at_least


@dataclass
class BestOfNBlock(MethodBlock):
    name: str = "best_of_n"
    source: str = "urial"  # the method that samples the candidates
    n: int = 4
    temperature: float = 0.7
    top_p: float = 1.0
    prompt_file: Optional[str] = None  # source=urial: a URIAL prefix file (null: ours)

    def validate(self, key: str = "method") -> None:
        at_least(f"{key}.n", self.n, 1)
        if self.temperature <= 0:
            raise ValueError(f"best-of-n samples: {key}.temperature must be > 0, got {self.temperature!r}")


class BestOfN:
    def __init__(self, source, reward: RewardModel, n: int, seed: int, batch_size: int):
        self.source, self.reward, self.n, self.seed, self.batch_size = source, reward, n, seed, batch_size

    def check_fits(self, prompt_id, messages) -> None:
        self.source.check_fits(prompt_id, messages)

    def generate_many(self, prompts):
        """A batch at a time (its N samples, then its records), so a killed run keeps what
        it finished."""
        for start in range(0, len(prompts), self.batch_size):
            batch = prompts[start : start + self.batch_size]
            samples = []
            for i in range(self.n):
                set_seed(self.seed + i)
                samples.append([record for _, record in self.source.generate_many(batch)])
            for k, prompt in enumerate(batch):
                answers = [s[k] for s in samples]
                began = time.perf_counter()
                rewards = self.reward.score_answers(prompt.messages, [a["response"] for a in answers])
                reward_seconds = time.perf_counter() - began
                best = max(range(self.n), key=rewards.__getitem__)
                yield prompt, {
                    **answers[best],
                    "seconds": {"total": sum(a["seconds"]["total"] for a in answers) + reward_seconds,
                                "reward": reward_seconds},
                    "chosen_sample": best,
                    "sample_rewards": rewards,
                    "samples": [{"response": a["response"], "response_tokens": a["response_tokens"],
                                 "stop_reason": a["stop_reason"]} for a in answers],
                    "reward_model": self.reward.name,
                    "reward_model_calls": 1,
                }


SAMPLED_SOURCES = ("base", "urial", "pilot")  # the methods that sample (WSD's switch is greedy)


def best_of_n_source(cfg: dict) -> dict:
    """The source method's config: its name, sampling as `method.temperature`/`top_p` ask."""
    m = cfg["method"]
    if m["source"] not in SAMPLED_SOURCES:
        raise ValueError(f"method.source must be one of {', '.join(SAMPLED_SOURCES)} (methods that sample), "
                         f"got {m['source']!r}")
    BestOfNBlock.checked(m)
    source = {**source_config(cfg),
              "generation": {**cfg["generation"], "temperature": m["temperature"], "top_p": m["top_p"]}}
    decode_options(source)
    return source


def build_best_of_n(cfg: dict, models: dict) -> Method:
    source = best_of_n_source(cfg)
    method = method_entry(source["method"]["name"]).build(source, models)
    return BestOfN(method, models["reward"], cfg["method"]["n"], cfg["seed"], decode_options(cfg).batch_size)


METHOD = MethodEntry("best_of_n", (), build_best_of_n, best_of_n_source, reward=True, source_roles=True,
                     block=BestOfNBlock, label_keys=("source", "n"))
