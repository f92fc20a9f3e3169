"""The ``genesis-registry`` command in a child process: run to completion (:func:`run_cli`), or
kept running with its output read line by line with deadlines (:class:`Child`). Shared by the
CLI, TLS and secrets tests and the README's command-line examples."""

from __future__ import annotations

import os
import pathlib
import random
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

CLI = [sys.executable, "-m", "genesis_registry"]
#: How the command starts every error line it prints.
ERROR_PREFIX = "genesis-registry: error: "


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a child: no etcd settings inherited from ours, unbuffered output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENESIS_ETCD_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The command with ``args``, run to completion in a child (stdin closed, output captured)."""
    return subprocess.run(
        [*CLI, *args],
        env=env if env is not None else child_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *words: str) -> str:
    """Asserts the command failed with exactly one error line (no traceback) holding every one
    of ``words``; returns that line."""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(ERROR_PREFIX), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


class Child:
    """The command running in a child process; its stdout is read line by line, each read with
    a deadline (a test never sleeps to synchronise)."""

    def __init__(
        self, *args: str, env: dict[str, str] | None = None, wrapper: tuple[str, ...] = (), **popen: Any
    ) -> None:
        """``wrapper`` is a command that execs the CLI (e.g. ``setsid --ctty``): whatever must
        happen in the child before the CLI runs is done by a program, never by a
        Python pre-exec hook (Python between fork and exec)."""
        self._stderr = tempfile.TemporaryFile()
        popen.setdefault("stdin", subprocess.DEVNULL)
        self.proc = subprocess.Popen(
            [*wrapper, *CLI, *args],
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=env if env is not None else child_env(),
            **popen,
        )
        self._buffer = b""
        self.lines: list[str] = []

    def readline(self, timeout: float = 20.0) -> str:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no line within {timeout}s; read so far {self.lines}; stderr: {self.stderr}")
            if not select.select([fd], [], [], remaining)[0]:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                code = self.proc.wait(10)
                raise AssertionError(f"exited with {code} after {self.lines}{self._buffer!r}; stderr: {self.stderr}")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\n", 1)
        line = raw.decode()
        self.lines.append(line)
        return line

    def read_until(self, predicate: Callable[[str], bool], timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            line = self.readline(max(0.01, deadline - time.monotonic()))
            if predicate(line):
                return line

    def stop(self, sig: int = signal.SIGINT, timeout: float = 30.0) -> tuple[int, list[str]]:
        """Send ``sig``; return the exit code and the stdout lines printed after those read."""
        self.proc.send_signal(sig)
        out, _ = self.proc.communicate(timeout=timeout)
        rest = (self._buffer + out).decode().splitlines()
        self._buffer = b""
        self.lines += rest
        return self.proc.returncode, rest

    @property
    def stderr(self) -> str:
        try:
            return os.pread(self._stderr.fileno(), 1 << 20, 0).decode(errors="replace")
        except (OSError, ValueError):
            return ""

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()


def _ephemeral_low() -> int:
    try:
        return int(pathlib.Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_ports(count: int) -> int:
    """The first of ``count`` consecutive free loopback ports, below the ephemeral range, where
    no outgoing connection can take one of them between this check and their use."""
    top = min(_ephemeral_low(), 65536) - count
    for _ in range(200):
        base = random.randrange(10000, max(top, 10001))
        held: list[socket.socket] = []
        try:
            for port in range(base, base + count):
                sock = socket.socket()
                held.append(sock)
                sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for sock in held:
                sock.close()
        return base
    raise RuntimeError(f"no {count} consecutive free ports")
