"""bench/latency.py under a time limit: SIGTERM (what `timeout` sends first) ends the run
after the shape under way, and the table and the CSV of everything measured still come out;
the CSV is also rewritten after every shape, so even a SIGKILL keeps the finished ones."""

import csv
import os
import pathlib
import signal
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_sigterm_keeps_the_measured_shapes(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "latency.py"), "--sections", "dpmoe_linear",
         "--threads", "1", "--rounds", "2", "--warmup", "1", "--no-memory", "--out", str(tmp_path)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob("*.csv")):  # written once the first shape is done
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "no shape finished in 120 s"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, out
    assert "# cut off (SIGTERM) after" in out and "of 10 shapes" in out, out
    (path,) = tmp_path.glob("*.csv")
    assert f"# wrote {path}" in out
    rows = list(csv.DictReader(path.open()))
    assert rows and all(r["shape"] for r in rows), rows
    assert not list(tmp_path.glob("*.tmp"))
