"""What grpcio does not offer, made here: a failed call without a server, a way to ask
an IDLE channel to connect or read its state without a thread, and closing subscribed
channels without upsetting grpcio's polling threads. Everything that reads grpcio's
private state is in this module, read defensively (another grpcio layout falls back to
the public, heavier way). Used by the balanced channels, the stream manager and the
connectivity monitor, the parts that own grpcio channels."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

__all__ = [
    "ChannelCloser",
    "ChannelOptions",
    "FailedCall",
    "aio_error",
    "connect",
    "open_aio_channel",
    "open_channel",
    "state_probe",
]

ChannelOptions = Sequence[tuple[str, Any]]

# grpcio's classes are generic only in its type stubs.
if TYPE_CHECKING:
    FutureBase = grpc.Future[Any]
    UnaryUnaryBase = grpc.UnaryUnaryMultiCallable[Any, Any]
    UnaryStreamBase = grpc.UnaryStreamMultiCallable[Any, Any]
    StreamUnaryBase = grpc.StreamUnaryMultiCallable[Any, Any]
    StreamStreamBase = grpc.StreamStreamMultiCallable[Any, Any]
else:
    FutureBase = grpc.Future
    UnaryUnaryBase = grpc.UnaryUnaryMultiCallable
    UnaryStreamBase = grpc.UnaryStreamMultiCallable
    StreamUnaryBase = grpc.StreamUnaryMultiCallable
    StreamStreamBase = grpc.StreamStreamMultiCallable


def open_channel(target: str, credentials: grpc.ChannelCredentials | None, options: ChannelOptions) -> grpc.Channel:
    """A grpcio channel to ``target``, insecure when ``credentials`` is None."""
    if credentials is None:
        return grpc.insecure_channel(target, options=list(options))
    return grpc.secure_channel(target, credentials, options=list(options))


def open_aio_channel(
    target: str,
    credentials: grpc.ChannelCredentials | None,
    options: ChannelOptions,
    interceptors: Sequence[Any] | None,
) -> grpc.aio.Channel:
    """:func:`open_channel` for grpc.aio, with client ``interceptors``."""
    if credentials is None:
        return grpc.aio.insecure_channel(target, options=list(options), interceptors=interceptors)
    return grpc.aio.secure_channel(target, credentials, options=list(options), interceptors=interceptors)


def aio_error(code: grpc.StatusCode, message: str) -> grpc.aio.AioRpcError:
    """The error of a grpc.aio call that ended with ``code``."""
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=message)


class FailedCall(grpc.RpcError, grpc.Call, FutureBase):
    """The outcome of a call that found no instance: a failed ``grpc.Call`` and
    ``grpc.Future`` whose code is UNAVAILABLE (or DEADLINE_EXCEEDED after waiting)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self._code = code
        self._message = message

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._message

    def initial_metadata(self) -> tuple[()]:
        return ()

    def trailing_metadata(self) -> tuple[()]:
        return ()

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> float:
        return 0.0

    def cancel(self) -> bool:
        return False

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return False

    def cancelled(self) -> bool:
        return False

    def running(self) -> bool:
        return False

    def done(self) -> bool:
        return True

    def result(self, timeout: float | None = None) -> Any:
        raise self

    def exception(self, timeout: float | None = None) -> FailedCall:
        return self

    def traceback(self, timeout: float | None = None) -> Any:
        return None

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        fn(self)

    def __iter__(self) -> FailedCall:
        return self

    def __next__(self) -> Any:
        raise self

    def __str__(self) -> str:
        return (
            f"<{type(self).__name__} of RPC that terminated with: status = {self._code}, details = {self._message!r}>"
        )


def connect(channel: grpc.Channel) -> None:
    """Asks an IDLE grpcio channel to connect."""
    probe = state_probe(channel)
    if probe is not None:
        probe(True)
    else:  # another grpcio: the public, heavier way, a subscription dropped at once (grpcio
        # still connects; a ready future would stay subscribed until READY, maybe never)
        channel.subscribe(_ignore, try_to_connect=True)
        channel.unsubscribe(_ignore)


