"""The two processes inside one sandbox run (started by sandbox.py beside this module; standard library only).

``supervise``: trusted. In an isolated run it is PID 1 of the run's own PID, mount, network, IPC and UTS
namespaces, and starts as root there. It reads the job (code, tests, nonce) from stdin, mounts a small private
tmpfs over every world-writable directory and empty read-only ones over the directories it is told to hide,
starts the worker under a uid of its own, then gives up root for a second uid. It never runs model-written code:
it loads the tests into its own interpreter and calls the candidate function through the worker, receiving plain
data only. It writes the run's nonce on the status pipe (a file descriptor the worker never holds) only after
``check`` returned, or, for a plain script, after the worker reported that the script ran to its end.

``work``: untrusted. Executes the code in a fresh namespace, then answers calls with plain data (None, bool, int,
float, complex, str, bytes and lists, tuples, dicts, sets of those, compared by exact type), so an object that
claims to equal anything never reaches the tests.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import linecache
import os
import struct
import subprocess
import sys
import traceback
from typing import Any

HEADER = struct.Struct("!Q")
MAX_MESSAGE = 32 << 20
MAX_DEPTH = 64
SCALARS = {type(None): "none", bool: "bool", int: "int", float: "float", complex: "complex", str: "str",
           bytes: "bytes"}
SEQUENCES = {list: "list", tuple: "tuple", set: "set", frozenset: "frozenset"}
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_BIND = 1, 2, 4, 4096
SHARED_TMP = ("/dev/shm", "/var/tmp", "/run/lock")  # world-writable on most systems; all share the one tmpfs


# -- messages: length-prefixed JSON over pipes --------------------------------------------------------------------
def send(fd: int, message: Any) -> None:
    data = json.dumps(message).encode()
    data = HEADER.pack(len(data)) + data
    while data:
        data = data[os.write(fd, data):]


def _read_exactly(fd: int, size: int) -> bytes | None:
    chunks, left = [], size
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def receive(fd: int) -> Any:
    """The next message, or None when the other side closed the pipe (exited)."""
    header = _read_exactly(fd, HEADER.size)
    if header is None:
        return None
    (size,) = HEADER.unpack(header)
    if size > MAX_MESSAGE:
        raise ValueError(f"message of {size} bytes is over the {MAX_MESSAGE}-byte limit")
    body = _read_exactly(fd, size)
    return None if body is None else json.loads(body)


# -- plain data ---------------------------------------------------------------------------------------------------
def encode(value: Any, depth: int = 0) -> list:
    kind = type(value)  # exact types: a subclass (say, of int with its own __eq__) is refused
    if depth > MAX_DEPTH:
        raise ValueError("value nested too deeply to pass back")
    if kind in SCALARS:
        tag = SCALARS[kind]
        if kind is float:
            return [tag, repr(value)]
        if kind is complex:
            return [tag, [repr(value.real), repr(value.imag)]]
        return [tag, value.hex() if kind is bytes else str(value) if kind is int else value]
    if kind in SEQUENCES:
        return [SEQUENCES[kind], [encode(item, depth + 1) for item in value]]
    if kind is dict:
        return ["dict", [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in value.items()]]
    raise TypeError(f"a {kind.__qualname__} cannot pass between the tests and the candidate: only None, bool, int, "
                    "float, complex, str, bytes and lists, tuples, dicts and sets of them do")


def decode(data: list) -> Any:
    tag, payload = data
    builders = {"none": lambda p: None, "bool": bool, "int": int, "float": float, "str": str,
                "bytes": bytes.fromhex, "complex": lambda p: complex(float(p[0]), float(p[1])),
                "list": lambda p: [decode(x) for x in p], "tuple": lambda p: tuple(decode(x) for x in p),
                "set": lambda p: {decode(x) for x in p}, "frozenset": lambda p: frozenset(decode(x) for x in p),
                "dict": lambda p: {decode(k): decode(v) for k, v in p}}
    wrong_payload = (tag == "bool" and type(payload) is not bool) or (tag == "str" and type(payload) is not str)
    if tag not in builders or wrong_payload:
        raise ValueError(f"malformed value from the worker: {tag!r}")
    return builders[tag](payload)


def _describe(exc: BaseException) -> list[str]:
    return [type(exc).__name__, str(exc)[:2000]]


def _compile(source: str, filename: str):
    """Compiled with asserts on; the source is registered so tracebacks show its lines."""
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    return compile(source, filename, "exec", dont_inherit=True, optimize=0)


def print_failure(exc: BaseException) -> None:
    """The traceback without the harness's own frames: the lines of the tests and the candidate only."""
    frames = [frame for frame in traceback.extract_tb(exc.__traceback__) if frame.filename.startswith("<")
              and frame.filename != "<string>"]
    text = "".join(traceback.format_list(frames)) + "".join(traceback.format_exception_only(exc))
    sys.stderr.write("Traceback (most recent call last):\n" + text)


