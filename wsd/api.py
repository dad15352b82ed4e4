"""The public face: WSD and every baseline as Python objects, built from model names, a
backend and settings, with typed answers. The generate stage builds its methods here too.

    import wsd
    w = wsd.WeakToStrong(pilot="smollm2_135m_instruct", base="gemma3_270m", window=6, threshold=0.8)
    answers = w.generate(["How do I brew green tea?"], max_new_tokens=512)
    answers[0].response, answers[0].keep_count

A model is a packaged model's config name (`conf/pilot/*.yaml`, `conf/base/*.yaml`), a
Hugging Face id or a local folder. Settings are the stage's: `window`, `threshold`,
`draft_max_tokens`, `implementation`, `early_stop` (WSD); a method's own (its block, in its module);
the decoding options (`max_new_tokens`, `batch_size`, `chunk_tokens`, `fixed_length`,
`stop_strings`, `temperature`, `top_p`); `seed`, `draft_cache_dir`, `model_cache_dir`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from omegaconf import OmegaConf

from wsd.backends.engines import ModelPool, per_request
from wsd.backends.models import ModelSpec, check_available
from wsd.backends.reward import RewardSettings
from wsd.backends.vllm_async import AsyncVLLMEngine, on_engine_loop
from wsd.core.config import CONF
from wsd.core.prompts import Message
from wsd.core.schemas import GenerationBlock
from wsd.data.prompt_sets import Prompt
from wsd.methods import compose, method_entry
from wsd.weak_to_strong.switch import WSDBlock

_BLOCKS = {block: tuple(f.name for f in dataclasses.fields(schema))
           for block, schema in (("wsd", WSDBlock), ("generation", GenerationBlock))}
_TOP_LEVEL = ("seed", "draft_cache_dir", "model_cache_dir")


@dataclass(frozen=True)
class Answer:
    """One answer. WSD's carry its switch: `keep_count` draft tokens (base tokenization) kept,
    `switched` (False: the whole draft was kept), the pilot's `draft_tokens` and the base's
    `continuation_tokens`; other methods leave them None. `prompt_tokens`: the conversation's
    text in the tokens of the model that writes the answer's end (the base for WSD; what a
    method adds around it, a chat template or URIAL's prefix, is not counted). `record` is the
    stage's full record."""

    messages: list[Message]
    response: str
    response_tokens: int
    stop_reason: str
    seconds: float
    keep_count: int | None = None
    switched: bool | None = None
    draft_tokens: int | None = None
    continuation_tokens: int | None = None
    prompt_tokens: int | None = None
    record: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_record(cls, messages: list[Message], record: dict, prompt_tokens: int | None = None) -> Answer:
        return cls(messages, record["response"], record["response_tokens"], record["stop_reason"],
                   record["seconds"]["total"], record.get("keep_count"), record.get("switched"),
                   record.get("draft_tokens"), record.get("continuation_tokens"), prompt_tokens, record)


def model_overrides(role: str, model: str) -> list[str]:
    """A packaged model's config name, else a Hugging Face id or folder (`<role>=custom`)."""
    if (CONF / role / f"{model}.yaml").is_file() and model != "custom":
        return [f"{role}={model}"]
    return [f"{role}=custom", f"{role}.path={model}", f"{role}.name={model}"]


def setting_paths(name: str, settings: dict) -> dict[str, object]:
    """Each setting under its config path, by the block it lives in; an unknown one is named
    with what is accepted."""
    method_keys = {f.name for f in dataclasses.fields(method_entry(name).block)} - {"name"}
    paths = {}
    for key, value in settings.items():
        block = "method" if key in method_keys else next((b for b, keys in _BLOCKS.items() if key in keys), None)
        if block is None and key not in _TOP_LEVEL:
            accepted = sorted({*method_keys, *_TOP_LEVEL, *(k for keys in _BLOCKS.values() for k in keys)})
            raise ValueError(f"unknown setting {key!r} for method {name!r}; accepted: {', '.join(accepted)}")
        paths[f"{block}.{key}" if block else key] = value
    return paths


