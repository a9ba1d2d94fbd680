"""Run model-written Python isolated from this process, and count a pass only when the tests ran to completion.

Isolation (Linux, as root; ``isolation()`` says whether it holds here and why not). Each run is started as
``prlimit <limits> -- unshare --pid --fork --kill-child --mount-proc --net --ipc --uts -- python -I`` with an empty
environment, no inherited file descriptors but its pipes, in a new session. Inside, a trusted supervisor
(sandbox_processes.py beside this module) is PID 1 of the new PID namespace: it mounts a private size-limited tmpfs over
/tmp, /var/tmp, /dev/shm and /run/lock, hides this virtualenv and the repository under empty read-only mounts,
and starts the model's code in a worker through ``setpriv`` under a fresh unprivileged uid (no supplementary
groups, no capabilities, no-new-privs), then drops its own root for a second fresh uid. So the code:

- sees only its own run's processes (its /proc is the new namespace's): not this process, nor its environment;
- cannot signal anything outside the run, nor the supervisor (another uid);
- dies with the run: when PID 1 exits or is killed, the kernel kills every process in the namespace, a
  double-forked ``setsid`` daemon included; on a timeout this process kills PID 1;
- has no network (a new network namespace with only a down loopback), no secrets from the environment, and can
  write only to the run's own tmpfs, which vanishes with the run;
- has bounded memory in total: ``Limits.memory_bytes`` of address space per process (RLIMIT_AS) times at most
  ``Limits.processes`` processes or threads (RLIMIT_NPROC, which the kernel enforces for the fresh non-root uid;
  it has no effect on root), plus ``Limits.tmpfs_bytes`` of files, plus the supervisor.

Where the kernel or the user refuses this (not root, no namespaces, util-linux missing), ``run_python`` and
``run_humaneval`` raise ``SandboxUnavailableError`` unless called with ``allow_weak=True``; a weak run has the same
limits (per process) and protocol, but no namespaces and no change of uid.

Passing. The run writes a random nonce, which this process generates per run and hands to the supervisor on
stdin, on a status pipe the candidate's process never holds; only after ``check(candidate)`` returned (HumanEval)
or the script ran to its end. A pass needs that nonce, a clean exit and no timeout; exit status alone never
counts. The tests run in the supervisor, not in the candidate's process: each call to the candidate goes to the
worker and only plain data (exact built-in types) comes back, so ``sys.exit(0)``, ``os._exit(0)``, ``atexit``,
``sys.excepthook``, an object equal to everything or shadowed builtins cannot make ``check`` pass.

Residual risk: this is a benchmark sandbox, not a hardened jail. The code still shares the kernel (a kernel
exploit escapes), can read world-readable files outside the hidden directories, and can use CPU up to its limits.
For a plain script (``run_python``) the "ran to its end" report comes from the worker itself, so code written to
forge the harness protocol could fake it; for HumanEval, forging gets it nothing, as the tests' checks run in the
supervisor on plain values.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import random
import resource
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import sysconfig
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .paths import REPOSITORY

logger = logging.getLogger(__name__)
HARNESS_SOURCE = (Path(__file__).resolve().parent / "sandbox_processes.py").read_text(encoding="utf-8")
OUTPUT_BYTES = 64 << 10
PROBE = {"code": "import copy\ndef answer():\n    return copy.copy(42)\n", "prompt": "", "entry_point": "answer",
         "test": "def check(candidate):\n    import string\n    assert candidate() == 42\n"}
NAMESPACES = ("--pid", "--fork", "--kill-child", "--mount-proc", "--net", "--ipc", "--uts")


class SandboxUnavailableError(RuntimeError):
    """The kernel or the user does not allow an isolated run here, and no weak run was allowed."""


@dataclass(frozen=True)
class Limits:
    timeout: float = 15.0  # wall-clock seconds for the whole run
    cpu_seconds: int = 10  # per process
    memory_bytes: int = 512 << 20  # address space per process
    processes: int = 8  # processes and threads of the candidate's uid
    file_bytes: int = 16 << 20  # largest file it may write
    open_files: int = 64
    tmpfs_bytes: int = 64 << 20  # all files it writes, together


DEFAULT_LIMITS = Limits()


@dataclass
class RunResult:
    passed: bool
    returncode: int | None
    stdout: str
    stderr: str
    timed_out: bool = False
    isolated: bool = False

    @property
    def error(self) -> str:
        """The last lines of stderr (the exception), or why the run did not count as a pass."""
        if self.timed_out:
            return "timed out"
        lines = [line for line in self.stderr.strip().splitlines() if line.strip()]
        if lines:
            return "\n".join(lines[-6:])
        return f"exit code {self.returncode}, and the tests did not report that they ran to completion"


@dataclass(frozen=True)
class Isolation:
    available: bool
    reason: str


def _tools() -> dict[str, str | None]:
    return {name: shutil.which(name, path="/usr/bin:/bin:/usr/sbin:/sbin") for name in ("prlimit", "unshare",
                                                                                        "setpriv")}


@functools.cache
def _python() -> str:
    """An interpreter the run's unprivileged uids can use: the base interpreter (a virtualenv's packages are not
    needed, and its folder is hidden) when other users may read it, else a system python of the same version."""
    base = os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)
    if _others_can_read(Path(sysconfig.get_paths()["stdlib"])) and _others_can_read(Path(base).parent):
        return base
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for name in (version, "python3"):
        found = shutil.which(name, path="/usr/local/bin:/usr/bin:/bin")
        if found:
            logger.info("sandbox: %s is not readable by other users; running model code with %s", base, found)
            return os.path.realpath(found)
    return base  # the isolation probe will say that it fails


def _others_can_read(folder: Path) -> bool:
    """Whether a user with no relation to the owner can list ``folder`` (every ancestor searchable)."""
    try:
        chain = [folder, *folder.parents]
        return bool(folder.stat().st_mode & stat.S_IROTH) and all(p.stat().st_mode & stat.S_IXOTH for p in chain)
    except OSError:
        return False


def _hidden_directories() -> list[str]:
    """This virtualenv and the repository, unless the interpreter itself lives inside one of them."""
    python = Path(_python())
    base = Path(sys.base_prefix).resolve()
    hidden = []
    for folder in {Path(sys.prefix).resolve(), REPOSITORY}:
        if folder != Path("/") and not python.is_relative_to(folder) and not base.is_relative_to(folder):
            hidden.append(str(folder))
    return sorted(hidden)


@functools.cache
def isolation() -> Isolation:
    """Whether isolated runs work here (checked once per process by running one)."""
    missing = [name for name, path in _tools().items() if path is None]
    if missing:
        return Isolation(False, f"util-linux tools not found: {', '.join(missing)}")
    try:
        probe = _run(PROBE, DEFAULT_LIMITS, isolated=True)
    except OSError as exc:
        return Isolation(False, f"could not start an isolated run: {exc}")
    if probe.passed:
        return Isolation(True, "PID, mount, network, IPC and UTS namespaces; separate uids; rlimits")
    return Isolation(False, f"an isolated test run failed: {probe.error}")


def network_isolated() -> bool:
    return isolation().available


def require_isolation(*, allow_weak: bool) -> bool:
    """True when runs are isolated; False (with a warning) for a weak run the caller allowed; else raise."""
    status = isolation()
    if status.available:
        return True
    if not allow_weak:
        raise SandboxUnavailableError(
            f"refusing to run model-written code without isolation: {status.reason}. Run as root on Linux with "
            "util-linux (unshare, setpriv, prlimit), or opt in to a weak sandbox (resource limits only, no "
            "namespaces) with --allow-weak-sandbox / allow_weak=True")
    _warn_weak(status.reason)
    return False


@functools.cache
def _warn_weak(reason: str) -> None:
    logger.warning("sandbox runs are NOT isolated (%s): resource limits only; model-written code can see and "
                   "signal this process and outlive its run", reason)


def run_python(code: str, *, limits: Limits = DEFAULT_LIMITS, allow_weak: bool = False) -> RunResult:
    """Run ``code`` as a script; ``passed`` means it ran to its last line and the run exited cleanly in time."""
    return _run({"code": code, "test": None}, limits, isolated=require_isolation(allow_weak=allow_weak))


def run_humaneval(code: str, *, prompt: str, test: str, entry_point: str, limits: Limits = DEFAULT_LIMITS,
                  allow_weak: bool = False) -> RunResult:
    """Load ``code``, then run the problem's ``check(entry_point)`` against it; ``passed`` means check returned."""
    job = {"code": code, "prompt": prompt, "test": test, "entry_point": entry_point}
    return _run(job, limits, isolated=require_isolation(allow_weak=allow_weak))


