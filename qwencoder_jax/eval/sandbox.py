"""Run untrusted programs (model-written code, test harnesses) inside a bubblewrap sandbox.

Design notes: docs/GENERATION.md, section `qwencoder_jax/eval/sandbox.py`.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import glob
import os
import pwd
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Mapping, Sequence

BWRAP = "/usr/bin/bwrap"
PRLIMIT = "/usr/bin/prlimit"
SANDBOX_CWD = "/sandbox"
# Host uids handed to sandboxed runs: far above any uid a distribution allocates, a range per process id and a
# fresh uid per run, so two runs (threads or processes) never share a process count.
_UID_BASE = 200_000_000
_UIDS_PER_PROCESS = 256
_PROCESS_RANGES = 4_194_304  # the kernel's PID_MAX_LIMIT: every live pid gets its own range
# /etc entries programs and toolchains read (dynamic loader, Debian's alternatives links, time zone, Java's
# config); everything else of the host's /etc stays hidden.
_ETC_ENTRIES = ("alternatives", "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "ssl", "mime.types",
                "nsswitch.conf", "protocols", "services")
_KILLING_SIGNALS = {signal.SIGKILL, signal.SIGXCPU, signal.SIGXFSZ, signal.SIGSEGV, signal.SIGBUS,
                    signal.SIGABRT, signal.SIGTERM, signal.SIGILL, signal.SIGFPE}


@dataclasses.dataclass(frozen=True)
class Limits:
    cpu_seconds: float = 10.0
    wall_seconds: float = 20.0
    memory_bytes: int = 2 << 30
    max_processes: int = 64
    file_size_bytes: int = 16 << 20
    output_bytes: int = 1 << 20


@dataclasses.dataclass(frozen=True)
class Result:
    status: str  # "passed" (exit 0) | "failed" (exit != 0) | "timeout" | "killed" (signal / limit)
    returncode: int | None
    stdout: str
    stderr: str
    wall_seconds: float
    output_truncated: bool

    @property
    def passed(self) -> bool:
        return self.status == "passed"


class SandboxUnavailable(RuntimeError):
    """The sandbox cannot be created on this machine; the message says why and what to do."""


_available_lock = threading.Lock()
_available_checked = False


def check_available() -> None:
    """Raises SandboxUnavailable naming the reason if a sandboxed `true` cannot run here (cached on success)."""
    global _available_checked
    with _available_lock:
        if _available_checked:
            return
        for tool, package in ((BWRAP, "bubblewrap"), (PRLIMIT, "util-linux")):
            if not os.access(tool, os.X_OK):
                raise SandboxUnavailable(
                    f"{tool} is missing: install the Debian package `{package}` (scripts/setup.sh installs "
                    "scripts/apt-packages.txt), or pass unsandboxed=True / --unsandboxed to run untrusted code "
                    "without isolation")
        probe = _run_sandboxed(["/bin/true"], {}, None, Limits(cpu_seconds=5, wall_seconds=20), None, ())
        if not probe.passed:
            raise SandboxUnavailable(
                "bubblewrap could not create a sandbox (user, network, PID and mount namespaces are needed; "
                "check /proc/sys/user/max_user_namespaces and kernel.unprivileged_userns_clone): "
                f"status {probe.status}, returncode {probe.returncode}, stderr: {probe.stderr.strip()[:2000]}")
        _available_checked = True


def run(argv: Sequence[str], *, files: Mapping[str, str | bytes] = {}, stdin: bytes | None = None,
        limits: Limits = Limits(), env: Mapping[str, str] | None = None, readonly_binds: Sequence[str] = (),
        unsandboxed: bool = False) -> Result:
    """Runs `argv` with `files` written into a fresh working directory (the cwd, removed afterwards).

    `readonly_binds`: extra host paths made visible read-only at the same path ("SRC" or "SRC:DEST"), e.g. a
    toolchain outside /usr; they must be readable by an unprivileged user (nothing under /root is).
    `env` is added to a small default environment (PATH, HOME=cwd, LANG, TMPDIR). `unsandboxed=True` runs the
    program directly (only rlimits and the timeout apply) and warns on stderr every time.
    """
    if not argv:
        raise ValueError("sandbox.run needs a non-empty argv (the program and its arguments)")
    if isinstance(argv, str):
        raise TypeError(f"sandbox.run takes argv as a sequence of strings, not one string: {argv!r}")
    if unsandboxed:
        print("WARNING: running untrusted code WITHOUT a sandbox (unsandboxed=True): it can read, write and delete "
              "anything this user can, use the network, and kill processes", file=sys.stderr, flush=True)
        return _run_unsandboxed(list(argv), files, stdin, limits, env)
    check_available()
    return _run_sandboxed(list(argv), files, stdin, limits, env, readonly_binds)


def run_many(jobs: Sequence[dict], workers: int = 2) -> list[Result]:
    """run(**job) for each job, `workers` at a time (threads driving subprocesses); results in job order."""
    if workers < 1:
        raise ValueError(f"run_many needs workers >= 1, got {workers}")
    if not jobs:
        return []
    if not any(job.get("unsandboxed", False) for job in jobs):
        check_available()  # fail once, clearly, rather than once per job
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda job: run(**job), jobs))


# --- uids ---------------------------------------------------------------------------------------------------

_uid_lock = threading.Lock()
_uids_in_use: set[int] = set()
_uid_counter = 0


def _acquire_uid() -> int:
    """A host uid no live run (of this or another process) uses and no process, not even a zombie, still holds:
    orphaned zombies of a finished run are reaped late by the host's init and would count against RLIMIT_NPROC
    if the uid were reused at once."""
    global _uid_counter
    process_base = _UID_BASE + (os.getpid() % _PROCESS_RANGES) * _UIDS_PER_PROCESS
    with _uid_lock:
        for _ in range(_UIDS_PER_PROCESS):
            uid = process_base + _uid_counter % _UIDS_PER_PROCESS
            _uid_counter += 1
            if uid not in _uids_in_use and not _processes_of_uid(uid, include_zombies=True):
                _uids_in_use.add(uid)
                return uid
    raise RuntimeError(f"no free sandbox uid in [{process_base}, {process_base + _UIDS_PER_PROCESS})")


def _release_uid(uid: int) -> None:
    with _uid_lock:
        _uids_in_use.discard(uid)


def _processes_of_uid(uid: int, include_zombies: bool = False) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as status:
                for line in status:
                    if line.startswith("State:") and line.split()[1] in ("Z", "X") and not include_zombies:
                        break  # already dead, waiting to be reaped by its parent
                    if line.startswith("Uid:"):
                        if int(line.split()[1]) == uid:  # real uid
                            pids.append(int(entry))
                        break
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return pids


def _kill_uid(uid: int) -> None:
    """SIGKILLs every process of `uid` until none is left (a fork bomb keeps forking while it is swept)."""
    for _ in range(200):
        pids = _processes_of_uid(uid)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.01)
    raise RuntimeError(f"sandbox processes of uid {uid} survived repeated SIGKILL: {_processes_of_uid(uid)}")


# --- running ------------------------------------------------------------------------------------------------

def _write_files(directory: str, files: Mapping[str, str | bytes]) -> None:
    for name, content in files.items():
        normal = os.path.normpath(name)
        if os.path.isabs(name) or normal.startswith(".."):
            raise ValueError(f"sandbox file name {name!r} must be a relative path inside the working directory")
        path = os.path.join(directory, normal)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(content.encode("utf-8") if isinstance(content, str) else content)


def _environment(env: Mapping[str, str] | None, home: str) -> dict[str, str]:
    base = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": home, "LANG": "C.UTF-8", "TMPDIR": "/tmp",
            "PYTHONDONTWRITEBYTECODE": "1"}
    base.update(env or {})
    return base


def _prlimit_argv(limits: Limits, processes: int) -> list[str]:
    cpu = max(1, int(round(limits.cpu_seconds)))
    # Hard CPU limit one second above the soft one: SIGXCPU first, SIGKILL if the program ignores it.
    return [PRLIMIT, f"--cpu={cpu}:{cpu + 1}", f"--as={limits.memory_bytes}", f"--nproc={processes}",
            f"--fsize={limits.file_size_bytes}", "--core=0", "--"]


def _bwrap_argv(root: str, workdir: str, uid: int, readonly_binds: Sequence[str]) -> list[str]:
    # --disable-userns: the program cannot create user namespaces of its own (less kernel surface to attack).
    argv = [BWRAP, "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent", "--new-session",
            "--hostname", "sandbox",
            "--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            argv += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            argv += ["--ro-bind", top, top]
    etc = [f"/etc/{name}" for name in _ETC_ENTRIES] + sorted(glob.glob("/etc/java-*"))
    for path in etc:
        if os.path.exists(path):
            argv += ["--ro-bind", path, path]
    argv += ["--ro-bind", os.path.join(root, "passwd"), "/etc/passwd",
             "--ro-bind", os.path.join(root, "group"), "/etc/group",
             "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp",
             "--bind", workdir, SANDBOX_CWD, "--chdir", SANDBOX_CWD]
    for bind in readonly_binds:
        source, _, destination = bind.partition(":")
        argv += ["--ro-bind", source, destination or source]
    return argv


def _run_sandboxed(argv, files, stdin, limits, env, readonly_binds) -> Result:
    as_root = os.geteuid() == 0
    uid = _acquire_uid() if as_root else os.getuid()
    gid = uid if as_root else os.getgid()
    root = tempfile.mkdtemp(prefix="qcj-sandbox-")
    try:
        os.chmod(root, 0o711)  # bwrap runs as the sandbox uid and must reach the working dir and passwd files
        workdir = os.path.join(root, "work")
        os.mkdir(workdir, 0o700)
        _write_files(workdir, files)
        name = "sandbox" if as_root else pwd.getpwuid(uid).pw_name
        for filename, text in (("passwd", f"{name}:x:{uid}:{gid}::{SANDBOX_CWD}:/bin/sh\n"),
                               ("group", f"{name}:x:{gid}:\n")):
            with open(os.path.join(root, filename), "w") as handle:
                handle.write(text)
            os.chmod(os.path.join(root, filename), 0o644)
        if as_root:
            for directory, subdirectories, filenames in os.walk(workdir):
                os.chown(directory, uid, gid)
                for filename in filenames:
                    os.chown(os.path.join(directory, filename), uid, gid)
            # bwrap's two processes (outside and inside the PID namespace) count against the limit too.
            processes = limits.max_processes + 2
        else:
            # Without root the count includes every process this user already runs.
            processes = limits.max_processes + 2 + len(_processes_of_uid(uid))
        command = _prlimit_argv(limits, processes) + _bwrap_argv(root, workdir, uid, readonly_binds) + ["--"] + argv
        extra = dict(user=uid, group=gid, extra_groups=[]) if as_root else {}
        try:
            return _execute(command, stdin, limits, _environment(env, SANDBOX_CWD), cwd=root, **extra)
        finally:
            # The PID namespace dies with bwrap's init; sweeping the run's uid as well also catches anything
            # that outlived it, and frees the uid's process count for RLIMIT_NPROC.
            if as_root:
                _kill_uid(uid)
    finally:
        shutil.rmtree(root, ignore_errors=True)
        if as_root:
            _release_uid(uid)


def _run_unsandboxed(argv, files, stdin, limits, env) -> Result:
    workdir = tempfile.mkdtemp(prefix="qcj-unsandboxed-")
    try:
        _write_files(workdir, files)
        processes = limits.max_processes + len(_processes_of_uid(os.getuid()))
        environment = dict(os.environ)
        environment.update(_environment(env, workdir))
        return _execute(_prlimit_argv(limits, processes) + argv, stdin, limits, environment, cwd=workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _execute(command, stdin, limits, environment, *, cwd, **popen_extra) -> Result:
    start = time.monotonic()
    process = subprocess.Popen(command, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd, env=environment,
                               start_new_session=True, close_fds=True, **popen_extra)
    captured = {"stdout": bytearray(), "stderr": bytearray()}
    truncated = timed_out = False
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ, "stdout")
    selector.register(process.stderr, selectors.EVENT_READ, "stderr")
    pending_input = memoryview(stdin or b"")
    if stdin is not None:
        os.set_blocking(process.stdin.fileno(), False)
        if pending_input:
            selector.register(process.stdin, selectors.EVENT_WRITE, "stdin")
        else:
            process.stdin.close()
    deadline = start + limits.wall_seconds
    open_streams = 2
    while open_streams:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            timed_out = True
            break
        for key, _ in selector.select(timeout=min(remaining, 0.5)):
            if key.data == "stdin":
                try:
                    written = os.write(key.fileobj.fileno(), pending_input[:65536])
                    pending_input = pending_input[written:]
                except (BrokenPipeError, BlockingIOError) as error:
                    if isinstance(error, BrokenPipeError):
                        pending_input = pending_input[:0]
                if not pending_input:
                    selector.unregister(key.fileobj)
                    key.fileobj.close()
                continue
            chunk = os.read(key.fileobj.fileno(), 65536)
            if not chunk:
                selector.unregister(key.fileobj)
                open_streams -= 1
                continue
            buffer = captured[key.data]
            room = limits.output_bytes - len(captured["stdout"]) - len(captured["stderr"])
            buffer += chunk[:max(room, 0)]
            if len(chunk) > room:
                truncated = True
        if truncated:
            break
    if timed_out or truncated:
        _kill_group(process)
    try:
        returncode = process.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_group(process)
        returncode = process.wait()
    selector.close()
    for stream in (process.stdout, process.stderr, process.stdin):
        if stream is not None and not stream.closed:
            stream.close()
    wall = time.monotonic() - start
    stdout = captured["stdout"].decode("utf-8", errors="replace")
    stderr = captured["stderr"].decode("utf-8", errors="replace")
    if truncated:
        stderr += f"\n[sandbox: output exceeded {limits.output_bytes} bytes; the run was stopped]\n"
        return Result("killed", returncode, stdout, stderr, wall, True)
    if timed_out:
        stderr += f"\n[sandbox: wall-clock limit of {limits.wall_seconds} s reached; the run was killed]\n"
        return Result("timeout", None, stdout, stderr, wall, False)
    return Result(_status(returncode), returncode, stdout, stderr, wall, False)


def _status(returncode: int) -> str:
    if returncode == 0:
        return "passed"
    if returncode < 0:
        return "killed"
    # bwrap and shells report a child killed by signal N as exit status 128 + N.
    if returncode > 128 and returncode - 128 in {int(s) for s in _KILLING_SIGNALS}:
        return "killed"
    return "failed"


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
