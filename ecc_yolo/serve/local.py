"""`ecc-yolo serve` as a local subprocess on a loopback port: what the demo, the benchmarks and the tests start.

The port is chosen free once and kept, so a killed server can be started again at the same URL (as after a crash).
Used as a context manager it is stopped on exit, also when the block ends with Ctrl-C.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ecc_yolo.args import command_line
from ecc_yolo.serve.protocol import HEALTH_PATH


def free_port() -> int:
    """A TCP port free on the loopback interface now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, timeout_s: float, alive: Callable[[], bool] = lambda: True) -> bool:
    """Poll the server at `url` until its health route answers 200 (True), or `alive()` turns false or `timeout_s`
    seconds pass (False). Each poll waits up to 5 s for an answer: a starved server can be slow to answer its first."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and alive():
        try:
            if httpx.get(f"{url}{HEALTH_PATH}", timeout=5).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    return False


class LocalServer:
    """A cloud server subprocess (see the module docstring)."""

    def __init__(self, checkpoint: str | Path, imgsz: int = 640, log: str | Path = os.devnull, port: int | None = None,
                 **serve_args: Any) -> None:
        """Args:
        checkpoint: ECC checkpoint (or zoo name) to serve.
        imgsz: the server's input size (pixels).
        log: file the server's output is appended to.
        port: loopback port (default: a free one).
        **serve_args: further `ecc-yolo serve` arguments, e.g. max_batch=8.
        """
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.argv = command_line("serve", f"model={checkpoint}", f"port={self.port}", f"imgsz={imgsz}", "verbose=False",
                                 *[f"{k}={v}" for k, v in serve_args.items()])
        self.log = Path(log)
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120.0) -> LocalServer:
        """Start the server and wait until /healthz answers.

        Raises:
            RuntimeError: it exited or did not answer within `timeout` seconds (the log's end is in the message).
        """
        with open(self.log, "a") as out:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT,
                                         env={**os.environ, "YOLO_OFFLINE": "1"})
        if wait_healthy(self.url, timeout, alive=lambda: self.proc.poll() is None):
            return self
        if self.proc.poll() is not None:
            raise RuntimeError(f"ecc-yolo serve exited:\n{self._log_tail()}")
        self.kill()
        raise RuntimeError(f"ecc-yolo serve did not answer within {timeout:g} s:\n{self._log_tail()}")

    def stop(self) -> None:
        """Ask the server to stop (SIGTERM), and kill it if it does not within 20 s."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        """Kill the server at once (SIGKILL), as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)

    def _log_tail(self) -> str:
        return self.log.read_text()[-3000:] if self.log.is_file() and str(self.log) != os.devnull else ""

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
