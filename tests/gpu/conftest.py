"""The engine tests of `tests/wsd/` again, on an accelerator in fp32 and in bf16.

`WSD_TEST_DEVICE` names the device (default `cuda`; `cpu` runs the same grid here, bf16
included); on `cuda` without a GPU every test of this folder is skipped.
"""

import os

import pytest
import torch

DEVICE = os.environ.get("WSD_TEST_DEVICE", "cuda")
NO_DEVICE = DEVICE.startswith("cuda") and not torch.cuda.is_available()


@pytest.fixture(scope="session", params=["float32", "bfloat16"], ids=["fp32", "bf16"])
def placement(request) -> dict:
    return {"device": DEVICE, "dtype": request.param}
