"""The code sandbox: a pass needs the tests to run to completion, and each run is isolated from this process."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from benchmarks.harness import sandbox
from tests.helpers import REPO

PROMPT = 'def add(a, b):\n    """Return a + b."""\n'
TEST = textwrap.dedent("""
    def check(candidate):
        assert candidate(2, 3) == 5
        assert abs(candidate(0.5, 0.25) - 0.75) < 1e-9
        assert add(1, 1) == 2
""")
WRONG = PROMPT + "    return 0\n"
FAKE_PASSES = {
    "sys.exit(0) after the code": WRONG + "import sys\nsys.exit(0)\n",
    "sys.exit(0) inside the call": PROMPT + "    import sys\n    sys.exit(0)\n",
    "os._exit(0) inside the call": PROMPT + "    import os\n    os._exit(0)\n",
    "atexit exits 0": WRONG + "import atexit, os\natexit.register(lambda: os._exit(0))\n",
    "excepthook exits 0": WRONG + "import os, sys\nsys.excepthook = lambda *exc: os._exit(0)\n",
    "object equal to anything": (
        "class Anything:\n    def __eq__(self, other):\n        return True\n    __ne__ = lambda self, o: False\n"
        "    __sub__ = lambda self, o: 0\n" + PROMPT + "    return Anything()\n"),
    "int subclass equal to anything": (
        "class Int(int):\n    __eq__ = lambda self, o: True\n" + PROMPT + "    return Int(0)\n"),
    "shadowed and patched builtins": (
        "import builtins\nbuiltins.abs = lambda x: 0\nabs = lambda x: 0\n" + WRONG),
    "prints a nonce-like line": WRONG + "print('0' * 32)\nimport os\nos._exit(0)\n",
}


@pytest.fixture(scope="module")
def isolated():
    status = sandbox.isolation()
    if not status.available:
        if sys.platform == "linux" and os.geteuid() == 0:
            pytest.fail(f"running as root on Linux, yet the sandbox cannot isolate runs: {status.reason}")
        pytest.skip(f"no isolated sandbox here: {status.reason}")
    return status


def test_a_correct_completion_passes(isolated):
    result = sandbox.run_humaneval(PROMPT + "    return a + b\n", prompt=PROMPT, test=TEST, entry_point="add")
    assert result.passed and result.isolated and result.returncode == 0


@pytest.mark.parametrize("code", FAKE_PASSES.values(), ids=FAKE_PASSES.keys())
def test_fake_pass_tricks_do_not_pass(isolated, code):
    result = sandbox.run_humaneval(code, prompt=PROMPT, test=TEST, entry_point="add")
    assert not result.passed and not result.timed_out
    assert result.error  # the teacher is told why


def test_knowing_the_nonce_does_not_help(isolated, monkeypatch):
    """Even code that knew the run's nonce cannot report a pass: the status pipe is out of its reach."""
    nonce = "5" * 32
    monkeypatch.setattr(sandbox.secrets, "token_hex", lambda n: nonce)
    code = WRONG + textwrap.dedent(f"""
        import os, sys
        print({nonce!r}, flush=True); print({nonce!r}, file=sys.stderr, flush=True)
        for fd in range(3, 64):
            for path in (fd, f"/proc/1/fd/{{fd}}", f"/proc/self/fd/{{fd}}"):
                try:
                    os.write(path if isinstance(path, int) else os.open(path, os.O_WRONLY), b"{nonce}\\n")
                except OSError:
                    pass
        os._exit(0)
    """)
    result = sandbox.run_humaneval(code, prompt=PROMPT, test=TEST, entry_point="add")
    assert nonce in result.stdout and not result.passed


def test_the_nonce_is_nowhere_the_code_can_read(isolated, monkeypatch):
    nonce = "7" * 32
    monkeypatch.setattr(sandbox.secrets, "token_hex", lambda n: nonce)
    code = textwrap.dedent("""
        import gc, os
        seen = []
        for pid in os.listdir("/proc"):
            for part in ("cmdline", "environ"):
                try:
                    seen.append(open(f"/proc/{pid}/{part}", "rb").read().decode(errors="replace"))
                except OSError:
                    pass
        seen += [repr(o) for o in gc.get_objects() if isinstance(o, (dict, list, tuple))]
        print("\\n".join(seen)[-60000:])
    """)
    result = sandbox.run_python(code)
    assert result.passed and "/proc" not in result.stderr and nonce not in result.stdout
    assert len(result.stdout) > 1000  # it did read things


