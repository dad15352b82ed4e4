"""The options WSD's engines run with."""

from omegaconf import OmegaConf

from wsd.methods import compose
from wsd.weak_to_strong.method import build_wsd, wsd_settings


def _options(*overrides: str):
    return wsd_settings(OmegaConf.to_container(compose(["method=wsd", *overrides]), resolve=True))[2]


def test_wsd_hands_vllm_every_prompt_at_once_and_hf_its_batch():
    assert _options("backend=vllm", "backend.max_in_flight=64").batch_size == 64
    assert _options("generation.batch_size=4").batch_size == 4


def _engine(*overrides: str) -> str:
    cfg = OmegaConf.to_container(compose(["method=wsd", *overrides]), resolve=True)
    return type(build_wsd(cfg, {"pilot": _Engine(), "base": _Engine()}).implementation).__name__


class _Engine:
    tokenizer = None


def test_wsd_runs_the_fastest_engine_of_each_backend():
    """Measured on vLLM's blocking engines: the three passes over every prompt at once beat the
    chunked path; a sweep (drafts made whole, shared through the draft cache) keeps the chunked one."""
    assert _engine() == "FastWSD"
    assert _engine("backend=vllm") == "ReferenceWSD"
    assert _engine("backend=vllm", "wsd.early_stop=false") == "ChunkedWSD"
    assert _engine("backend=vllm", "backend.scheduling=per_request") == "PerRequestWSD"
    assert _engine("wsd.implementation=reference") == "ReferenceWSD"