def _ignore(_state: grpc.ChannelConnectivity) -> None:
    pass


#: grpcio's connectivity states by their number in its C core.
STATES = {state.value[0]: state for state in grpc.ChannelConnectivity}


def state_probe(channel: grpc.Channel) -> Callable[[bool], int] | None:
    """The function that reads a blocking grpcio channel's connectivity state at once, as
    a number of :data:`STATES` (asking an IDLE channel to connect when given True).

    grpcio's only public way to follow a blocking channel's state, ``subscribe()``, costs a
    thread per channel; its C core answers the same question in well under a microsecond
    through the channel's private ``_channel``. None when this grpcio is laid out
    otherwise: the caller falls back to ``subscribe()``.

    >>> channel = grpc.insecure_channel("127.0.0.1:9")
    >>> STATES[state_probe(channel)(False)]
    <ChannelConnectivity.IDLE: (0, 'idle')>
    >>> channel.close()
    """
    probe = getattr(getattr(channel, "_channel", None), "check_connectivity_state", None)
    return probe if callable(probe) else None


def _grpc_polling(channel: Any) -> bool:
    """Whether grpcio's connectivity polling thread may still use ``channel``. Reads grpcio's
    private state defensively: False (close at once) if its layout is not the known one."""
    state = getattr(channel, "_connectivity_state", None)
    lock = getattr(state, "lock", None)
    if state is None or lock is None or not isinstance(getattr(state, "polling", None), bool):
        return False
    with lock:
        return bool(state.polling)


def _close_when_unpolled(channel: Any, deadline: float) -> None:
    while _grpc_polling(channel) and time.monotonic() < deadline:
        time.sleep(0.01)
    channel.close()


class ChannelCloser:
    """Closes subscribed grpcio channels only once grpcio has stopped polling them.

    ``subscribe()`` starts a grpcio thread that polls the channel every 0.2 s and notices
    ``unsubscribe()`` only at its next wake-up; a channel closed before then makes that
    thread raise "Channel closed!" (grpc/grpc#18995). So a channel to close is unsubscribed
    and handed to a small reaper thread, which closes it once grpcio's polling of it has
    stopped; the reaper ends when it has nothing left. ``close()`` ends the reaper and
    closes what is left, waiting (bounded) for the polling to stop."""

    #: How long close() waits for grpcio's polling threads before closing regardless.
    WAIT = 1.0
    #: How often the reaper looks.
    INTERVAL = 0.05

    def __init__(self, name: str) -> None:
        self._name = name
        self._cond = threading.Condition()
        self._pending: list[Any] = []
        self._reaper: threading.Thread | None = None
        self._closed = False

    def close_later(self, channel: Any, callback: Callable[[grpc.ChannelConnectivity], None] | None) -> None:
        """Unsubscribes ``callback`` and closes ``channel`` soon, without blocking."""
        if callback is not None:
            channel.unsubscribe(callback)
        if _grpc_polling(channel):
            with self._cond:
                if not self._closed:
                    self._pending.append(channel)
                    if self._reaper is None:
                        self._reaper = threading.Thread(target=self._reap, name=self._name, daemon=True)
                        self._reaper.start()
                    return
        _close_when_unpolled(channel, time.monotonic() + self.WAIT)

    def _reap(self) -> None:
        while True:
            with self._cond:
                idle = [c for c in self._pending if not _grpc_polling(c)]
                self._pending = [c for c in self._pending if c not in idle]
                done = self._closed or not self._pending
                if done:
                    self._reaper = None
            for channel in idle:
                channel.close()
            if done:
                return  # close() takes what is left
            with self._cond:
                if not self._closed:
                    self._cond.wait(self.INTERVAL)

    def close(self) -> None:
        """Closes every channel handed over, having ended the reaper."""
        with self._cond:
            self._closed = True
            reaper = self._reaper
            self._cond.notify_all()
        if reaper is not None and reaper is not threading.current_thread():
            reaper.join()
        with self._cond:
            pending, self._pending = self._pending, []
        deadline = time.monotonic() + self.WAIT
        for channel in pending:
            _close_when_unpolled(channel, deadline)
