"""The bubblewrap sandbox: ordinary programs run, hostile ones are contained and the host is left as it was."""

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading

import pytest

from qwencoder_jax.eval import sandbox

QUICK = sandbox.Limits(cpu_seconds=3, wall_seconds=6)


@pytest.fixture(scope="module", autouse=True)
def _sandbox_available():
    sandbox.check_available()  # no skip: a machine without the sandbox must fail these tests loudly


def _host_process_count() -> int:
    return sum(1 for entry in os.listdir("/proc") if entry.isdigit())


def _is_zombie(pid: str) -> bool:
    # A zombie holds no resources; the host's init reaps orphaned ones shortly after they exit.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def _sandbox_uid_processes() -> list[int]:
    """Live processes of any sandbox uid (sandbox runs use uids from sandbox._UID_BASE up)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/status") as status:
                    uid_line = next(line for line in status if line.startswith("Uid:"))
            except (OSError, StopIteration):
                continue
            if int(uid_line.split()[1]) >= sandbox._UID_BASE and not _is_zombie(entry):
                pids.append(int(entry))
    return pids


def _python(code: str, limits=QUICK, **kwargs) -> sandbox.Result:
    return sandbox.run(["python3", "main.py"], files={"main.py": code}, limits=limits, **kwargs)


def test_ordinary_program_runs_with_files_stdin_and_env():
    result = sandbox.run(
        ["python3", "main.py"],
        files={"main.py": "import os, sys\nprint(open('data/in.txt').read(), sys.stdin.read(), os.environ['ANSWER'])",
               "data/in.txt": "file"},
        stdin=b"piped", env={"ANSWER": "42"}, limits=QUICK)
    assert result.status == "passed" and result.passed and result.returncode == 0
    assert result.stdout.split() == ["file", "piped", "42"]
    assert not result.output_truncated


def test_nonzero_exit_and_exception_are_failures():
    assert _python("raise SystemExit(3)").status == "failed"
    result = _python("assert 1 == 2, 'wrong answer'")
    assert result.status == "failed" and result.returncode == 1 and "wrong answer" in result.stderr


def test_sandbox_sees_no_host_home_repository_or_secret():
    secret_dir = tempfile.mkdtemp()
    secret = os.path.join(secret_dir, "secret.txt")
    with open(secret, "w") as handle:
        handle.write("host secret")
    code = ("import os, sys\n"
            f"for path in ['/root', {secret!r}, {os.getcwd()!r}, '/home', '/etc/shadow']:\n"
            "    try:\n"
            "        print(path, os.listdir(path) if os.path.isdir(path) else open(path).read())\n"
            "    except OSError as error:\n"
            "        print(path, 'denied', type(error).__name__)\n")
    result = _python(code)
    assert result.status == "passed", result
    assert "host secret" not in result.stdout
    for line in result.stdout.splitlines():
        assert line.endswith("FileNotFoundError"), line


def test_writing_outside_the_working_directory_leaves_the_host_unchanged():
    host_file = os.path.join(tempfile.mkdtemp(), "host.txt")
    with open(host_file, "w") as handle:
        handle.write("original")
    code = ("import os\n"
            "written = []\n"
            f"for path in [{host_file!r}, '/usr/evil.txt', '/etc/evil.txt', '/tmp/scratch.txt', 'ok.txt']:\n"
            "    try:\n"
            "        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)\n"
            "        open(path, 'w').write('overwritten')\n"
            "        written.append(path)\n"
            "    except OSError:\n"
            "        pass\n"
            "print(written)\n")
    result = _python(code)
    assert result.status == "passed", result
    assert open(host_file).read() == "original"
    assert not os.path.exists("/usr/evil.txt") and not os.path.exists("/etc/evil.txt")
    # Its own working directory and private /tmp are writable; the host-path write lands in the sandbox's /tmp.
    assert "'ok.txt'" in result.stdout and "'/tmp/scratch.txt'" in result.stdout
    assert "'/usr/evil.txt'" not in result.stdout


def test_network_is_unreachable_outside_and_on_host_localhost():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    accepted = []
    listener.settimeout(4)

    def accept():
        try:
            accepted.append(listener.accept())
        except OSError:
            pass

    thread = threading.Thread(target=accept)
    thread.start()
    code = ("import socket\n"
            f"for address in [('1.1.1.1', 80), ('8.8.8.8', 53), ('127.0.0.1', {port})]:\n"
            "    try:\n"
            "        socket.create_connection(address, timeout=2)\n"
            "        print('connected', address)\n"
            "    except OSError as error:\n"
            "        print('refused', address, error)\n")
    result = _python(code)
    thread.join()
    listener.close()
    assert result.status == "passed", result
    lines = result.stdout.splitlines()
    assert len(lines) == 3 and all(line.startswith("refused") for line in lines), lines
    assert accepted == []


def test_fork_bomb_is_capped_and_cleaned_up():
    before = _host_process_count()
    limits = sandbox.Limits(cpu_seconds=3, wall_seconds=8, max_processes=16)
    code = ("import os, time\n"
            "children = 0\n"
            "while True:\n"
            "    try:\n"
            "        pid = os.fork()\n"
            "    except OSError:\n"
            "        break\n"
            "    if pid == 0:\n"
            "        time.sleep(60)\n"
            "        os._exit(0)\n"
            "    children += 1\n"
            "print(children)\n"
            "raise SystemExit(1)\n")
    result = _python(code, limits=limits)
    assert result.status == "failed", result
    assert int(result.stdout) <= limits.max_processes
    assert _sandbox_uid_processes() == []
    assert _host_process_count() <= before + 5  # other work on the machine may start a few


def test_unbounded_fork_bomb_times_out_and_is_swept():
    code = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    result = _python(code, limits=sandbox.Limits(cpu_seconds=2, wall_seconds=3, max_processes=32))
    assert result.status in ("timeout", "killed"), result
    assert _sandbox_uid_processes() == []
    assert os.getpid() > 0 and subprocess.run(["true"]).returncode == 0  # the host can still fork


def test_memory_bomb_fails():
    result = _python("blocks = []\nwhile True:\n    blocks.append(bytearray(64 << 20))\n",
                     limits=sandbox.Limits(cpu_seconds=5, wall_seconds=10, memory_bytes=512 << 20))
    assert result.status in ("failed", "killed") and "MemoryError" in result.stderr, result


def test_cpu_loop_is_killed_by_the_cpu_limit():
    result = _python("while True:\n    pass\n", limits=sandbox.Limits(cpu_seconds=1, wall_seconds=10))
    assert result.status == "killed" and result.returncode == 128 + signal.SIGXCPU, result
    assert result.wall_seconds < 9


def test_sleep_is_stopped_by_the_wall_clock_and_descendants_die():
    code = "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(300)\ntime.sleep(300)\n"
    result = _python(code, limits=sandbox.Limits(cpu_seconds=5, wall_seconds=1))
    assert result.status == "timeout" and result.returncode is None
    assert result.wall_seconds < 5
    assert _sandbox_uid_processes() == []


def test_killing_the_parent_and_everything_reaches_nothing_on_the_host():
    result = _python("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nprint('still here')\n")
    assert result.status == "passed"
    result = sandbox.run(["sh", "-c", "kill -9 -1; kill -9 1; echo done"], limits=QUICK)
    assert result.status == "passed" and "done" in result.stdout
    assert os.getppid() > 1  # the test process and its parent are alive
    assert subprocess.run([sys.executable, "-c", "pass"]).returncode == 0


def test_huge_output_is_capped_and_flagged():
    limits = sandbox.Limits(cpu_seconds=5, wall_seconds=10, output_bytes=64 << 10)
    result = _python("import sys\nwhile True:\n    sys.stdout.write('x' * 4096)\n", limits=limits)
    assert result.status == "killed" and result.output_truncated
    assert len(result.stdout) + len(result.stderr.split("\n[sandbox:")[0]) <= limits.output_bytes
    assert "output exceeded" in result.stderr


def test_file_size_limit():
    limits = sandbox.Limits(cpu_seconds=5, wall_seconds=10, file_size_bytes=1 << 20)
    # A shell is killed by SIGXFSZ; Python ignores that signal and raises "File too large" instead.
    result = sandbox.run(["sh", "-c", "head -c 4194304 /dev/zero > big"], limits=limits)
    assert result.status == "killed" and result.returncode == 128 + signal.SIGXFSZ, result
    result = _python("open('big', 'wb').write(b'x' * (4 << 20))\n", limits=limits)
    assert result.status == "failed" and "File too large" in result.stderr, result


def test_files_must_stay_inside_the_working_directory():
    with pytest.raises(ValueError, match="relative path"):
        sandbox.run(["true"], files={"../escape.txt": "x"})
    with pytest.raises(ValueError, match="relative path"):
        sandbox.run(["true"], files={"/etc/escape.txt": "x"})


def test_readonly_binds_are_visible_and_read_only():
    directory = tempfile.mkdtemp()
    os.chmod(directory, 0o755)
    with open(os.path.join(directory, "tool.txt"), "w") as handle:
        handle.write("toolchain")
    os.chmod(os.path.join(directory, "tool.txt"), 0o644)
    code = (f"print(open({directory!r} + '/tool.txt').read())\n"
            f"open({directory!r} + '/tool.txt', 'w')\n")
    result = _python(code, readonly_binds=[directory])
    assert result.status == "failed" and "toolchain" in result.stdout and "Read-only file system" in result.stderr


def test_run_many_keeps_order_and_isolates_runs():
    jobs = [dict(argv=["python3", "-c", f"print({i} * {i})"], limits=QUICK) for i in range(6)]
    results = sandbox.run_many(jobs, workers=2)
    assert [r.stdout.strip() for r in results] == [str(i * i) for i in range(6)]


def test_unsandboxed_runs_and_warns_loudly(capfd):
    result = sandbox.run(["python3", "-c", "print('hi')"], unsandboxed=True, limits=QUICK)
    assert result.status == "passed" and result.stdout == "hi\n"
    assert "WITHOUT a sandbox" in capfd.readouterr().err


def test_bad_argv_is_rejected():
    with pytest.raises(TypeError, match="sequence of strings"):
        sandbox.run("python3 -c 1")
    with pytest.raises(ValueError, match="non-empty"):
        sandbox.run([])


def test_no_nested_user_namespaces():
    result = sandbox.run(["unshare", "--user", "true"], limits=QUICK)
    assert result.status == "failed", result


def test_unavailable_sandbox_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(sandbox, "_available_checked", False)
    monkeypatch.setattr(sandbox, "BWRAP", "/nonexistent/bwrap")
    with pytest.raises(sandbox.SandboxUnavailable, match="bubblewrap.*--unsandboxed"):
        sandbox.run(["true"])
    # bwrap present but unable to build the sandbox (here: a program that always fails).
    monkeypatch.setattr(sandbox, "BWRAP", "/bin/false")
    with pytest.raises(sandbox.SandboxUnavailable, match="could not create a sandbox"):
        sandbox.check_available()
    with pytest.raises(sandbox.SandboxUnavailable):
        sandbox.run_many([dict(argv=["true"])])
