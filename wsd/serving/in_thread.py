"""An app served from a thread of this process (tests, benchmarks): uvicorn on a socket bound
to 127.0.0.1 on a free port, started within a time limit and stopped on exit."""

import socket
import threading
import time

START_TIMEOUT_S = 120


class InThread:
    """uvicorn in a thread, on a socket bound here to 127.0.0.1:0; stopped on exit."""

    def __init__(self, app):
        import uvicorn

        self.app = app
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "the server did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=START_TIMEOUT_S)
        self.sock.close()
        assert not self.thread.is_alive(), "the server did not stop"
