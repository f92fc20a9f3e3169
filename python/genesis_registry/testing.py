"""The pytest plugin: fixtures that give a test a real etcd and a registry on it.

Installing genesis-registry registers it through the ``pytest11`` entry point
``genesis_registry``, so its fixtures are simply there (``-p no:genesis_registry`` turns it
off). Without the entry point (e.g. running from a source tree), load it with ``pytest -p
genesis_registry.testing`` or, in a ``conftest.py``::

    pytest_plugins = ["genesis_registry.testing"]

Either way works alongside the entry point: the plugin is loaded once. Fixtures:

* ``etcd_server`` (session) -- an :class:`EtcdServer` (or, when the
  environment variable ``GENESIS_ETCD_ENDPOINTS`` names an external cluster
  as a comma-separated ``host:port`` list, an :class:`ExternalEtcd` whose
  ``kill``/``restart``/``wipe``/``stop`` skip the calling test);
* ``etcd_endpoints`` (session) -- ``etcd_server.endpoints``, a ``list[str]``;
* ``etcd_cluster`` (session) -- a started 3-member :class:`EtcdCluster`
  (skipped under ``GENESIS_ETCD_ENDPOINTS`` or without an etcd binary);
* ``registry_namespace`` -- a namespace no other test uses;
* ``registry`` -- a :class:`genesis_registry.Registry` on its own connector
  to ``etcd_endpoints``, in ``registry_namespace``, ``default_ttl=5``,
  ``retry_interval=0.1``, closed after the test;
* ``async_registry`` -- the same as a :class:`genesis_registry.AsyncRegistry`
  (an async fixture: needs pytest-asyncio, in auto or strict mode; the plugin
  itself imports and works without it).

For example::

    import genesis_registry as gr

    def test_discovery(registry):
        registry.register(gr.ServiceInstance(id="a", name="svc", endpoints=["127.0.0.1:9000"]))
        assert [i.id for i in registry.get_service("svc")] == ["a"]

    async def test_async_discovery(async_registry):
        await async_registry.register(gr.ServiceInstance(id="b", name="svc", endpoints=["127.0.0.1:9001"]))
        assert await async_registry.get_service("svc")

The etcd processes come from :mod:`genesis_registry.localetcd`, whose names this module
re-exports (``from genesis_registry.testing import EtcdCluster, EtcdServer`` works). pytest
and pytest-asyncio are used when importable and the registry fixtures import
genesis_registry when they run, so the module can also be imported from non-test code.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from typing import TYPE_CHECKING, Any

from . import localetcd

# The local-etcd API, re-exported: ``from genesis_registry.testing import EtcdServer`` works.
from .localetcd import *  # noqa: F403
from .localetcd import (
    ENV_ENDPOINTS,
    ContainerEtcd,
    EtcdCluster,
    EtcdLike,
    EtcdNotFoundError,
    EtcdServer,
    ExternalEtcd,
    NoLocalProcessError,
    find_etcd_binary,
)

if TYPE_CHECKING:
    import genesis_registry as _gr

try:  # pytest is optional: only the fixtures need it.
    import pytest
except ImportError:  # pragma: no cover - exercised only without pytest
    pytest = None  # type: ignore[assignment]

__all__: list[str] = []
__all__ += localetcd.__all__


def _async_fixture(func: Callable[..., Any]) -> Any:
    """``pytest_asyncio.fixture(func)`` when pytest-asyncio is installed, else ``pytest.fixture(func)``.

    pytest-asyncio's own decorator makes the fixture work in its strict mode
    as well as in auto mode; without pytest-asyncio the plugin still imports
    (only tests that request the fixture fail).
    """
    try:
        import pytest_asyncio
    except ImportError:
        return pytest.fixture(func)
    return pytest_asyncio.fixture(func)


def _try_container() -> tuple[ContainerEtcd | None, str]:
    if importlib.util.find_spec("testcontainers") is None:
        return None, "the testcontainers package is not installed"
    try:
        return ContainerEtcd.start_container(), ""
    except Exception as exc:  # no engine, no image, ...
        return None, f"no etcd container could be started ({type(exc).__name__}: {exc})"


@contextlib.contextmanager
def _skip_without_local_process() -> Iterator[None]:
    """Turn :class:`NoLocalProcessError` (from :class:`ExternalEtcd`) into pytest's skip."""
    try:
        yield
    except NoLocalProcessError as exc:
        pytest.skip(str(exc))


