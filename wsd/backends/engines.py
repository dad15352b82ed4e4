"""What the methods need of a model, and the two backends that provide it.

Every method (WSD's engines, the baselines, GenerAlign's teachers, the local judge, the
lm-eval model) is written against `Engine`: a tokenizer, a context length, EOS ids, and

- `generate`: token ids for many prompts at once, each with its own budget, stop strings,
  greedy or sampling (seeded by the global torch RNG, `transformers.set_seed`);
- `score`: teacher-forced probabilities of given tokens; `token_ranks` the same tokens'
  log-probabilities with their rank among the vocabulary (the analyses' difficulty by position);
- `probe`: a greedy continuation with the probability of each chosen token (nudging's
  "is the base sure of its next token?");
- `next_token_logprobs`: the log-probabilities of a few candidate next tokens (a judge's
  verdict);
- `top_next_tokens`: the k most likely next tokens with their log-probabilities (ARGS).

`backend=hf` gives `HFEngine` (transformers, eager); `backend=vllm` gives `wsd.backends.vllm_engine.
VLLMEngine` (vLLM's `LLM`, one process or tensor/pipeline parallel). The HF engine is also a
`LoadedModel`, so HF-only optimisations (the fast WSD engine's shared KV cache) use its
`model` directly.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from transformers import DynamicCache

from wsd.backends.decoding import Generated, chunked_greedy, left_pad, pad_id
from wsd.backends.models import LoadedModel, ModelSpec, load_model
from wsd.core.schemas import GenerationBlock

BACKENDS = ("hf", "vllm")
SCHEDULINGS = ("batched", "per_request")  # how vLLM gets its requests (`backend.scheduling`)


class Engine(Protocol):
    spec: ModelSpec
    tokenizer: object

    @property
    def name(self) -> str: ...

    @property
    def eos_token_ids(self) -> list[int]: ...

    @property
    def context_length(self) -> int | None: ...

    def generate(self, prompts: list[list[int]], budgets: list[int], stops: list[str], fixed_length: bool = False,
                 sampling: tuple[float, float] | None = None) -> list[Generated]: ...

    def score(self, sequences: list[list[int]], starts: list[int]) -> list[list[float]]: ...

    def token_ranks(self, sequences: list[list[int]], starts: list[int]) -> list[list[tuple[float, int]]]: ...

    def probe(self, ids: list[int], max_tokens: int, min_prob: float = 0.0) -> tuple[list[int], list[float]]: ...

    def probe_many(self, probes: list[tuple[list[int], int, float]]) -> list[tuple[list[int], list[float]]]: ...

    def next_token_logprobs(self, prompts: list[list[int]], candidates: list[int]) -> list[list[float]]: ...

    def top_next_tokens(self, prompts: list[list[int]], k: int) -> list[tuple[list[int], list[float]]]: ...


@dataclass
class HFEngine(LoadedModel):
    """A transformers model behind the `Engine` protocol."""

    chunk_tokens: int = GenerationBlock.chunk_tokens  # tokens per batched `generate` call
    _probe_cache: object = field(default=None, repr=False)

    def generate(self, prompts, budgets, stops, fixed_length=False, sampling=None):
        """Left-padded batch, chunked greedy (or sampling: every row draws from the global
        torch random stream)."""
        seqs, mask = left_pad(prompts, pad_id(self), self.device)
        return chunked_greedy(self, seqs, mask, None, budgets, stops, fixed_length, self.chunk_tokens,
                              sampling=sampling)

    def score(self, sequences, starts):
        """`token_ranks`' probabilities, exponentiated in float32 as the forward computed them."""
        return [torch.tensor([lp for lp, _ in row], dtype=torch.float32).exp().tolist()
                for row in self.token_ranks(sequences, starts)]

    @torch.inference_mode()
    def token_ranks(self, sequences, starts):
        """One forward per sequence, logits only where a scored token is predicted; a token's
        rank counts the vocabulary entries at least as likely as it (vLLM's rank: 1 is top-1)."""
        out = []
        for ids, start in zip(sequences, starts):
            wanted = len(ids) - start
            if wanted <= 0:
                out.append([])
                continue
            logits = self.model(torch.tensor([ids], device=self.device), logits_to_keep=wanted + 1).logits[0]
            logprobs = torch.log_softmax(logits[:-1].float(), dim=-1)
            picked = logprobs.gather(1, torch.tensor(ids[start:], device=logprobs.device)[:, None])
            ranks = (logprobs >= picked).sum(dim=1)
            out.append(list(zip(picked[:, 0].tolist(), ranks.tolist())))
        return out

    def probe(self, ids, max_tokens, min_prob=0.0):
        """Greedy, one token at a time from a KV cache kept across calls and cut back to the
        longest unchanged prefix, so a caller that re-tokenizes its text pays only for the end.
        Ends after the first token whose probability is below `min_prob`."""
        if self._probe_cache is None:
            self._probe_cache = PrefixCachedLM(self)
        new, probs = [], []
        for _ in range(max_tokens):
            p = torch.softmax(self._probe_cache.next_logits(ids + new), dim=-1)
            top = int(p.argmax())
            new.append(top)
            probs.append(float(p[top]))
            if probs[-1] < min_prob:
                break
        return new, probs

    def probe_many(self, probes):
        """One `probe` after another (the probe cache holds one sequence)."""
        return [self.probe(ids, max_tokens, min_prob) for ids, max_tokens, min_prob in probes]

    @torch.inference_mode()
    def _last_logprobs(self, prompts) -> torch.Tensor:
        """One left-padded forward, the last position only."""
        seqs, mask = left_pad(prompts, pad_id(self), self.device)
        logits = self.model(input_ids=seqs, attention_mask=mask, logits_to_keep=1).logits[:, -1].float()
        return torch.log_softmax(logits, dim=-1)

    def next_token_logprobs(self, prompts, candidates):
        return self._last_logprobs(prompts)[:, candidates].tolist()

    def top_next_tokens(self, prompts, k):
        best = self._last_logprobs(prompts).topk(k, dim=-1)
        return list(zip(best.indices.tolist(), best.values.tolist()))


