"""Run N JAX processes on this machine, as a pod would run one per host.

    python launch/local.py --num_processes 2 --devices_per_process 2 -- python -m some.entry --flag ...
    python launch/local.py --num_processes 2 --dry_run -- python -m some.entry   # print each process's command

Each process gets QWENCODER_COORDINATOR (a free local port), QWENCODER_NUM_PROCESSES, QWENCODER_PROCESS_ID and
XLA_FLAGS=--xla_force_host_platform_device_count=D, so `qwencoder_jax.distributed.initialize()` connects them.
Their output is streamed line by line with a `[pN]` prefix. If any process exits with an error, the others are
terminated (then killed after a grace period) and the launcher exits with that process's status, so a crash
never leaves the rest hanging in a collective. A whole-run timeout bounds everything else.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Sequence

from qwencoder_jax import cli_flags


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_env(process_id: int, num_processes: int, devices_per_process: int, port: int,
                heartbeat_timeout_seconds: int | None = None) -> dict[str, str]:
    env = dict(os.environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
    flags.append(f"--xla_force_host_platform_device_count={devices_per_process}")
    env.update({
        "XLA_FLAGS": " ".join(flags),
        "JAX_PLATFORMS": env.get("JAX_PLATFORMS", "cpu"),
        "QWENCODER_COORDINATOR": f"127.0.0.1:{port}",
        "QWENCODER_NUM_PROCESSES": str(num_processes),
        "QWENCODER_PROCESS_ID": str(process_id),
        "PYTHONUNBUFFERED": "1",
    })
    if heartbeat_timeout_seconds is not None:
        env["QWENCODER_HEARTBEAT_TIMEOUT_SECONDS"] = str(heartbeat_timeout_seconds)
    return env


def dry_run_lines(command: Sequence[str], num_processes: int, devices_per_process: int,
                  heartbeat_timeout_seconds: int | None = None) -> list[str]:
    """One shell line per process: the variables the launcher sets, then the command (nothing is started)."""
    port = free_port()
    names = ("XLA_FLAGS", "JAX_PLATFORMS", "QWENCODER_COORDINATOR", "QWENCODER_NUM_PROCESSES",
             "QWENCODER_PROCESS_ID", "QWENCODER_HEARTBEAT_TIMEOUT_SECONDS")
    lines = []
    for process_id in range(num_processes):
        env = process_env(process_id, num_processes, devices_per_process, port, heartbeat_timeout_seconds)
        assignments = " ".join(f"{name}={shlex.quote(env[name])}" for name in names if name in env)
        lines.append(f"{assignments} {shlex.join(command)}")
    return lines


def _stream(prefix: str, pipe, sink) -> None:
    for line in iter(pipe.readline, ""):
        sink.write(f"{prefix} {line}" if line.endswith("\n") else f"{prefix} {line}\n")
        sink.flush()
    pipe.close()


def _stop(processes: Sequence[subprocess.Popen], grace_seconds: float) -> None:
    """SIGTERM every live process (its whole process group), then SIGKILL what is left after the grace period."""
    for process in processes:
        if process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + grace_seconds
    for process in processes:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait()


def launch(command: Sequence[str], num_processes: int, devices_per_process: int = 1, timeout_seconds: float = 600,
           grace_seconds: float = 5.0, heartbeat_timeout_seconds: int | None = None, sink=None) -> int:
    """Run `command` as N processes; 0 when all succeed, else the first failure's exit status (124 on timeout)."""
    sink = sink or sys.stdout
    port = free_port()
    processes, threads = [], []
    for process_id in range(num_processes):
        # start_new_session: each process leads its own group, so killing it also kills what it spawned
        process = subprocess.Popen(list(command), env=process_env(process_id, num_processes, devices_per_process, port,
                                                                  heartbeat_timeout_seconds),
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                                   start_new_session=True)
        thread = threading.Thread(target=_stream, args=(f"[p{process_id}]", process.stdout, sink), daemon=True)
        thread.start()
        processes.append(process)
        threads.append(thread)

    deadline = time.monotonic() + timeout_seconds
    status = 0
    try:
        while True:
            codes = [process.poll() for process in processes]
            failed = [(i, code) for i, code in enumerate(codes) if code not in (None, 0)]
            if failed:
                process_id, status = failed[0]
                sink.write(f"[launch] process {process_id} exited with status {status}; stopping the other "
                           f"{sum(code is None for code in codes)} process(es)\n")
                break
            if all(code == 0 for code in codes):
                break
            if time.monotonic() > deadline:
                sink.write(f"[launch] timed out after {timeout_seconds:.0f}s; stopping all processes\n")
                status = 124
                break
            time.sleep(0.1)
    except KeyboardInterrupt:
        status = 130
    finally:
        _stop(processes, grace_seconds)
        for thread in threads:
            thread.join(timeout=5)
        sink.flush()
    return status


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli_flags.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_processes", type=int, default=2)
    parser.add_argument("--devices_per_process", type=int, default=1, help="fake CPU devices in each process")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds before the whole run is stopped")
    parser.add_argument("--grace", type=float, default=5.0, help="seconds between SIGTERM and SIGKILL")
    parser.add_argument("--heartbeat_timeout", type=int, default=None,
                        help="jax.distributed heartbeat timeout in seconds (passed through the environment)")
    parser.add_argument("--dry_run", action="store_true", help="print each process's command and run nothing")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command every process runs")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given: add `-- python -m your.entry ...`")
    if args.dry_run:
        print("\n".join(dry_run_lines(command, args.num_processes, args.devices_per_process, args.heartbeat_timeout)))
        return 0
    return launch(command, args.num_processes, args.devices_per_process, args.timeout, args.grace,
                  args.heartbeat_timeout)


if __name__ == "__main__":
    sys.exit(main())