def test_the_code_cannot_read_the_parent_environment(isolated, monkeypatch):
    monkeypatch.setenv("CD_TEST_SECRET", "do-not-leak-4711")
    code = textwrap.dedent(f"""
        import os
        print("env", dict(os.environ))
        print("ppid", os.getppid(), "sees the test process:", os.path.exists("/proc/{os.getpid()}"))
        for pid in [os.getppid(), {os.getpid()}, *os.listdir("/proc")]:
            try:
                print(open(f"/proc/{{pid}}/environ", "rb").read())
            except OSError as exc:
                print("refused", pid, type(exc).__name__)
    """)
    result = sandbox.run_python(code)
    assert result.passed, result.error
    assert "do-not-leak-4711" not in result.stdout + result.stderr
    assert "ppid 1 sees the test process: False" in result.stdout  # its parent is the run's own PID 1
    assert "CD_TEST_SECRET" not in result.stdout


def test_the_code_cannot_kill_its_parent():
    """In a helper process (so a failure cannot take pytest down): the code tries to kill whoever started it."""
    helper = textwrap.dedent("""
        import os, sys
        from benchmarks.harness import sandbox
        if not sandbox.isolation().available:
            print("unavailable"); sys.exit(0)
        code = ("import os, signal\\n"
                f"for pid in (os.getppid(), {os.getpid()}, {os.getppid()}, -1, 0):\\n"
                "    try:\\n        os.kill(pid, signal.SIGKILL)\\n    except OSError as exc:\\n"
                "        print(pid, type(exc).__name__, flush=True)\\n")
        result = sandbox.run_python(code)
        print("survived;", result.stdout.replace(chr(10), " "), "timed out" if result.timed_out else "")
    """)
    done = subprocess.run([sys.executable, "-c", helper], cwd=REPO, capture_output=True, text=True, timeout=60)
    if done.stdout.startswith("unavailable"):
        pytest.skip("no isolated sandbox here")
    assert done.stdout.startswith("survived;"), (done.returncode, done.stdout, done.stderr)
    assert "PermissionError" in done.stdout or "ProcessLookupError" in done.stdout


def _processes_running(marker: str) -> list[str]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if marker in cmdline:
            found.append(f"{pid}: {cmdline}")
    return found


DAEMON = textwrap.dedent("""
    import os, time
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            os.execv("/bin/sleep", ["sleep", "{seconds}"])
        os._exit(0)
    time.sleep(0.5)
    print("daemon started", flush=True)
""")


@pytest.mark.parametrize("ending", ["returns", "times out"])
def test_a_double_forked_setsid_daemon_dies_with_the_run(isolated, ending):
    seconds = "3141.5" if ending == "returns" else "2718.5"
    code = DAEMON.replace("{seconds}", seconds) + ("while True:\n    pass\n" if ending == "times out" else "")
    result = sandbox.run_python(code, limits=sandbox.Limits(timeout=3))
    assert "daemon started" in result.stdout and result.timed_out == (ending == "times out")
    assert _processes_running(f"sleep {seconds}") == []


def test_process_count_is_bounded(isolated):
    code = textwrap.dedent("""
        import os, time
        children = 0
        for _ in range(40):
            try:
                pid = os.fork()
            except OSError:
                break
            if pid == 0:
                time.sleep(3)
                os._exit(0)
            children += 1
        print("children", children)
    """)
    result = sandbox.run_python(code, limits=sandbox.Limits(processes=6))
    assert result.passed, result.error
    assert result.stdout.split() == ["children", "5"]  # itself plus 5 reaches the bound of 6


