"""The connectivity of many blocking grpcio channels, followed from one thread.

grpcio's ``Channel.subscribe()`` follows each channel from a thread of its own, waking every
0.2 s: a balanced channel over 1,000 endpoints cost 1,000 threads and a third of a core
doing nothing. Here one daemon thread per process, started with the first channel watched
and ended with the last, reads each channel's state (``_grpcio.state_probe``: a fraction
of a microsecond) on a schedule that follows how likely a change is:

- a channel just watched, just changed, or whose call just failed (``nudge()``) is read
  every 10 ms; after five unchanged reads every 50 ms; after five more it joins the steady
  sweep, every 0.5 s, and 0.5 ms more per channel past 1,000 (a read of a channel not
  read for a while costs about 2 µs, cache misses included: so the sweep stays near
  0.4 % of a core however many channels there are). A READY channel whose connection
  drops between two sweeps is read at once when a call on it fails UNAVAILABLE;
- every read asks an IDLE channel to connect (grpcio asks only once otherwise), so an
  endpoint that dropped (a server restart, a GOAWAY) comes back;
- changes are handed over in one batch per owner per sweep, so an owner rebuilds its
  picture once when a thousand endpoints become READY together.

Where grpcio is laid out otherwise (no probe), a watch falls back to ``subscribe()``: the
public, heavier way, as before.

    >>> import threading
    >>> changed = threading.Event()
    >>> channel = grpc.insecure_channel("127.0.0.1:9")  # nothing listens there
    >>> watch = MONITOR.watch(channel, lambda changes: changed.set(), token="port 9")
    >>> changed.wait(5)
    True
    >>> watch.close()  # stops watching and closes the channel
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import grpc

from ._grpcio import STATES, ChannelCloser, connect, state_probe

__all__ = ["MONITOR", "ChannelWatch", "ConnectivityMonitor", "Sink"]

_logger = logging.getLogger("genesis_registry")

#: What an owner is handed: (token, new state) for each of its channels that changed.
Sink = Callable[[Sequence[tuple[Any, grpc.ChannelConnectivity]]], None]

IDLE = grpc.ChannelConnectivity.IDLE


class ChannelWatch:
    """One watched channel; ``close()`` stops the watch and closes the channel."""

    __slots__ = (
        "_callback",
        "_monitor",
        "channel",
        "closed",
        "probe",
        "raw",
        "sink",
        "tier",
        "token",
        "unchanged",
    )

    def __init__(self, monitor: ConnectivityMonitor, channel: grpc.Channel, sink: Sink, token: Hashable) -> None:
        self._monitor = monitor
        self.channel = channel
        self.sink = sink
        self.token = token
        self.probe = state_probe(channel)
        #: The state last handed to the sink, as grpcio's number (-1: none yet).
        self.raw = -1
        self.tier = 0
        self.unchanged = 0
        self.closed = False
        self._callback: Callable[[grpc.ChannelConnectivity], None] | None = None

    def nudge(self) -> None:
        """Read this channel's state soon (a call on it just failed: it may have dropped)."""
        self._monitor.nudge(self)

    def close(self) -> None:
        """Stops watching and closes the channel (calls in flight on it are cancelled)."""
        self._monitor.close(self)

    def close_later(self) -> None:
        """``close()``, done by the monitor's thread: for a caller that may be one of grpcio's
        threads, such as a call's done-callback (closing a channel waits for its calls to be
        wound up, which is that very thread's job for calls on the channel)."""
        self._monitor.close_later(self)


