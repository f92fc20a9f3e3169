"""Who may read the console: the bind rule, the token, and the Host check.

* On loopback (the default) the console is open to this machine's users. A token may still
  be set; then it is required there too.
* Anywhere else it refuses to start without a token of at least :data:`MIN_TOKEN_LENGTH`
  characters, and every request must carry it: the header ``Authorization: Bearer TOKEN``,
  or the cookie the page gets when opened once as ``/?token=TOKEN``.
* Without a token, a request must name a loopback host in its ``Host`` header: a web page
  elsewhere cannot reach the console by pointing a DNS name of its own at 127.0.0.1
  (DNS rebinding).

Example::

    >>> Access.for_bind("127.0.0.1", token=None).requires_token
    False
    >>> Access.for_bind("0.0.0.0", token=None)
    Traceback (most recent call last):
    ...
    genesis_registry.console.access.ConsoleAccessError: the console binds to 0.0.0.0, not loopback: it needs ...
"""

from __future__ import annotations

import hmac
import ipaddress
import socket
from dataclasses import dataclass

__all__ = [
    "COOKIE",
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "ENV_TOKEN",
    "MIN_TOKEN_LENGTH",
    "Access",
    "ConsoleAccessError",
    "is_loopback_host",
]

#: Where the console listens unless told otherwise.
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
ENV_TOKEN = "GENESIS_CONSOLE_TOKEN"
MIN_TOKEN_LENGTH = 16
#: The cookie that carries the token after the page was opened with ``?token=``.
COOKIE = "genesis_console_token"


class ConsoleAccessError(ValueError):
    """The console cannot start with this bind address and token."""


def _loopback_address(text: str) -> bool:
    try:
        return ipaddress.ip_address(text.strip("[]")).is_loopback
    except ValueError:
        return False


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` (an address or a name) means only this machine: a loopback address,
    or a name every address of which is loopback.

    >>> is_loopback_host("127.0.0.1"), is_loopback_host("::1"), is_loopback_host("localhost")
    (True, True, True)
    >>> is_loopback_host("0.0.0.0"), is_loopback_host("10.1.2.3")
    (False, False)
    """
    if _loopback_address(host):
        return True
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        pass
    else:
        return False  # an address, and not a loopback one
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return False
    return bool(infos) and all(_loopback_address(str(info[4][0])) for info in infos)


def _host_name(header: str) -> str:
    """The host of a ``Host`` header, without its port."""
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


@dataclass(frozen=True)
class Access:
    """The rule for one console: its token (or none) and whether it listens on loopback only."""

    token: str | None
    loopback_only: bool

    @classmethod
    def for_bind(cls, host: str, token: str | None) -> Access:
        """The rule for a console bound to ``host``; :class:`ConsoleAccessError` when that
        needs a token and none (or too short a one) is given."""
        token = token or None
        loopback = is_loopback_host(host)
        if token is not None and len(token) < MIN_TOKEN_LENGTH:
            raise ConsoleAccessError(
                f"the console token has {len(token)} characters; use at least {MIN_TOKEN_LENGTH} "
                "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(24))')"
            )
        if not loopback and token is None:
            raise ConsoleAccessError(
                f"the console binds to {host}, not loopback: it needs --token (or ${ENV_TOKEN}) "
                f"of at least {MIN_TOKEN_LENGTH} characters"
            )
        return cls(token=token, loopback_only=loopback)

    @property
    def requires_token(self) -> bool:
        return self.token is not None

    def token_matches(self, offered: str | None) -> bool:
        """Whether ``offered`` is the token (in constant time); always True without one.

        >>> Access(token="s3cret-s3cret-s3cret", loopback_only=False).token_matches("guess")
        False
        """
        if self.token is None:
            return True
        return offered is not None and hmac.compare_digest(offered.encode(), self.token.encode())

    def host_allowed(self, host_header: str | None) -> bool:
        """Whether a request naming ``host_header`` may be served: any host when a token
        guards the console, a loopback one otherwise.

        >>> rule = Access(token=None, loopback_only=True)
        >>> rule.host_allowed("127.0.0.1:8765"), rule.host_allowed("localhost"), rule.host_allowed("[::1]:8765")
        (True, True, True)
        >>> rule.host_allowed("evil.example:8765"), rule.host_allowed(None)
        (False, False)
        """
        if self.token is not None:
            return True
        if not host_header:
            return False
        name = _host_name(host_header)
        return name == "localhost" or _loopback_address(name)