def test_memory_is_bounded_per_process_and_for_files(isolated):
    code = textwrap.dedent("""
        import os
        try:
            bytearray(700 << 20)
            print("parent allocated")
        except MemoryError:
            print("parent refused")
        pid = os.fork()
        if pid == 0:
            try:
                bytearray(700 << 20)
                os._exit(0)
            except MemoryError:
                os._exit(3)
        print("child refused" if os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 3 else "child allocated")
        written = 0
        try:
            for i in range(40):
                with open(f"/dev/shm/block{i}", "wb") as handle:
                    handle.write(b"x" * (4 << 20))
                written += 4
        except OSError as exc:
            print("files stopped at", written, "MB:", type(exc).__name__)
    """)
    result = sandbox.run_python(code, limits=sandbox.Limits(memory_bytes=512 << 20, tmpfs_bytes=32 << 20))
    assert result.passed, result.error
    lines = result.stdout.splitlines()
    assert lines[:2] == ["parent refused", "child refused"]
    assert lines[2].startswith("files stopped at") and int(lines[2].split()[3]) <= 32


def test_files_written_vanish_with_the_run_and_the_code_is_unprivileged(isolated, tmp_path):
    marker = tmp_path.name + "-sandbox-marker"
    code = textwrap.dedent(f"""
        import os
        for folder in ("/tmp", "/var/tmp", "/dev/shm", os.getcwd()):
            open(os.path.join(folder, "{marker}"), "w").write("x")
        print("uid", os.getuid())
        try:  # hidden under an empty mount, or gone with /tmp when the clone lives there
            print("repository", "hidden" if not os.listdir({str(REPO)!r}) else "visible")
        except FileNotFoundError:
            print("repository hidden")
        try:
            open("/etc/shadow").read()
            print("read /etc/shadow")
        except OSError as exc:
            print("shadow", type(exc).__name__)
    """)
    result = sandbox.run_python(code)
    assert result.passed, result.error
    assert "uid 0" not in result.stdout and "repository hidden" in result.stdout
    assert "read /etc/shadow" not in result.stdout
    for folder in ("/tmp", "/var/tmp", "/dev/shm"):
        assert not (Path(folder) / marker).exists()


def test_the_code_has_no_network(isolated):
    result = sandbox.run_python("import socket\nsocket.create_connection(('127.0.0.1', 22), timeout=2)")
    assert not result.passed and ("Network is unreachable" in result.error or "refused" in result.error)


def test_runaway_code_and_flooding_output_are_stopped(isolated):
    assert sandbox.run_python("while True:\n    pass", limits=sandbox.Limits(timeout=2)).timed_out
    flood = sandbox.run_python("import sys\nfor _ in range(2000):\n    sys.stdout.write('x' * 10000)\n")
    assert flood.passed and len(flood.stdout) <= sandbox.OUTPUT_BYTES


def test_scripts_pass_only_when_they_run_to_their_end(isolated):
    assert sandbox.run_python("print(6 * 7)").stdout.strip() == "42"
    assert not sandbox.run_python("import sys\nsys.exit(0)\nprint('never')").passed
    failed = sandbox.run_python("assert 1 == 2, 'nope'")
    assert not failed.passed and "AssertionError: nope" in failed.error


def test_without_isolation_runs_are_refused_unless_a_weak_sandbox_is_allowed(monkeypatch):
    monkeypatch.setattr(sandbox, "isolation", lambda: sandbox.Isolation(False, "no namespaces (test)"))
    with pytest.raises(sandbox.SandboxUnavailableError, match=r"no namespaces \(test\).*--allow-weak-sandbox"):
        sandbox.run_humaneval(PROMPT + "    return a + b\n", prompt=PROMPT, test=TEST, entry_point="add")
    with pytest.raises(sandbox.SandboxUnavailableError):
        sandbox.run_python("pass")
    good = sandbox.run_humaneval(PROMPT + "    return a + b\n", prompt=PROMPT, test=TEST, entry_point="add",
                                 allow_weak=True)
    assert good.passed and not good.isolated
    for code in (FAKE_PASSES["sys.exit(0) after the code"], FAKE_PASSES["object equal to anything"]):
        assert not sandbox.run_humaneval(code, prompt=PROMPT, test=TEST, entry_point="add", allow_weak=True).passed
