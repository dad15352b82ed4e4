"""The served model: a generate-stage method behind an OpenAI-compatible API
(`wsd.serving.openai_api`), on the generate stage's models, backend and settings. It loads the
models, then prints the URL it listens on (a free port unless `api_server.port` is given) and
serves until stopped. It binds 127.0.0.1 unless told otherwise; with `WSD_API_KEY` set, a
request must carry that key (`Authorization: Bearer ...`), as with `vllm serve`.

    python -m pipelines.serve                                  (WSD on the embedded pair)
    python -m pipelines.serve method=nudging backend=vllm api_server.port=8000
    curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\
         -d '{"model": "wsd", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 64}'
"""

from __future__ import annotations

import logging
import os
import socket

import hydra
from omegaconf import DictConfig, OmegaConf

from pipelines import multirun_flag_first
from wsd.api import Generator
from wsd.backends.engines import check_backend, per_request
from wsd.core.schemas import APIServerBlock
from wsd.methods import effective_backend
from wsd.serving.openai_api import create_app

log = logging.getLogger("wsd.serve")


def run(cfg: DictConfig) -> None:
    """Check everything and load the models first; then listen, print the URL, and serve."""
    import uvicorn

    resolved = OmegaConf.to_container(cfg, resolve=True)
    settings = APIServerBlock(**resolved["api_server"])
    settings.validate()
    check_backend(resolved["backend"])
    resolved["backend"] = effective_backend(resolved)
    generator = Generator(resolved)
    name = settings.model_name or resolved["method"]["name"]
    log.info("loading %s's models (%s) on %s", name, ", ".join(generator.specs), resolved["backend"]["name"])
    generator.start()
    # vLLM's async engine takes requests from every thread into one scheduler: batches overlap
    workers = resolved["backend"]["max_in_flight"] if per_request(resolved["backend"]) else 1
    app = create_app(generator, name, os.environ.get(settings.api_key_env) or None, settings.max_batch,
                     settings.batch_wait_ms / 1000, settings.greedy, workers)
    sock = socket.socket(socket.AF_INET6 if ":" in settings.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((settings.host, settings.port))
    sock.listen(2048)
    host, port = sock.getsockname()[:2]
    print(f"serving {name} at http://{host}:{port}/v1", flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])


@hydra.main(config_path="../conf", config_name="serve", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    multirun_flag_first()
    main()
