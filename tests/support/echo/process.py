"""An echo server registered in etcd, in a child process of its own: :class:`EchoProcess`
runs :mod:`support.echo.child` and waits for it to say it is registered."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Mapping, Sequence

from support.echo.protocol import OnLoopback
from support.paths import child_pythonpath

#: The child, run as a module (``python -m``) with ``tests/`` on its ``PYTHONPATH``.
CHILD_MODULE = "support.echo.child"


def _reap_child(proc: subprocess.Popen[bytes]) -> None:
    """Finalizer: SIGKILL and reap. Must not reference the EchoProcess."""
    try:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=5)
    except Exception:  # best effort, possibly at interpreter exit
        pass
    for stream in (proc.stdout, proc.stdin):
        if stream is not None:
            try:
                stream.close()
            except Exception:
                pass


class EchoProcess(OnLoopback):
    """``support.echo.child`` in a child process: an :class:`EchoServer` registered in etcd as
    an instance (id = ``name``) of ``service``. The constructor returns once the child printed
    ``READY <port>``, i.e. once the instance is registered; it raises RuntimeError (with the
    child's stderr) if the child exits or does not get there within ``timeout``.

    :meth:`terminate` (SIGTERM: the child deregisters and exits 0) and :meth:`kill` (SIGKILL: a
    crash; the instance stays in etcd until its lease expires, ``ttl`` seconds) both reap the
    child. The context manager, a finalizer and the child itself (which exits when its parent
    dies) make sure no child outlives the test.

    Example::

        with EchoProcess("p1", etcd_endpoints, namespace, "echo", ttl=2, weight=5) as p:
            wait_until(lambda: [i.id for i in reg.get_service("echo")] == ["p1"])
            p.kill()
    """

    def __init__(
        self,
        name: str,
        etcd_endpoints: Sequence[str] | str,
        namespace: str,
        service: str,
        *,
        ttl: float | None = None,
        weight: int | str | None = None,
        port: int = 0,
        metadata: Mapping[str, object] | None = None,
        timeout: float = 30.0,
        python: str = sys.executable,
    ) -> None:
        self.name = name
        self.service = service
        self.namespace = namespace
        endpoints = etcd_endpoints if isinstance(etcd_endpoints, str) else ",".join(etcd_endpoints)
        cmd = [python, "-m", CHILD_MODULE, "--name", name, "--endpoints", endpoints]
        cmd += ["--namespace", namespace, "--service", service, "--port", str(port)]
        if ttl is not None:
            cmd += ["--ttl", str(ttl)]
        if weight is not None:
            cmd += ["--weight", str(weight)]
        for key, value in (metadata or {}).items():
            cmd += ["--meta", f"{key}={value}"]
        self.args = cmd
        # stderr goes to a file: a pipe nobody reads could fill up and block the child.
        self._stderr = tempfile.TemporaryFile()
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=child_pythonpath())
        self._proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._stderr, env=env
        )
        self._finalizer = weakref.finalize(self, _reap_child, self._proc)
        self.pid = self._proc.pid
        try:
            self.port = self._wait_ready(time.monotonic() + timeout)
        except BaseException:
            self.kill()
            raise

    def _wait_ready(self, deadline: float) -> int:
        assert self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        buffer = b""
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while b"\n" not in buffer:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise RuntimeError(f"echo process {self.name!r} not READY in time{self._stderr_note()}")
                if not selector.select(remaining):
                    continue
                chunk = os.read(fd, 4096)
                if not chunk:
                    code = self._proc.wait(timeout=5)
                    raise RuntimeError(
                        f"echo process {self.name!r} exited with code {code} before READY"
                        f" (stdout {buffer!r}){self._stderr_note()}"
                    )
                buffer += chunk
        line = buffer.split(b"\n", 1)[0].decode("utf-8", "replace").strip()
        word, _, port = line.partition(" ")
        if word != "READY" or not port.isdigit():
            raise RuntimeError(f"echo process {self.name!r} printed {line!r}, not 'READY <port>'{self._stderr_note()}")
        return int(port)

    @property
    def stderr(self) -> str:
        """What the child wrote to stderr so far."""
        try:
            return os.pread(self._stderr.fileno(), 1 << 20, 0).decode("utf-8", "replace")
        except (OSError, ValueError):
            return ""

    def _stderr_note(self) -> str:
        text = self.stderr.rstrip()
        return f"; stderr:\n{text}" if text else "; stderr empty"

    @property
    def returncode(self) -> int | None:
        return self._proc.poll()

    def is_running(self) -> bool:
        return self._proc.poll() is None

    def _signal_and_wait(self, sig: int, timeout: float) -> int:
        if self._proc.poll() is None:
            try:
                self._proc.send_signal(sig)
            except ProcessLookupError:
                pass
        try:
            code = self._proc.wait(timeout=timeout)
        finally:
            if self._proc.poll() is None:
                _reap_child(self._proc)
        self._finalizer()
        return code

    def terminate(self, timeout: float = 15.0) -> int:
        """SIGTERM (the child deregisters, closes everything, exits 0) and reap; returns the exit
        code. Raises RuntimeError (after a SIGKILL) if the child has not exited within ``timeout``."""
        try:
            return self._signal_and_wait(signal.SIGTERM, timeout)
        except subprocess.TimeoutExpired:
            raise RuntimeError(
                f"echo process {self.name!r} ignored SIGTERM for {timeout}s (killed){self._stderr_note()}"
            ) from None

    def kill(self) -> int:
        """SIGKILL (a crash: nothing deregisters) and reap; returns the exit code (-9)."""
        return self._signal_and_wait(signal.SIGKILL, 5.0)

    def close(self) -> None:
        """Kill the child if it still runs and release its pipes. Idempotent."""
        self._finalizer()
        self._stderr.close()

    def __enter__(self) -> EchoProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.is_running() else f"exited {self.returncode}"
        return f"<EchoProcess {self.name} pid={self.pid} port={getattr(self, 'port', None)} {state}>"
