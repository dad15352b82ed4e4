"""How many prompts a method hands its engine per call."""

import pytest
from omegaconf import OmegaConf

from wsd.core.registration import engine_options
from wsd.methods import compose


def _config(method: str, *overrides: str) -> dict:
    return OmegaConf.to_container(compose([f"method={method}", *overrides]), resolve=True)


@pytest.mark.parametrize("method", ["base", "wsd", "nudging"])
def test_vllm_gets_every_prompt_in_flight_and_hf_its_batch(method):
    batch = lambda *o: engine_options(_config(method, *o)).batch_size  # noqa: E731
    assert batch() == 8  # generation.batch_size, on HF
    assert batch("backend=vllm") == 256  # backend.max_in_flight
    assert batch("backend=vllm", "backend.max_in_flight=100", "generation.batch_size=4") == 100
    assert batch("backend=vllm", "backend.scheduling=per_request", "backend.max_in_flight=3") == 3
