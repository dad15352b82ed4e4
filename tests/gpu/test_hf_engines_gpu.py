"""The HF engine tests (fast == reference at every batch size and across a sliding window,
the reference passes against their oracles, nudging's prefix caches) on the device of
`tests/gpu/conftest.py`, in fp32 and bf16, with no vLLM needed:

    HF_HUB_OFFLINE=1 .venv/bin/python -m pytest tests/gpu -q

Their oracles build every tensor on the model's device, so the same functions run here.
"""

import pytest

from tests.gpu.conftest import DEVICE, NO_DEVICE
from tests.wsd.baselines import test_nudging
from tests.wsd.weak_to_strong import test_batched, test_reference

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(NO_DEVICE, reason=f"needs a {DEVICE} device")]

# the tests and the module-level fixtures they use, each keeping its own module's globals
for _module in (test_batched, test_reference, test_nudging):
    globals().update({name: value for name, value in vars(_module).items()
                      if name.startswith("test_") or name in ("pair", "small_window_pair")})