class PrefixCachedLM:
    """Next-token logits after a growing token sequence that may be re-tokenized at its end:
    the cache is cropped to the longest unchanged prefix, and only the rest is fed."""

    def __init__(self, loaded: LoadedModel):
        self.loaded, self.ids, self.cache = loaded, [], None

    @torch.inference_mode()
    def next_logits(self, ids: list[int]) -> torch.Tensor:
        common = 0
        limit = min(len(self.ids), len(ids) - 1)  # feed at least one token
        while common < limit and self.ids[common] == ids[common]:
            common += 1
        if self.cache is None or not self._crop(len(self.ids) - common):
            self.cache, common = DynamicCache(config=self.loaded.model.config), 0
        feed = torch.tensor([ids[common:]], device=self.loaded.device)
        out = self.loaded.model(input_ids=feed, past_key_values=self.cache, use_cache=True, logits_to_keep=1)
        self.ids = list(ids)
        return out.logits[0, -1].float()

    def _crop(self, remove: int) -> bool:
        if remove == 0:
            return True
        try:
            self.cache.crop(-remove)
        except (RuntimeError, ValueError):  # a sliding-window layer past its window cannot roll back
            return False
        return True


def model_identity(model: dict, backend: dict) -> dict:
    """What determines a model's outputs on `backend`: its config block, a linked folder keyed
    by what it points at (`pilot=trained` links to the latest training), without the engine
    settings of a backend not in use. Run identities and the draft cache both key models so."""
    model = dict(model)
    if model.get("path"):
        path = Path(model["path"]).expanduser()
        if path.is_symlink():
            model["resolved_path"] = str(path.resolve())
    if backend["name"] == "hf":
        model.pop("vllm", None)
    return model


def per_request(backend: dict | None) -> bool:
    """Does this backend block ask for vLLM's async engine (`scheduling: per_request`)? A
    block without `scheduling`, as saved before it existed, batches."""
    return bool(backend) and backend.get("name") == "vllm" and backend.get("scheduling") == "per_request"


def backend_identity(backend: dict) -> dict:
    """What of a backend block determines outputs: all of it (on vLLM `max_in_flight` sets
    the batches, and in bf16 a batch's shape moves near-ties), but `scheduling: batched`,
    the path a block without `scheduling` (saved before it existed) takes too."""
    if per_request(backend):
        return dict(backend)
    return {k: v for k, v in backend.items() if k != "scheduling"}