#: The names pytest may register this plugin under: its ``pytest11`` entry
#: point, and the module name (``-p genesis_registry.testing``,
#: ``pytest_plugins = ["genesis_registry.testing"]``).
_PLUGIN_NAMES = ("genesis_registry", __name__)


if pytest is not None:

    def pytest_plugin_registered(plugin: object, manager: pytest.PytestPluginManager) -> None:
        """Load this plugin once, whichever of its names pytest meets first.

        pluggy refuses a module registered under a second name ("Plugin
        already registered under a different name") and pytest stops at
        startup, so with the entry point installed, ``-p
        genesis_registry.testing`` or ``pytest_plugins`` would break a run.
        Once registered under one name, the other is blocked instead, just
        as ``-p no:<name>`` would block it.

        Example (a pytest hook; pytest calls it)::

            pytest -p genesis_registry.testing     # fine with the entry point installed too
        """
        if plugin is not sys.modules.get(__name__):
            return
        registered_as = manager.get_name(plugin)
        for name in _PLUGIN_NAMES:
            if name != registered_as and manager.get_plugin(name) is None and not manager.is_blocked(name):
                manager.set_blocked(name)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
        """Skip a test whose set-up asked an external etcd for a process-level action.

        Example (a pytest hook; pytest calls it)::

            etcd_server.kill()   # in a fixture, under $GENESIS_ETCD_ENDPOINTS: the test is skipped
        """
        with _skip_without_local_process():
            yield

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
        """Skip a test that asked an external etcd for a process-level action.

        Example (a pytest hook; pytest calls it)::

            def test_crash(etcd_server):
                etcd_server.kill()   # under $GENESIS_ETCD_ENDPOINTS: skipped, not failed
        """
        with _skip_without_local_process():
            yield

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, None, None]:
        """Skip, rather than error, when a fixture's teardown asked an external etcd for a
        process-level action (as set-up and the test itself do)."""
        with _skip_without_local_process():
            yield

    @pytest.fixture(scope="session")
    def etcd_server() -> Iterator[EtcdLike]:
        """A session-wide etcd: external, local process, or container.

        ``$GENESIS_ETCD_ENDPOINTS`` set: an :class:`ExternalEtcd`. Else a
        local :class:`EtcdServer`; failing a binary, etcd in Docker through
        testcontainers; failing that, the test is skipped.

        Example::

            def test_put(etcd_server):
                etcd_server.etcdctl("put", "k", "v")
        """
        external = ExternalEtcd.from_env()
        if external is not None:
            yield external
            return
        try:
            binary = find_etcd_binary()
        except EtcdNotFoundError as exc:
            missing = str(exc)
        else:
            server = EtcdServer(binary=binary)
            try:
                server.start()
                yield server
            finally:
                server.close()
            return
        container, why = _try_container()
        if container is None:
            pytest.skip(f"no etcd available: {missing}; {why}")
        try:
            yield container
        finally:
            container.close()

    @pytest.fixture(scope="session")
    def etcd_endpoints(etcd_server: EtcdLike) -> list[str]:
        """``etcd_server.endpoints``: ``host:port`` strings without a scheme.

        Example::

            def test_client(etcd_endpoints):
                assert etcd_endpoints[0].startswith("127.0.0.1:")
        """
        return list(etcd_server.endpoints)

    @pytest.fixture(scope="session")
    def etcd_cluster() -> Iterator[EtcdCluster]:
        """A session-wide local 3-member :class:`EtcdCluster`, started and healthy.

        Skipped when ``$GENESIS_ETCD_ENDPOINTS`` points the tests at an
        external etcd (a cluster of local processes is not what that asks
        for), and when there is no etcd binary. Shared by every test of the
        session: a test that kills or stops members should restart them.

        Example::

            def test_failover(etcd_cluster):
                leader = etcd_cluster.leader()
                etcd_cluster.kill(leader)
                try:
                    etcd_cluster.wait_for_leader(timeout=10)
                    etcd_cluster.etcdctl("put", "k", "v")
                finally:
                    etcd_cluster.restart(leader)
        """
        if os.environ.get(ENV_ENDPOINTS, "").strip():
            pytest.skip(
                f"etcd_cluster starts local etcd processes, but ${ENV_ENDPOINTS} points the tests at an external etcd"
            )
        try:
            binary = find_etcd_binary()
        except EtcdNotFoundError as exc:
            pytest.skip(f"etcd_cluster needs a local etcd binary: {exc}")
        cluster = EtcdCluster(3, binary=binary)
        try:
            cluster.start()
            yield cluster
        finally:
            cluster.close()

    @pytest.fixture
    def registry_namespace() -> str:
        """A namespace no other test uses (``/test/<12 hex digits>``); the registry fixtures use it.

        Example::

            def test_keys(registry, registry_namespace, etcd_server):
                registry.register(instance)
                etcd_server.etcdctl("get", "--prefix", registry_namespace + "/")
        """
        return f"/test/{uuid.uuid4().hex[:12]}"

    def _test_connector(endpoints: list[str]) -> _gr.EtcdConnector:
        import genesis_registry as gr

        return gr.EtcdConnector(gr.EtcdConfig(endpoints=endpoints, dial_timeout=5.0))

    def _test_config(namespace: str) -> _gr.Config:
        import genesis_registry as gr

        return gr.Config(namespace=namespace, default_ttl=5.0, retry_interval=0.1)

    @pytest.fixture
    def registry(etcd_endpoints: list[str], registry_namespace: str) -> Iterator[_gr.Registry]:
        """A :class:`genesis_registry.Registry` on its own connector to ``etcd_endpoints``.

        In this test's ``registry_namespace``, with ``default_ttl=5`` and
        ``retry_interval=0.1``; the registry (revoking its leases) and then
        its connector are closed after the test.

        Example::

            import genesis_registry as gr

            def test_discovery(registry):
                registry.register(gr.ServiceInstance(id="a", name="svc", endpoints=["127.0.0.1:9000"]))
                assert [i.id for i in registry.get_service("svc")] == ["a"]
        """
        import genesis_registry as gr

        conn = _test_connector(etcd_endpoints)
        try:
            conn.connect()
            reg = gr.Registry(conn, _test_config(registry_namespace))
            try:
                yield reg
            finally:
                reg.close()
        finally:
            conn.close()

    async def async_registry(etcd_endpoints: list[str], registry_namespace: str) -> AsyncIterator[_gr.AsyncRegistry]:
        """The asyncio twin of ``registry``: a :class:`genesis_registry.AsyncRegistry`.

        Own connector, this test's ``registry_namespace``, ``default_ttl=5``,
        ``retry_interval=0.1``; closed after the test. An async fixture: it
        needs pytest-asyncio (any mode: it is declared with
        ``pytest_asyncio.fixture`` when pytest-asyncio is installed), though
        the plugin itself does not.

        Example::

            async def test_discovery(async_registry):
                await async_registry.register(instance)
                assert await async_registry.get_service(instance.name)
        """
        import genesis_registry as gr

        conn = _test_connector(etcd_endpoints)
        try:
            await conn.aconnect()
            reg = gr.AsyncRegistry(conn, _test_config(registry_namespace))
            try:
                yield reg
            finally:
                await reg.close()
        finally:
            conn.close()

    async_registry = _async_fixture(async_registry)