# -- worker (untrusted code runs here) ----------------------------------------------------------------------------
def work(request_fd: int, reply_fd: int) -> None:
    job = receive(request_fd)
    namespace: dict[str, Any] = {"__name__": "__main__"}
    try:
        exec(_compile(job["code"], "<candidate>"), namespace)
    except BaseException as exc:  # SystemExit too: code that exits early did not run to its end
        print_failure(exc)
        send(reply_fd, {"error": _describe(exc)})
        return
    send(reply_fd, {"loaded": True})
    while (request := receive(request_fd)) is not None:
        try:
            function = namespace[request["function"]]
            value = function(*decode(request["args"]), **decode(request["kwargs"]))
            reply = {"value": encode(value)}
        except BaseException as exc:
            print_failure(exc)
            reply = {"error": _describe(exc)}
        send(reply_fd, reply)


# -- supervisor (trusted) -----------------------------------------------------------------------------------------
class WorkerError(Exception):
    """The candidate raised, returned something that is not plain data, or the worker died."""


def _raise_from_reply(reply: Any) -> Any:
    if reply is None:
        raise WorkerError("the candidate's process exited before it answered (sys.exit, os._exit or a crash)")
    if "error" in reply:
        name, message = reply["error"]
        builtin = getattr(builtins, name, None)
        if isinstance(builtin, type) and issubclass(builtin, Exception):
            raise builtin(message)
        raise WorkerError(f"{name}: {message}")
    return reply


class Candidate:
    """Stands in for the candidate function inside the tests: each call runs in the worker."""

    def __init__(self, name: str, request_fd: int, reply_fd: int) -> None:
        self.__name__ = name
        self._request_fd, self._reply_fd = request_fd, reply_fd

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        send(self._request_fd, {"function": self.__name__, "args": encode(list(args)), "kwargs": encode(kwargs)})
        reply = _raise_from_reply(receive(self._reply_fd))
        return decode(reply["value"])


def _mount(source: str, target: str, fstype: str | None, flags: int, data: str | None) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    encoded = [None if s is None else s.encode() for s in (source, target, fstype, data)]
    if libc.mount(encoded[0], encoded[1], encoded[2], flags, encoded[3]) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"mount {target}: {os.strerror(error)}")


def _private_filesystem(job: dict) -> str:
    """A size-limited tmpfs for every world-writable directory; hidden directories covered; the workdir."""
    _mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"size={job['tmpfs_bytes']},mode=1777")
    for target in SHARED_TMP:
        if os.path.isdir(target):
            source = "/tmp/." + target.strip("/").replace("/", "-")
            os.mkdir(source)
            os.chmod(source, 0o1777)
            _mount(source, target, None, MS_BIND, None)
    for target in job["hide"]:
        if os.path.isdir(target):
            _mount("tmpfs", target, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV, "size=4k,mode=755")
    workdir = "/tmp/work"
    os.mkdir(workdir, 0o700)
    os.chown(workdir, job["uid"], job["uid"])
    return workdir


def _start_worker(job: dict, workdir: str) -> tuple[subprocess.Popen, int, int]:
    request_read, request_write = os.pipe()
    reply_read, reply_write = os.pipe()
    command = [job["python"], "-I", "-c", job["source"], "work", str(request_read), str(reply_write)]
    if job["isolated"]:
        uid = str(job["uid"])
        command = [job["setpriv"], f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--no-new-privs",
                   "--inh-caps=-all", "--bounding-set=-all", "--", *command]
    worker = subprocess.Popen(command, cwd=workdir, env={"HOME": workdir, "PATH": "/usr/local/bin:/usr/bin:/bin"},
                              stdin=subprocess.DEVNULL, pass_fds=(request_read, reply_write))
    os.close(request_read)
    os.close(reply_write)
    return worker, request_write, reply_read


def _drop_root(uid: int) -> None:
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)


def _run_tests(job: dict, request_fd: int, reply_fd: int) -> None:
    """Load the candidate in the worker; then, for a function task, run ``check`` here against it."""
    send(request_fd, {"code": job["code"]})
    _raise_from_reply(receive(reply_fd))
    if job.get("test") is None:
        return
    tests: dict[str, Any] = {"__name__": "__tests__"}
    exec(_compile(job.get("prompt") or "", "<prompt>"), tests)
    exec(_compile(job["test"], "<tests>"), tests)
    candidate = Candidate(job["entry_point"], request_fd, reply_fd)
    tests[job["entry_point"]] = candidate  # some tests call the function by its name, as in one shared module
    tests["check"](candidate)


def supervise(status_fd: int) -> int:
    job = json.loads(sys.stdin.buffer.read())
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    nonce = job.pop("nonce")
    workdir = _private_filesystem(job) if job["isolated"] else os.getcwd()
    worker, request_fd, reply_fd = _start_worker(job, workdir)
    if job["isolated"]:
        _drop_root(job["uid"] + 1)
    try:
        _run_tests(job, request_fd, reply_fd)
    except BaseException as exc:
        print_failure(exc)
        return 1
    finally:
        os.close(request_fd)  # the worker's loop ends on end-of-file; in an isolated run the kernel ends the rest
        with contextlib.suppress(subprocess.TimeoutExpired):
            worker.wait(timeout=1)
    sys.stdout.flush()
    os.write(status_fd, nonce.encode() + b"\n")
    return 0


def main(argv: list[str]) -> int:
    if argv[0] == "supervise":
        return supervise(int(argv[1]))
    work(int(argv[1]), int(argv[2]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