class Generator:
    """A method over its models, from a resolved generate config; its models come from
    `pool` (its own when not given) and load on the first `generate`."""

    def __init__(self, cfg: dict, pool: ModelPool | None = None,
                 place: Callable[[ModelSpec], ModelSpec] = lambda spec: spec):
        """Everything is checked here, before any model loads: the settings, every model's
        presence, the reward model's. `place` puts a model on a device (a sharded run's rank)."""
        self.cfg, self.pool = cfg, pool or ModelPool()
        self.entry = method_entry(cfg["method"]["name"])
        self.entry.check(cfg)
        self.specs = {role: place(ModelSpec.from_config(cfg[role])) for role in self.entry.roles_for(cfg)}
        for spec in self.specs.values():
            check_available(spec)
        self.reward = RewardSettings.from_config(cfg["reward_model"]) if self.entry.reward else None
        if self.reward:
            self.reward.check()

    def engines(self, cfg: dict | None = None) -> dict:
        """The method's models by role (`pilot`, `base`, ..., `reward`), loaded into the pool."""
        models = self.pool.engines(self.specs, cfg or self.cfg)
        if self.reward:
            models["reward"] = self.pool.reward(self.reward)
        return models

    def start(self) -> dict:
        """`engines`, with vLLM's async engines started too (they start on first use): a
        server's first request then does not wait for them."""
        models = self.engines()
        for engine in models.values():
            if isinstance(engine, AsyncVLLMEngine):
                engine.start()
        return models

    def build(self, cfg: dict | None = None):
        """The method (`wsd.methods.Method`) on the pooled engines, for `cfg` (this one's by
        default: a call may change the decoding options)."""
        cfg = cfg or self.cfg
        return self.entry.build(cfg, self.engines(cfg))

    def options_config(self, **options) -> dict:
        """This method's config with these decoding options (`max_new_tokens`, ...), checked."""
        unknown = set(options) - set(_BLOCKS["generation"])
        if unknown:
            raise ValueError(f"unknown decoding option(s) {sorted(unknown)}; accepted: {', '.join(_BLOCKS['generation'])}")
        cfg = {**self.cfg, "generation": {**self.cfg["generation"], **options}}
        if options:
            self.entry.check(cfg)
        return cfg

    def generate(self, prompts: Sequence[str | list[Message]], **options) -> list[Answer]:
        """Answers in input order. A prompt is a user message or a list of chat messages;
        `options` are decoding options for this call (`max_new_tokens`, ...). A prompt that
        cannot fit the models' context fails the call before any decoding."""
        answers = self.answer_each(prompts, **options)
        for answer in answers:
            if isinstance(answer, Exception):
                raise answer
        return answers

    def answer_each(self, prompts: Sequence[str | list[Message]], **options) -> list[Answer | ValueError]:
        """`generate`, where a prompt that cannot fit gets its error in its place and the others
        are answered (a server's batch of unrelated requests)."""
        cfg = self.options_config(**options)
        items = [Prompt(str(i), [{"role": "user", "content": p}] if isinstance(p, str) else list(p))
                 for i, p in enumerate(prompts)]
        results: list[Answer | ValueError | None] = [None] * len(items)
        with self.pool.holding():
            method, writer = self._method(cfg)
            fitting = []
            for i, item in enumerate(items):
                try:
                    method.check_fits(item.id, item.messages)
                    fitting.append(item)
                except ValueError as err:
                    results[i] = err
            for item, record in method.generate_many(fitting) if fitting else ():
                results[int(item.id)] = _answer(item, record, writer)
        return results

    def answers_per_request(self) -> bool:
        """Can each answer run as its own pipeline on vLLM's async engine? With
        `backend.scheduling=per_request`, for base, URIAL, pilot, WSD (fast) and nudging: a
        server then hands every request to vLLM's scheduler as it comes (`answer_async`)."""
        return per_request(self.cfg.get("backend")) and callable(getattr(self.build(), "answer", None))

    async def answer_async(self, messages: list[Message], **options) -> Answer:
        """One answer as its own pipeline on the async engine (see `answers_per_request`):
        concurrent calls meet in vLLM's scheduler; cancelled (its client gone), its requests
        are aborted in the engines. A `ValueError` where the prompt cannot fit."""
        cfg = self.options_config(**options)
        with self.pool.holding():
            method, writer = self._method(cfg)
        item = Prompt("0", list(messages))
        method.check_fits(item.id, item.messages)
        return _answer(item, await on_engine_loop(method.answer(item)), writer)

    def _method(self, cfg: dict):
        """The method for `cfg`, and the tokenizer of the model that writes its answers' ends."""
        models = self.engines(cfg)
        return self.entry.build(cfg, models), models[self.entry.roles_for(cfg)[-1]].tokenizer


def _answer(item: Prompt, record: dict, writer) -> Answer:
    text = "\n\n".join(m["content"] for m in item.messages)
    return Answer.from_record(item.messages, record, len(writer(text, add_special_tokens=False)["input_ids"]))


def method(name: str, pilot: str = "smollm2_135m_instruct", base: str = "gemma3_270m", backend: str = "hf",
           pool: ModelPool | None = None, **settings) -> Generator:
    """Any method by its name (`wsd`, `base`, `urial`, `pilot`, `nudging`, `args`, `cards`,
    `best_of_n`, `aligner`) on these models and backend, with its settings."""
    method_entry(name)  # an unknown name fails here, naming what is accepted
    overrides = [f"method={name}", f"backend={backend}", "logger=none", "draft_cache_dir=null",
                 *model_overrides("pilot", pilot), *model_overrides("base", base)]
    models = {role: settings.pop(role) for role in ("corrector", "reward_model") if role in settings}
    for role, model in models.items():
        overrides += model_overrides(role, model)
    cfg = compose(overrides)
    for path, value in setting_paths(name, settings).items():
        OmegaConf.update(cfg, path, value, merge=False)  # the typed blocks check the value's type
    return Generator(OmegaConf.to_container(cfg, resolve=True), pool)


class WeakToStrong(Generator):
    """WSD: the pilot writes the beginning, the base the rest, switched where the base's
    geometric-mean probability of the last `window` draft tokens reaches `threshold`."""

    def __init__(self, pilot: str = "smollm2_135m_instruct", base: str = "gemma3_270m", backend: str = "hf",
                 window: int | None = None, threshold: float | None = None, pool: ModelPool | None = None,
                 **settings):
        switch = {k: v for k, v in (("window", window), ("threshold", threshold)) if v is not None}
        built = method("wsd", pilot, base, backend, pool, **switch, **settings)
        super().__init__(built.cfg, built.pool)
