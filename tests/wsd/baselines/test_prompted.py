"""How many prompts a one-request method hands its engine per call."""

from omegaconf import OmegaConf

from wsd.baselines.prompted import request_options
from wsd.methods import compose


def test_per_request_scheduling_hands_vllm_every_prompt_in_flight():
    def batch(*overrides):
        return request_options(OmegaConf.to_container(compose(["method=base", *overrides]), resolve=True)).batch_size

    assert batch() == batch("backend=vllm") == 8  # generation.batch_size
    assert batch("backend=vllm", "backend.scheduling=per_request", "backend.max_in_flight=100") == 100