def _command(limits: Limits, isolated: bool, status_fd: int) -> list[str]:
    python = [_python(), "-I", "-c", HARNESS_SOURCE, "supervise", str(status_fd)]
    if not isolated:
        return python
    tools = _tools()
    rlimits = [f"--cpu={limits.cpu_seconds}", f"--as={limits.memory_bytes}", f"--fsize={limits.file_bytes}",
               f"--nofile={limits.open_files}", f"--nproc={limits.processes}", "--core=0"]
    return [tools["prlimit"], *rlimits, "--", tools["unshare"], *NAMESPACES, "--", *python]


def _weak_limits(limits: Limits) -> None:  # preexec_fn of a weak run (no util-linux needed)
    for which, value in ((resource.RLIMIT_CPU, limits.cpu_seconds), (resource.RLIMIT_AS, limits.memory_bytes),
                         (resource.RLIMIT_FSIZE, limits.file_bytes), (resource.RLIMIT_NOFILE, limits.open_files),
                         (resource.RLIMIT_CORE, 0)):
        resource.setrlimit(which, (value, value))


def _run(job: dict, limits: Limits, *, isolated: bool) -> RunResult:
    nonce = secrets.token_hex(16)
    uid = random.SystemRandom().randrange(1 << 20, 1 << 30, 2)  # the worker's; the supervisor gets uid + 1
    job = {**job, "nonce": nonce, "isolated": isolated, "uid": uid, "python": _python(), "source": HARNESS_SOURCE,
           "setpriv": _tools()["setpriv"], "hide": _hidden_directories(), "tmpfs_bytes": limits.tmpfs_bytes}
    status_read, status_write = os.pipe()
    with tempfile.TemporaryDirectory(prefix="cd-sandbox-") as workdir:
        try:
            process = subprocess.Popen(
                _command(limits, isolated, status_write), cwd=workdir, env={"HOME": workdir, "PATH": "/usr/bin:/bin"},
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=(status_write,),
                start_new_session=True, preexec_fn=None if isolated else functools.partial(_weak_limits, limits))
        finally:
            os.close(status_write)
        captures = [_Capture(process.stdout.fileno()), _Capture(process.stderr.fileno()), _Capture(status_read)]
        _feed(process, json.dumps(job).encode())
        timed_out = False
        try:
            process.wait(timeout=limits.timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
        _end_run(process)
        stdout, stderr, status = (capture.text() for capture in captures)
        process.stdout.close()
        process.stderr.close()
        os.close(status_read)
    passed = not timed_out and process.returncode == 0 and status.strip() == nonce
    return RunResult(passed, None if timed_out else process.returncode, stdout, stderr, timed_out, isolated)


def _feed(process: subprocess.Popen, data: bytes) -> None:
    """Hand the job to the supervisor on its stdin (in a thread, so a full pipe cannot block us)."""

    def write() -> None:
        try:
            process.stdin.write(data)
            process.stdin.close()
        except (BrokenPipeError, ValueError, OSError):
            pass

    threading.Thread(target=write, daemon=True).start()


class _Capture:
    """Reads a pipe in a thread and keeps its last OUTPUT_BYTES (flooding output cannot exhaust our memory)."""

    def __init__(self, fd: int) -> None:
        self._fd, self._data = fd, bytearray()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            while chunk := os.read(self._fd, 1 << 16):
                self._data += chunk
                del self._data[:-OUTPUT_BYTES]
        except OSError:
            pass

    def text(self) -> str:
        self._thread.join(timeout=5)  # a weak run's leftover process may hold the pipe open
        return bytes(self._data).decode("utf-8", "replace")


def _end_run(process: subprocess.Popen) -> None:
    """Kill whatever is left: PID 1 of the run's namespace (the kernel then kills the rest), then our group."""
    if process.poll() is None:
        for pid in _children(process.pid):
            _kill(pid, os.kill)
    _kill(process.pid, os.killpg)  # the session's group; a PGID is never reused while in use, so this is safe
    process.wait()


def _kill(pid: int, how: Callable[[int, int], None]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        how(pid, signal.SIGKILL)


def _children(parent: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
                found.append(int(entry))
    return found
