"""Where each stage's result lives, and where its inputs come from.

A result's folder is `<output_root>/<stage>/.../<readable name>__<key>`. The key hashes what
determines the result: the stage's own settings (declared once per stage below) and its
inputs' identities. Settings that decide only where or how fast something computes are never
keyed (`UNKEYED`). The `generation` block is keyed whole in every stage: its `batch_size` and
`chunk_tokens` decide the padding and which random numbers a sampled answer draws.

Each stage writes `identity.json` into its folder when it starts and the same record into its
`summary.json` (`Identity.record`: stage, folder, key and the inputs' paths). A later stage
takes its input by path (`evaluate input=outputs/generate/...`) or derives the same identity
from the same config. A folder written before identities existed has no `identity.json`:
`claim` renames it to the new name when its saved config has the same identity, and
reports it otherwise, so an earlier run is never silently redone.
"""

from __future__ import annotations

import glob
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from wsd.backends.engines import backend_identity, model_identity
from wsd.core.registration import backend_name
from wsd.core.store import config_key, slug, write_atomic
from wsd.methods import effective_backend, method_entry

log = logging.getLogger("wsd.runs.identity")

IDENTITY_FILE = "identity.json"

# Per block: the settings of place, speed or bookkeeping, never of what is computed.
UNKEYED = {
    "judge": ("model_cache_dir", "nltk_data_dir", "batch_size", "concurrency", "timeout_s", "max_retries",
              "api_key_env", "start_timeout_s"),
    # how often training saves and logs; its length (max_steps, epochs) sets the schedule, so it is keyed
    "train": ("save_steps", "save_total_limit", "logging_steps"),
}


def keyed(block: str, value: dict) -> dict:
    """`value` (a config block, nested blocks included) without the block's unkeyed settings."""
    if isinstance(value, dict):
        return {k: keyed(block, v) for k, v in value.items() if k not in UNKEYED.get(block, ())}
    return value


def _plain(node) -> dict:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)


@dataclass(frozen=True)
class Identity:
    """One result: its stage, its folder (the readable name and the key) and its inputs."""

    stage: str
    root: Path  # the folder that holds this stage's results (per benchmark, for some stages)
    name: str
    payload: dict = field(repr=False)
    inputs: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return config_key(self.payload)

    @property
    def folder(self) -> Path:
        return self.root / f"{self.name}__{self.key}"

    def record(self) -> dict:
        return {"stage": self.stage, "folder": str(self.folder), "key": self.key, "inputs": self.inputs}

    def claim(self, saved_identity: Callable[[DictConfig], Identity] | None = None) -> Path:
        """Create (or find) the folder and write `identity.json` there. A folder of the same
        name written before identities existed is renamed to this one when its saved
        `config.yaml` has this identity under `saved_identity`; other such folders are named
        in a warning (their results are not reused)."""
        folder = self.folder
        if not folder.exists() and self.root.is_dir():
            earlier = sorted(p for p in self.root.glob(f"{glob.escape(self.name)}__*")
                             if p.is_dir() and not (p / IDENTITY_FILE).exists())
            match = next((p for p in earlier if saved_identity and _same(p, self.key, saved_identity)), None)
            if match is not None:
                match.rename(folder)
                log.warning("found this result in %s (written before result identities); renamed it to %s",
                            match, folder)
            elif earlier:
                log.warning("%d folder(s) in %s were written before result identities and are not reused here "
                            "(their settings differ, or they saved no config): %s", len(earlier), self.root,
                            ", ".join(p.name for p in earlier))
        folder.mkdir(parents=True, exist_ok=True)
        write_atomic(folder / IDENTITY_FILE, json.dumps(self.record(), indent=1))
        return folder


def _same(folder: Path, key: str, saved_identity: Callable[[DictConfig], Identity]) -> bool:
    saved = folder / "config.yaml"
    if not saved.exists():
        return False
    try:
        return saved_identity(OmegaConf.load(saved)).key == key
    except Exception as err:  # an old config this version cannot read: not the same result
        log.debug("cannot read %s: %s", saved, err)
        return False