def check_backend(backend: dict) -> None:
    """The backend block's name and its scheduling, before anything loads."""
    if backend["name"] not in BACKENDS:
        raise ValueError(f"unknown backend {backend['name']!r}; accepted: {', '.join(BACKENDS)}")
    if backend.get("scheduling", "batched") not in SCHEDULINGS:
        raise ValueError(f"unknown backend.scheduling {backend['scheduling']!r}; accepted: {', '.join(SCHEDULINGS)}")
    in_flight = backend.get("max_in_flight")
    if backend["name"] == "vllm" and not (isinstance(in_flight, int) and in_flight >= 1):
        raise ValueError(f"backend.max_in_flight must be an integer >= 1, got {in_flight!r}")


def load_engine(spec: ModelSpec, backend: dict, cache_dir: str) -> Engine:
    """The model of `spec` on the configured backend (`conf/backend/*.yaml`)."""
    check_backend(backend)
    if backend["name"] == "vllm":
        from wsd.backends.vllm_async import AsyncVLLMEngine
        from wsd.backends.vllm_engine import VLLMEngine

        return (AsyncVLLMEngine if per_request(backend) else VLLMEngine).prepare(spec, backend, cache_dir)
    loaded = load_model(spec, cache_dir)
    return HFEngine(spec=loaded.spec, model=loaded.model, tokenizer=loaded.tokenizer, folder=loaded.folder)


class ModelPool:
    """The models a stage holds: engines by (backend, model), at most `size` of them (what WSD
    needs), the least recently used leaving first, and one reward model. A stage owns one and
    keeps it across the jobs of a multirun and across its parts (a teacher and a judge on the
    same model share it), so a grid loads its pilot and base once; `make reproduce` passes one
    pool to every step. Inside `holding()`, the engines that `engines` hands out belong to the
    method that runs there and are never evicted (the pool grows past `size` instead): Aligner
    over WSD holds pilot, base and corrector, and GenerAlign's teachers stay while its judge
    loads its own model. When the block ends they are ordinary pool entries again."""

    def __init__(self, size: int = 2):
        self.size = size
        self._engines: OrderedDict[str, Engine] = OrderedDict()
        self._reward = None  # (settings, model)
        self._held: frozenset[str] = frozenset()  # the keys of the running method's engines
        self._holding = False

    def engine(self, spec: ModelSpec, backend: dict | None, cache_dir: str) -> Engine:
        """The engine of `spec` on `backend`, loaded if needed."""
        key = self._key(spec, backend)
        if key in self._engines:
            self._engines.move_to_end(key)
            return self._engines[key]
        evictable = [k for k in self._engines if k not in self._held]  # least recently used first
        while evictable and len(self._engines) >= self.size:
            evicted = self._engines.pop(evictable.pop(0))
            if hasattr(evicted, "close"):  # a serving engine holds its KV-cache memory until stopped
                evicted.close()
        self._engines[key] = load_engine(spec, backend or {"name": "hf"}, cache_dir)
        return self._engines[key]

    @staticmethod
    def _key(spec: ModelSpec, backend: dict | None) -> str:
        return repr((backend or {"name": "hf"}, spec))

    def engines(self, needed: dict[str, ModelSpec], cfg: dict) -> dict[str, Engine]:
        """Engines by role on the config's backend, none evicted by another while they load
        (and, inside `holding()`, until the block ends); HF engines decode
        `generation.chunk_tokens` per call."""
        keys = frozenset(self._key(spec, cfg.get("backend")) for spec in needed.values())
        before, self._held = self._held, self._held | keys
        try:
            engines = {role: self.engine(spec, cfg.get("backend"), cfg["model_cache_dir"])
                       for role, spec in needed.items()}
        finally:
            if not self._holding:
                self._held = before
        for engine in engines.values():
            if isinstance(engine, HFEngine):
                engine.chunk_tokens = cfg["generation"]["chunk_tokens"]
        return engines

    @contextlib.contextmanager
    def holding(self) -> Iterator[ModelPool]:
        """A method runs inside: the engines `engines` hands out stay loaded until the end."""
        self._holding = True
        try:
            yield self
        finally:
            self._holding, self._held = False, frozenset()

    def reward(self, settings):
        """The reward model of `settings` (`wsd.backends.reward.RewardSettings`); another one replaces it."""
        from wsd.backends.reward import RewardModel

        if self._reward is None or self._reward[0] != settings:
            self._reward = None
            self._reward = (settings, RewardModel(settings))
        return self._reward[1]

    @property
    def loaded(self) -> int:
        """How many engines it holds now."""
        return len(self._engines)
