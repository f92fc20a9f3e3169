"""Polling with a deadline, instead of sleeping: ``wait_until`` and its asyncio twin."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float = 10.0, message: str = "condition") -> T:
    """Polls ``predicate`` until it returns something truthy, or fails after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {message} (last value: {last!r})")


async def await_until(predicate: Callable[[], Any], timeout: float = 10.0, message: str = "condition") -> Any:
    """``wait_until`` for asyncio: polls ``predicate`` (sync, or returning an awaitable)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if inspect.isawaitable(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out after {timeout}s waiting for {message} (last value: {last!r})")
