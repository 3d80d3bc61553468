"""A standalone 2-rank DDP program with distributed ``tk.Kron`` exits cleanly, every time.

The program (tests/distributed/ddp_exit_script.py) ends the way user code does: ``barrier()``,
``destroy_process_group()``, return. The group's destructor joins gloo's worker threads while
holding the GIL; had the optimizer left a collective's tensor to one of those threads, the thread
would wait for the GIL there and the process would hang. A few runs in a row, each under a timeout.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

SCRIPT = Path(__file__).with_name("ddp_exit_script.py")
RUNS = 3
TIMEOUT_S = 120.0  # per run; a clean run takes a few seconds


def _run_once() -> tuple[int | None, float, str]:
    """(exit code, None on a hang; wall seconds; the end of stderr) of one run of the script."""
    start = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--timeout", str(TIMEOUT_S)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # the launcher and its ranks: one process group to kill on a hang
    )
    try:
        _, err = proc.communicate(timeout=TIMEOUT_S + 30)
        code: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
        code = None
    return code, time.monotonic() - start, err[-3000:]


def test_ddp_program_exits_cleanly_every_run() -> None:
    for run in range(RUNS):
        code, seconds, err = _run_once()
        assert code == 0, f"run {run}: exit code {code} (124 or None: hung) after {seconds:.1f} s\n{err}"
