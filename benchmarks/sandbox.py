"""Run untrusted, model-written Python in a separate process with hard limits.

Each run gets a fresh temporary directory as its working directory, an empty environment, Python's isolated
mode (no user site, no PYTHON* variables), and resource limits: CPU seconds, address space, file size, open
files and processes. Where the kernel allows it (root, or unprivileged user namespaces), the process also runs
in a new network namespace, so it has no network at all. Wall-clock time is bounded by a timeout that kills the
whole process group. This is a sandbox for benchmark code, not a security boundary against a determined attacker.
"""

from __future__ import annotations

import functools
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass

CPU_SECONDS = 10
MEMORY_BYTES = 1 << 30
FILE_BYTES = 16 << 20
OPEN_FILES = 64
PROCESSES = 32


@dataclass
class RunResult:
    passed: bool
    returncode: int | None
    stdout: str
    stderr: str
    timed_out: bool = False

    @property
    def error(self) -> str:
        """The last lines of stderr (the exception), or why the run was stopped."""
        if self.timed_out:
            return "timed out"
        lines = [line for line in self.stderr.strip().splitlines() if line.strip()]
        return "\n".join(lines[-6:]) if lines else f"exit code {self.returncode}"


def _limit_resources() -> None:  # runs in the child between fork and exec
    os.setsid()
    resource.setrlimit(resource.RLIMIT_CPU, (CPU_SECONDS, CPU_SECONDS))
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_BYTES, MEMORY_BYTES))
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_BYTES, FILE_BYTES))
    resource.setrlimit(resource.RLIMIT_NOFILE, (OPEN_FILES, OPEN_FILES))
    resource.setrlimit(resource.RLIMIT_NPROC, (PROCESSES, PROCESSES))


@functools.cache
def _network_isolation_prefix() -> tuple[str, ...]:
    """``unshare --net`` when it works here, else nothing (checked once per process)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return ()
    for prefix in ((unshare, "--net"), (unshare, "--user", "--map-root-user", "--net")):
        try:
            probe = subprocess.run([*prefix, sys.executable, "-c", "pass"], capture_output=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            continue
        if probe.returncode == 0:
            return prefix
    return ()


def network_isolated() -> bool:
    return bool(_network_isolation_prefix())


def run_python(code: str, *, timeout: float = 15.0) -> RunResult:
    """Run ``code`` as a script in the sandbox; ``passed`` means it exited with status 0 in time."""
    with tempfile.TemporaryDirectory(prefix="cd-sandbox-") as workdir:
        script = os.path.join(workdir, "program.py")
        with open(script, "w", encoding="utf-8") as handle:
            handle.write(code)
        command = [*_network_isolation_prefix(), sys.executable, "-I", script]
        process = subprocess.Popen(
            command, cwd=workdir, env={"PATH": "/usr/bin:/bin", "HOME": workdir}, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=_limit_resources, text=True,
        )
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
            return RunResult(False, None, stdout[-4000:], stderr[-4000:], timed_out=True)
        return RunResult(process.returncode == 0, process.returncode, stdout[-4000:], stderr[-4000:])