def finished(folder: str | Path, stage: str) -> dict:
    """The summary of a finished result folder of `stage`, given by path: a clear error when
    the folder is not one, or not finished."""
    folder = Path(folder).expanduser()
    summary = folder / "summary.json"
    if not summary.exists():
        raise FileNotFoundError(f"no finished {stage} result at {folder} (it has no summary.json)")
    data = json.loads(summary.read_text())
    recorded = data.get("identity", {}).get("stage", stage)
    if recorded != stage:
        raise ValueError(f"{folder} holds a result of stage {recorded}, not of {stage}")
    return data


# --- generation ------------------------------------------------------------------------


def _model_inputs(cfg, roles, backend: dict) -> tuple[dict, dict[str, str]]:
    payload, inputs = {}, {}
    for role in roles:
        payload[role] = model_identity(_plain(cfg[role]), backend)
        if payload[role].get("path"):
            inputs[role] = str(Path(payload[role]["path"]).expanduser().resolve())
    return payload, inputs


_WSD_KEYS_AS_FIRST_WRITTEN = {"implementation": "engine"}
_WSD_KEYS_ADDED_LATER = ("force_keep",)  # keyed only when set, so the runs written before them keep their keys


def method_identity(cfg: DictConfig) -> tuple[str, dict, dict[str, str]]:
    """A readable name (the method and its models), everything else that determines a
    method's outputs on a given prompt (its models, the method block, the generation block,
    the `wsd` block only for WSD, and the seed) and the model folders it reads. Baselines are
    thus shared by every point of a WSD sweep."""
    entry = method_entry(cfg.method.name)
    backend = effective_backend(_plain(cfg))
    roles = list(entry.roles_for(cfg)) + (["reward_model"] if entry.reward else [])
    payload, inputs = _model_inputs(cfg, roles, backend)
    if backend["name"] != "hf":  # HF, the default, keeps the keys its runs always had
        payload["backend"] = backend_identity(backend)
    payload.update(method=_plain(cfg.method), seed=cfg.seed, generation=_plain(cfg.generation))
    if entry.uses_wsd_block:
        # keyed by the names the block had when runs were first written (`wsd.implementation`
        # was `wsd.engine`), so the folders of earlier runs are found
        payload["wsd"] = {_WSD_KEYS_AS_FIRST_WRITTEN.get(k, k): v for k, v in _plain(cfg.wsd).items()
                          if not (k in _WSD_KEYS_ADDED_LATER and v is None)}
    return "__".join([cfg.method.name, *(slug(cfg[role].name) for role in roles)]), payload, inputs


def generation(cfg: DictConfig) -> Identity:
    """A generate run: the method's identity and the benchmark without `limit` (so a larger
    run resumes a smaller one)."""
    name, payload, inputs = method_identity(cfg)
    benchmark = _plain(cfg.benchmark)
    benchmark.pop("limit", None)
    return Identity("generate", Path(cfg.output_root) / "generate" / cfg.benchmark.name, name,
                    {**payload, "benchmark": benchmark}, inputs)


def run_description(cfg: DictConfig) -> dict:
    """What tables name a run by: the experiment, the method, its models, WSD's settings, a
    reward-guided method's main settings and whether its reward model is a weak proxy."""
    entry = method_entry(cfg.method.name)
    wsd = {k: cfg.wsd[k] for k in ("window", "threshold", "draft_max_tokens")} if entry.uses_wsd_block else None
    if wsd is not None and cfg.wsd.get("force_keep") is not None:
        wsd["force_keep"] = cfg.wsd.force_keep
    description = {"experiment": cfg.name, "method": cfg.method.name,
                   "models": {role: cfg[role].name for role in entry.roles_for(cfg)}, "wsd": wsd}
    if entry.reward:
        description["models"]["reward_model"] = cfg.reward_model.name
        description["reward_proxy"] = bool(cfg.reward_model.proxy)
    if entry.label_keys:
        description["settings"] = {k: cfg.method[k] for k in entry.label_keys}
    return description


# --- evaluation ------------------------------------------------------------------------


def evaluation(cfg: DictConfig, generation_folder: Path, benchmark: str) -> Identity:
    """A judge's scores of one generate run: keyed by the run (its folder's name carries its
    identity) and the judge block."""
    judge = keyed("judge", _plain(cfg.judge))
    return Identity("evaluate", Path(cfg.output_root) / "evaluate" / benchmark / generation_folder.name,
                    judge["name"], judge, {"generation": str(generation_folder)})


