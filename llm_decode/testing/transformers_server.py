"""`transformers serve` as a child process on 127.0.0.1, for tests against a real server.

`with TransformersServe(model_dir) as s: s.base_url` starts it offline (no Hub access, no
update check), optionally with a small context (`max_model_len`), waits for `/health`, and kills the whole process group on exit. `kill()` is a
crash (SIGKILL), `start()` again restarts it on the same port, so request keys (which include
the URL) stay the same. The server's output goes to `log_path`.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_UPDATE_CHECK": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "OMP_NUM_THREADS": "1",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class TransformersServe:
    """One `transformers serve MODEL_DIR` process (CPU), restartable on the same port."""

    def __init__(
        self,
        model_dir: str | Path,
        log_path: str | Path,
        port: int | None = None,
        *,
        max_model_len: int | None = None,
    ):
        self.model_dir = str(model_dir)
        self.max_model_len = max_model_len  # `--max-model-len`: a small context on purpose
        self.log_path = Path(log_path)
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 180.0) -> TransformersServe:
        argv = [sys.executable, "-m", "transformers.cli.transformers", "serve", self.model_dir]
        argv += ["--host", "127.0.0.1", "--port", str(self.port), "--device", "cpu"]
        argv += ["--log-level", "info"]
        if self.max_model_len is not None:
            argv += ["--max-model-len", str(self.max_model_len)]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **OFFLINE_ENV},
                start_new_session=True,  # its own process group: one kill ends all of it
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"transformers serve exited with {self.process.returncode}: "
                    + self.log_path.read_text(errors="replace")[-2000:]
                )
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2):
                    return self
            except (urllib.error.URLError, OSError):
                time.sleep(0.25)
        self.kill()
        raise RuntimeError(
            f"transformers serve not ready after {timeout:g} s (log {self.log_path})"
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL the server's process group (a crash), and reap it."""
        if self.process is not None and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> TransformersServe:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