class ConnectivityMonitor:
    """Follows the state of many blocking grpcio channels from one thread (see the module)."""

    #: Read intervals (s) of the fast tiers; the last tier is the steady sweep.
    FAST = (0.01, 0.05)
    #: Unchanged reads before a channel moves to a slower tier.
    PROMOTE = 5
    #: The steady sweep's interval: at least STEADY, and STEADY_PER_CHANNEL per channel.
    STEADY = 0.5
    STEADY_PER_CHANNEL = 0.0005

    def __init__(self) -> None:
        self._start_over()

    def _start_over(self) -> None:
        self._cond = threading.Condition()
        self._tiers: list[set[ChannelWatch]] = [set() for _ in range(len(self.FAST) + 1)]
        self._due = [0.0] * len(self._tiers)
        self._thread: threading.Thread | None = None
        self._count = 0
        #: Watches closed with close_later(), whose channels the thread closes.
        self._closing: list[ChannelWatch] = []
        self._closer = ChannelCloser("genesis-connectivity-close")

    @property
    def thread(self) -> threading.Thread | None:
        """The monitor's thread while it runs (None when no channel is watched)."""
        return self._thread

    def watched(self) -> int:
        """How many channels are watched (by polling, not by ``subscribe()``)."""
        with self._cond:
            return self._count

    def watch(self, channel: grpc.Channel, sink: Sink, token: Hashable) -> ChannelWatch:
        """Follows ``channel``, connecting it now; ``sink`` gets ``(token, state)`` changes,
        from the monitor's thread, starting with the first state read."""
        watch = ChannelWatch(self, channel, sink, token)
        if watch.probe is None:
            self._subscribe(watch)
            return watch
        watch.probe(True)
        with self._cond:
            self._tiers[0].add(watch)
            self._count += 1
            self._due[0] = min(self._due[0], time.monotonic() + self.FAST[0])
            self._wake()
        return watch

    def _wake(self) -> None:
        """Starts the thread, or wakes it (lock held)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="genesis-connectivity", daemon=True)
            self._thread.start()
        else:
            self._cond.notify()

    def nudge(self, watch: ChannelWatch) -> None:
        with self._cond:
            if watch.closed or watch.probe is None:
                return
            self._move(watch, 0)
            self._due[0] = 0.0
            self._cond.notify()

    def _move(self, watch: ChannelWatch, tier: int) -> None:
        """Puts ``watch`` in ``tier``, its unchanged reads counted afresh (lock held)."""
        self._tiers[watch.tier].discard(watch)
        watch.tier, watch.unchanged = tier, 0
        if not self._tiers[tier]:
            self._due[tier] = time.monotonic() + self._interval(tier)
        self._tiers[tier].add(watch)

    def _drop(self, watch: ChannelWatch) -> None:
        """Stops reading ``watch`` (lock held)."""
        watch.closed = True
        if watch.probe is not None:
            self._tiers[watch.tier].discard(watch)
            self._count -= 1
            self._cond.notify()

    def close(self, watch: ChannelWatch) -> None:
        if self._retire(watch):
            self._close_channel(watch)

    def close_later(self, watch: ChannelWatch) -> None:
        if self._retire(watch):
            with self._cond:
                self._closing.append(watch)
                self._wake()

    def _retire(self, watch: ChannelWatch) -> bool:
        """Stops reading ``watch``; False if it was closed already."""
        with self._cond:
            if watch.closed:
                return False
            self._drop(watch)
            return True

    def _close_channel(self, watch: ChannelWatch) -> None:
        if watch.probe is None:
            # Not closed at once: see ChannelCloser (grpc/grpc#18995).
            self._closer.close_later(watch.channel, watch._callback)
        else:
            # A read racing this close sees a closed channel (ValueError) and drops it.
            watch.channel.close()

    def _subscribe(self, watch: ChannelWatch) -> None:
        def on_state(state: grpc.ChannelConnectivity) -> None:
            if watch.closed:
                return
            self._deliver({watch.sink: [(watch.token, state)]})
            if state == IDLE:
                try:  # grpcio asks to connect once per subscription; ask again
                    connect(watch.channel)
                except ValueError:  # closed meanwhile
                    pass

        watch._callback = on_state
        watch.channel.subscribe(on_state, try_to_connect=True)

    def _run(self) -> None:
        while True:
            batch: list[ChannelWatch] = []
            with self._cond:
                closing, self._closing = self._closing, []
                if not closing:
                    if self._count == 0:
                        self._thread = None
                        return
                    now = time.monotonic()
                    due = [t for t, members in enumerate(self._tiers) if members and self._due[t] <= now]
                    if not due:
                        waits = [self._due[t] - now for t, members in enumerate(self._tiers) if members]
                        self._cond.wait(min(waits))
                        continue
                    for tier in due:
                        batch.extend(self._tiers[tier])
                        self._due[tier] = now + self._interval(tier)
            for watch in closing:
                self._close_channel(watch)
            if batch:
                self._deliver(self._sweep(batch))

    def _interval(self, tier: int) -> float:
        if tier < len(self.FAST):
            return self.FAST[tier]
        return max(self.STEADY, self.STEADY_PER_CHANNEL * self._count)

    def _sweep(self, batch: list[ChannelWatch]) -> dict[Sink, list[tuple[Any, grpc.ChannelConnectivity]]]:
        """Reads every channel of ``batch``; returns the changes by sink, having moved each
        channel to the tier its read calls for. The loop is the monitor's whole idle cost:
        it compares grpcio's state numbers and touches nothing else for a steady channel."""
        changes: dict[Sink, list[tuple[Any, grpc.ChannelConnectivity]]] = {}
        moves: list[tuple[ChannelWatch, int]] = []
        gone: list[ChannelWatch] = []
        steady = len(self.FAST)
        promote = self.PROMOTE
        for watch in batch:
            try:
                raw = watch.probe(True)  # type: ignore[misc]
            except ValueError:  # closed by its owner without close(): stop reading it
                gone.append(watch)
                continue
            if raw != watch.raw:
                watch.raw = raw
                changes.setdefault(watch.sink, []).append((watch.token, STATES[raw]))
                moves.append((watch, 0))
            elif watch.tier != steady:
                watch.unchanged += 1
                if watch.unchanged >= promote:
                    moves.append((watch, watch.tier + 1))
        if moves or gone:
            with self._cond:
                for watch, tier in moves:
                    if not watch.closed:
                        self._move(watch, tier)
                for watch in gone:
                    if not watch.closed:
                        self._drop(watch)
        return changes

    @staticmethod
    def _deliver(changes: dict[Sink, list[tuple[Any, grpc.ChannelConnectivity]]]) -> None:
        for sink, batch in changes.items():
            try:
                sink(batch)
            except Exception:  # an owner's bug must not stop every other owner's updates
                _logger.exception("a connectivity callback failed")


#: The process's monitor.
MONITOR = ConnectivityMonitor()


# In a forked child the parent's thread does not exist, and its channels are not usable.
os.register_at_fork(after_in_child=MONITOR._start_over)