def tax(cfg: DictConfig) -> Identity:
    """An alignment-tax run: the method's identity (as in generation) and the `tax` block."""
    name, payload, inputs = method_identity(cfg)
    payload["tax"] = _plain(cfg.tax)
    return Identity("evaluate_tax", Path(cfg.output_root) / "evaluate_tax", name, payload, inputs)


def analysis_sources(cfg: DictConfig) -> dict[str, Path]:
    """The result folders the analyses read: the analysed answers' generate run (none for a
    benchmark's references) and, for the switches part, the WSD run the same overrides name."""
    sources = {}
    if cfg.analysis.answers != "reference":
        sources["answers"] = Path(cfg.analysis.answers).expanduser().resolve()
    if "switches" in cfg.analysis.parts:
        sources["wsd_run"] = generation(cfg).folder
    return sources


def analysis(cfg: DictConfig) -> Identity:
    """The analyses of one model pair on one benchmark's answers: both models on the backend,
    the benchmark, the `analysis` block (the judge's client settings unkeyed), the seed, and
    the folders it reads (`analysis_sources`)."""
    backend = _plain(cfg.backend)
    payload, inputs = _model_inputs(cfg, ("pilot", "base"), backend)
    block = _plain(cfg.analysis)
    block["stage_judge"] = keyed("judge", block["stage_judge"])
    sources = {k: str(v) for k, v in analysis_sources(cfg).items()}
    payload.update(backend=backend_identity(backend), benchmark=_plain(cfg.benchmark), analysis=block, seed=cfg.seed,
                   sources=sources)
    name = "__".join([slug(cfg.base.name), slug(cfg.pilot.name), slug(Path(cfg.analysis.answers).name)])
    return Identity("analyze", Path(cfg.output_root) / "analyze" / cfg.benchmark.name, name, payload,
                    {**inputs, **sources})


# --- GenerAlign and training -----------------------------------------------------------


def collection(cfg: DictConfig) -> Identity:
    """A GenerAlign collection: its block (its judges' place and speed aside; its
    `prompt_batch_size` is keyed, the sampling seeds come from the batches), the teachers'
    models, the backend they sample on (vLLM's samples change with the prompts a call holds,
    `backend.max_in_flight`; HF keeps the keys its collections always had), the generation
    block and the seed."""
    resolved = _plain(cfg)
    g = resolved["generalign"]
    teachers = [{**t, "models": {role: resolved[role] for role in method_entry(t["method"]).roles}}
                for t in g["teachers"]]
    g["scorers"] = [{**s, "judge": keyed("judge", s["judge"])} for s in g["scorers"]]
    payload = {"generalign": g, "teachers": teachers, "generation": resolved["generation"], "seed": cfg.seed}
    if backend_name(resolved) != "hf":  # HF keeps the keys its collections always had
        payload["backend"] = backend_identity(resolved["backend"])
    return Identity("collect_generalign", Path(cfg.output_root) / "generalign", cfg.name, payload)


def initial_model(cfg: DictConfig) -> DictConfig:
    """The model training starts from: `train.model`, else the experiment's pilot (whose
    judge and teachers made the data either way)."""
    return cfg.train.model or cfg.pilot


def dataset_path(cfg: DictConfig) -> Path:
    """`train.dataset`, or this experiment's GenerAlign collection for the algorithm (the
    reward model trains on the DPO pairs)."""
    if cfg.train.dataset:
        return Path(cfg.train.dataset).expanduser()
    pairs = "dpo" if cfg.train.algorithm == "reward" else cfg.train.algorithm
    return collection(cfg).folder / "dataset" / pairs


def training(cfg: DictConfig, root: str = "pilots") -> Identity:
    """A training (a pilot, or a reward model under `root="reward_models"`): the start model,
    the data (the collection's identity, or a given dataset's path), the train block, the
    DeepSpeed settings and the seed."""
    data = str(dataset_path(cfg)) if cfg.train.dataset else {"generalign": collection(cfg).key,
                                                               "pairs": dataset_path(cfg).name}
    payload = {"model": _plain(initial_model(cfg)), "data": data, "train": keyed("train", _plain(cfg.train)),
               "deepspeed": _plain(cfg.deepspeed) if cfg.deepspeed else None, "seed": cfg.seed}
    return Identity(f"train_{'reward' if root == 'reward_models' else 'pilot'}", Path(cfg.output_root) / root,
                    f"{cfg.name}__{slug(initial_model(cfg).name)}", payload, {"data": str(dataset_path(cfg))})
