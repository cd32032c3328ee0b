"""Run ``python -m l2rec_serving`` as a child process: for tests, benchmarks and scripts.

    with ServerProcess(["--max-batch-size", "32"]) as server:   # a free loopback port
        httpx.post(server.url + "/recommend", json={"history": [1, 2, 3]})

The server starts in its own process (so Ray never lives in the caller), is ready when
``GET /healthz`` answers, and is stopped with SIGTERM, which shuts Serve and its local Ray
down; a server that does not stop in time is killed. Loopback (127.0.0.1) only.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

HOST = "127.0.0.1"


def free_port(host: str = HOST) -> int:
    """A TCP port that nothing listens on right now, below the kernel's ephemeral range
    where the system says where that starts (Linux).

    A server learns its port (``--port``) some seconds before it binds it (Ray starts
    first). A port from ``bind((host, 0))`` lies in the ephemeral range, where Ray picks the
    ports of its own processes (GCS, raylet, every worker) in the same way, this server's
    and any other Ray's on the machine: one of them can take it in the meantime ("Failed to
    bind to address"). Below that range only an explicit choice can, and the choice is
    random, so two callers rarely try the same."""
    import random

    low, high = 20_000, 0  # above the usual fixed ports (Ray's 6379, 8265, 10001; 8000, 9000)
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            high = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        pass  # not Linux: any free port
    for _ in range(200):
        port = random.randrange(low, high) if high > low + 1000 else 0
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise RuntimeError(f"no free TCP port on {host} below the ephemeral range")


# What ``python -m l2rec_serving`` prints once it serves and handles SIGTERM itself.
READY_LINE = "l2rec_serving: serving on http://"


class ServerProcess:
    """A ``python -m l2rec_serving`` child process on ``127.0.0.1:port``."""

    def __init__(self, extra_args: list[str] | None = None, port: int | None = None,
                 start_timeout_s: float = 240.0, stop_timeout_s: float = 60.0) -> None:
        self.port = port or free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.args = [sys.executable, "-m", "l2rec_serving", "--host", HOST, "--port", str(self.port),
                     *(extra_args or [])]
        self.start_timeout_s, self.stop_timeout_s = start_timeout_s, stop_timeout_s
        self.proc: subprocess.Popen | None = None
        # The server's output, for error messages; closed by __exit__ (or with this object).
        self._log = tempfile.TemporaryFile(mode="w+b")  # noqa: SIM115

    def log_tail(self, n: int = 4000) -> str:
        """The end of the server's stdout and stderr (for failure messages)."""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-n:]

    def start(self) -> ServerProcess:
        # Its own session: a stop can signal the server and the Ray processes it started.
        self.proc = subprocess.Popen(self.args, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with code {self.proc.returncode} before it was "
                                   f"ready:\n{self.log_tail()}")
            # Ready = it says so (by then its own SIGTERM handler is back in place, after
            # Ray's: a stop sent earlier would hit Ray's handler and abort) and /healthz answers.
            if READY_LINE in self.log_tail(1 << 20):
                try:
                    with urllib.request.urlopen(self.url + "/healthz", timeout=5) as r:
                        if r.status == 200:
                            return self
                except (urllib.error.URLError, ConnectionError, TimeoutError):
                    pass
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"the server was not ready within {self.start_timeout_s:.0f} s:\n"
                           f"{self.log_tail()}")

    def stop(self) -> int | None:
        """SIGTERM (a clean Serve + Ray shutdown), then SIGKILL to the process group if it hangs."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(self.stop_timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait(10)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        self._log.close()
