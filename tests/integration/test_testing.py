"""The pytest plugin itself (genesis_registry.testing): local etcd clusters and the fixtures,
against real etcd processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import genesis_registry as gr
import grpc
import pytest
from genesis_registry.localetcd import EtcdCluster, EtcdMember, EtcdServer
from genesis_registry.localetcd.health import is_healthy as _is_healthy
from genesis_registry.localetcd.process import setpriv as _setpriv
from support.echo import EchoStub, instance_for
from support.etcd import etcd_keys, instance
from support.wait import wait_until


def status(cluster: EtcdCluster) -> list[dict]:
    """``etcdctl endpoint status`` of every running member, in member order."""
    out = cluster.etcdctl("endpoint", "status", "-w", "json").stdout
    by_url = {entry["Endpoint"]: entry["Status"] for entry in json.loads(out)}
    return [by_url[m.client_url] for m in cluster.members if m.client_url in by_url]


def member_ids(cluster: EtcdCluster) -> list[int]:
    out = cluster.etcdctl("member", "list", "-w", "json").stdout
    return sorted(int(m["ID"]) for m in json.loads(out)["members"])


def serializable_get(member: EtcdMember, key: str) -> bytes:
    """What ``member`` alone holds for ``key`` (no quorum read: its own applied state)."""
    return member.etcdctl("get", key, "--consistency=s", "--print-value-only").stdout


@pytest.fixture
def cluster(etcd_cluster: EtcdCluster) -> Iterator[EtcdCluster]:
    """The session cluster, with every member running and a leader again after the test."""
    yield etcd_cluster
    for i, member in enumerate(etcd_cluster.members):
        if not member.is_running():
            etcd_cluster.restart(i)
    etcd_cluster.wait_for_leader(timeout=30)


# -- the cluster -------------------------------------------------------------------------


def test_a_cluster_starts_with_a_leader_and_every_member_healthy(cluster):
    assert len(cluster.members) == 3
    assert cluster.running_members() == [0, 1, 2]
    assert cluster.leader() in (0, 1, 2)
    assert all(_is_healthy(m.client_url, timeout=5) for m in cluster.members)
    health = json.loads(cluster.etcdctl("endpoint", "health", "-w", "json").stdout)
    assert sorted(h["endpoint"] for h in health) == sorted(cluster.client_urls)
    assert all(h["health"] for h in health)
    statuses = status(cluster)
    assert len({s["header"]["cluster_id"] for s in statuses}) == 1  # one cluster, not three
    assert len({s["leader"] for s in statuses}) == 1
    assert len(member_ids(cluster)) == 3
    assert cluster.endpoints == [m.endpoints[0] for m in cluster.members]
    assert len(set(cluster.endpoints)) == 3
    assert len({m.data_dir for m in cluster.members}) == 3
    assert len({m.name for m in cluster.members}) == 3


def test_a_write_through_one_member_is_read_through_another(cluster):
    key = f"/plugin/{uuid.uuid4().hex}"
    cluster.members[0].etcdctl("put", key, "written-via-0")
    for member in cluster.members[1:]:
        assert member.etcdctl("get", key, "--print-value-only").stdout == b"written-via-0\n"
    cluster.members[2].etcdctl("put", key, "written-via-2")
    wait_until(lambda: serializable_get(cluster.members[0], key) == b"written-via-2\n", message="replication")


def test_killing_the_leader_elects_a_new_one_and_writes_go_on(cluster):
    old = cluster.wait_for_leader()
    old_term = max(s["raftTerm"] for s in status(cluster))
    killed_at = time.monotonic()
    cluster.kill(old)
    assert not cluster.members[old].is_running()
    new = cluster.wait_for_leader(timeout=15)
    elected_in = time.monotonic() - killed_at
    assert new != old
    assert max(s["raftTerm"] for s in status(cluster)) > old_term
    key = f"/plugin/{uuid.uuid4().hex}"
    cluster.etcdctl("put", key, "after-failover")  # only the running members are asked
    assert cluster.members[new].etcdctl("get", key, "--print-value-only").stdout == b"after-failover\n"
    assert elected_in < 10, elected_in

    cluster.restart(old)  # the old leader comes back as a follower
    assert serializable_get(cluster.members[old], key) == b"after-failover\n"
    assert cluster.wait_for_leader() in (0, 1, 2)


def test_a_killed_member_restarts_and_catches_up(cluster):
    follower = next(i for i in range(3) if i != cluster.wait_for_leader())
    member = cluster.members[follower]
    ids = member_ids(cluster)
    key = f"/plugin/{uuid.uuid4().hex}"
    cluster.etcdctl("put", key, "before")
    wait_until(lambda: serializable_get(member, key) == b"before\n", message="the follower to have the key")

    cluster.kill(follower)
    assert cluster.running_members() == [i for i in range(3) if i != follower]
    cluster.etcdctl("put", key, "while-down")
    cluster.etcdctl("put", key + "/new", "created-while-down")

    cluster.restart(follower)
    assert member.is_running()
    # Pointed at that member only, a serializable read answers from its own data.
    assert serializable_get(member, key) == b"while-down\n"
    assert serializable_get(member, key + "/new") == b"created-while-down\n"
    assert member_ids(cluster) == ids  # the same member rejoined; none was added
    assert len({s["header"]["cluster_id"] for s in status(cluster)}) == 1


def test_members_stop_and_restart_one_by_one(cluster):
    member = cluster.members[1]
    member.stop()
    assert not member.is_running()
    member.stop()  # idempotent
    assert cluster.leader() is not None  # two of three keep a quorum
    member.restart()
    assert member.is_running()
    assert _is_healthy(member.client_url, timeout=5)


def test_without_a_quorum_there_is_no_leader_until_members_return(cluster):
    leader = cluster.wait_for_leader()
    others = [i for i in range(3) if i != leader]
    cluster.kill(others[0])
    cluster.kill(others[1])
    wait_until(lambda: cluster.leader() is None, timeout=10, message="the lone member to have no leader")
    cluster.restart(others[0])  # back to a quorum: a leader again
    assert cluster.wait_for_leader(timeout=15) in (leader, others[0])
    cluster.restart(others[1])
    assert cluster.running_members() == [0, 1, 2]


def test_wipe_gives_an_empty_new_cluster_on_the_same_ports(tmp_path):
    with EtcdCluster(3, data_dir=tmp_path / "data", log_dir=tmp_path / "logs") as fresh:
        endpoints = fresh.endpoints
        fresh.etcdctl("put", "/k", "v")
        fresh.etcdctl("lease", "grant", "60")
        cluster_id = status(fresh)[0]["header"]["cluster_id"]
        old_ids = member_ids(fresh)

        fresh.wipe()

        assert fresh.endpoints == endpoints
        assert fresh.running_members() == [0, 1, 2]
        assert fresh.leader() is not None
        assert fresh.etcdctl("get", "--prefix", "").stdout == b""
        assert json.loads(fresh.etcdctl("lease", "list", "-w", "json").stdout).get("leases") in (None, [])
        assert status(fresh)[0]["header"]["cluster_id"] != cluster_id
        assert len(set(member_ids(fresh)) - set(old_ids)) == 3
        fresh.etcdctl("put", "/after", "wipe")  # and it works
        assert [p.name for p in sorted((tmp_path / "data").iterdir())] == [m.name for m in fresh.members]
        logs = sorted(p.name for p in (tmp_path / "logs").iterdir())
        assert logs == [f"etcd-{m.name}.log" for m in fresh.members]  # logs survive a wipe
    assert not any(m.is_running() for m in fresh.members)


def test_a_cluster_stops_and_starts_with_its_data_and_closes_for_good():
    cluster = EtcdCluster(3)
    try:
        cluster.start()
        cluster.etcdctl("put", "/kept", "yes")
        began = time.monotonic()
        cluster.stop()
        assert time.monotonic() - began < 5  # followers first: no leader hand-over timing out
        assert cluster.running_members() == []
        cluster.stop()  # idempotent
        cluster.start()
        assert cluster.etcdctl("get", "/kept", "--print-value-only").stdout == b"yes\n"
    finally:
        cluster.close()
    cluster.close()  # idempotent
    assert cluster.running_members() == []
    with pytest.raises(RuntimeError, match="closed"):
        cluster.start()


def test_a_member_cannot_be_wiped_alone_and_a_cluster_needs_members(etcd_cluster):
    with pytest.raises(RuntimeError, match=r"EtcdCluster\.wipe"):
        etcd_cluster.members[0].wipe()
    with pytest.raises(ValueError, match="at least one member"):
        EtcdCluster(0)


def test_members_may_listen_elsewhere_and_run_through_a_wrapper():
    default = EtcdCluster(2)
    assert default.endpoints[0].startswith("127.0.0.1:") and default.members[0].command()[0].endswith("etcd")
    wrapped = EtcdCluster(
        2,
        hosts=["10.231.1.10", "10.231.1.11"],
        peer_hosts=["10.231.2.10", "10.231.2.11"],
        command_prefixes=[["ip", "netns", "exec", "a"], ["ip", "netns", "exec", "b"]],
    )
    member = wrapped.members[1]
    assert wrapped.endpoints == [f"10.231.1.{10 + i}:{m.client_port}" for i, m in enumerate(wrapped.members)]
    assert member.peer_url == f"http://10.231.2.11:{member.peer_port}"
    command = member.command()
    assert command[:4] == ["ip", "netns", "exec", "b"] and command[4].endswith("etcd")
    assert command[command.index("--listen-client-urls") + 1] == member.client_url
    cluster_flag = command[command.index("--initial-cluster") + 1]
    assert cluster_flag == ",".join(f"{m.name}={m.peer_url}" for m in wrapped.members)
    with pytest.raises(ValueError, match="one entry per member"):
        EtcdCluster(3, hosts=["10.231.1.10"])
    for cluster in (default, wrapped):
        cluster.close()


def test_a_one_member_cluster_works():
    with EtcdCluster(1) as single:
        assert single.leader() == 0
        single.etcdctl("put", "k", "v")
        single.kill(0)
        assert single.leader() is None
        single.restart(0)
        assert single.etcdctl("get", "k", "--print-value-only").stdout == b"v\n"


def test_a_genesis_registry_follows_the_cluster_through_a_leader_failure(cluster, registry_namespace):
    conn = gr.EtcdConnector(gr.EtcdConfig(endpoints=cluster.endpoints, dial_timeout=5))
    conn.connect()
    try:
        with gr.Registry(conn, gr.Config(namespace=registry_namespace, default_ttl=5, retry_interval=0.1)) as reg:
            reg.register(instance("a"))
            cluster.kill(cluster.wait_for_leader())
            cluster.wait_for_leader(timeout=15)
            reg.register(instance("b"), ttl=7)  # a new lease, granted by the new leader
            wait_until(lambda: [i.id for i in reg.get_service("svc")] == ["a", "b"], timeout=15)
            assert set(etcd_keys(cluster, registry_namespace)) == {
                f"{registry_namespace}/svc/a",
                f"{registry_namespace}/svc/b",
            }
    finally:
        conn.close()


# -- the fixtures ---------------------------------------------------------------------------

_namespaces_seen: list[str] = []


@pytest.mark.parametrize("round", [1, 2])
def test_registry_fixture_registers_in_this_tests_own_namespace(registry, registry_namespace, etcd_server, round):
    assert registry.namespace == registry_namespace
    assert registry.config.default_ttl == 5
    assert registry.config.retry_interval == pytest.approx(0.1)
    assert not registry.connector.closed
    assert registry_namespace not in _namespaces_seen
    _namespaces_seen.append(registry_namespace)
    registry.register(instance("x"))
    assert [i.id for i in registry.get_service("svc")] == ["x"]
    assert set(etcd_keys(etcd_server, registry_namespace)) == {f"{registry_namespace}/svc/x"}


async def test_async_registry_fixture(async_registry, registry_namespace, etcd_server):
    assert isinstance(async_registry, gr.AsyncRegistry)
    assert async_registry.namespace == registry_namespace
    assert registry_namespace not in _namespaces_seen
    _namespaces_seen.append(registry_namespace)
    await async_registry.register(instance("y"))
    assert [i.id for i in await async_registry.get_service("svc")] == ["y"]
    assert set(etcd_keys(etcd_server, registry_namespace)) == {f"{registry_namespace}/svc/y"}


async def test_both_registry_fixtures_share_the_tests_namespace(registry, async_registry, namespace):
    assert registry.namespace == async_registry.namespace == namespace
    assert registry.connector is not async_registry.connector  # each on its own connector
    registry.register(instance("from-sync"))
    assert [i.id for i in await async_registry.get_service("svc")] == ["from-sync"]


@pytest.fixture
def closed_after_teardown() -> Iterator[list]:
    """Set up before (so torn down after) the fixtures a test stashes here; checks they closed."""
    stashed: list = []
    yield stashed
    assert stashed
    for reg in stashed:
        assert reg.closed, reg
        assert reg.connector.closed, reg


async def test_registry_fixtures_close_their_registry_and_connector(closed_after_teardown, registry, async_registry):
    closed_after_teardown += [registry, async_registry]
    assert not registry.closed and not async_registry.closed


# -- without pytest-asyncio -----------------------------------------------------------------

_BLOCK_PYTEST_ASYNCIO = "import sys; sys.modules['pytest_asyncio'] = None\n"


def test_the_plugin_imports_without_pytest_asyncio():
    code = _BLOCK_PYTEST_ASYNCIO + textwrap.dedent(
        """
        try:
            import pytest_asyncio
        except ImportError:
            pass
        else:
            raise SystemExit("pytest_asyncio was not blocked")
        import genesis_registry.testing as t
        for name in ("etcd_server", "etcd_endpoints", "etcd_cluster", "registry", "async_registry",
                     "registry_namespace"):
            assert callable(getattr(t, name)), name
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.strip() == b"ok"


def _pytest_with_the_plugin(tmp_path: Path, etcd_endpoints) -> tuple[subprocess.CompletedProcess[bytes], str]:
    """Runs pytest on ``tmp_path/test_user.py`` in a child without pytest-asyncio, with this
    plugin loaded once and the session's etcd as an external one; its result and output."""
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    code = _BLOCK_PYTEST_ASYNCIO + textwrap.dedent(
        """
        import pytest
        # -p no:genesis_registry: the plugin loaded once, whether or not its entry point is installed.
        sys.exit(pytest.main(["-q", "-rs", "-p", "no:cacheprovider", "-p", "no:genesis_registry",
                              "-p", "genesis_registry.testing", "test_user.py"]))
        """
    )
    env = dict(os.environ, PYTEST_DISABLE_PLUGIN_AUTOLOAD="1", GENESIS_ETCD_ENDPOINTS=",".join(etcd_endpoints))
    env.pop("PYTEST_ADDOPTS", None)
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, timeout=120)
    return result, result.stdout.decode() + result.stderr.decode()


def test_the_plugin_serves_sync_tests_without_pytest_asyncio(tmp_path: Path, etcd_endpoints):
    (tmp_path / "test_user.py").write_text(
        textwrap.dedent(
            """
            import genesis_registry as gr

            def test_user(registry, registry_namespace):
                assert registry.namespace == registry_namespace
                registry.register(gr.ServiceInstance(id="u", name="user", endpoints=["127.0.0.1:1"]))
                assert [i.id for i in registry.get_service("user")] == ["u"]
            """
        )
    )
    result, out = _pytest_with_the_plugin(tmp_path, etcd_endpoints)
    assert result.returncode == 0, out
    assert "1 passed" in out


def test_process_actions_on_an_external_etcd_skip_wherever_they_are_asked(tmp_path: Path, etcd_endpoints):
    (tmp_path / "test_user.py").write_text(
        textwrap.dedent(
            """
            import pytest

            @pytest.fixture
            def crashed_at_setup(etcd_server):
                etcd_server.kill()

            @pytest.fixture
            def crashed_at_teardown(etcd_server):
                yield
                etcd_server.kill()

            def test_in_the_test(etcd_server):
                etcd_server.stop()

            def test_in_a_fixture_set_up(crashed_at_setup):
                pass

            def test_in_a_fixture_teardown(crashed_at_teardown):
                pass
            """
        )
    )
    result, out = _pytest_with_the_plugin(tmp_path, etcd_endpoints)
    assert result.returncode == 0, out
    # The teardown's skip is reported beside the test's pass, as pytest reports a skip there.
    assert "1 passed, 3 skipped" in out or "3 skipped, 1 passed" in out, out
    assert "SKIPPED [3]" in out and "needs a local etcd process" in out, out


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (an orphan's reaper may be slow)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_local_etcd_starts_while_grpc_calls_run_on_other_threads(registry, servers):
    # With Python between fork and exec (a pre-exec hook), CPython runs grpcio's at-fork
    # handlers in the child, and 15 of 60 etcd starts died before exec in such a process.
    for server in servers:
        registry.register(instance_for(server))
    stop = threading.Event()
    calls: list[int] = []
    failures: list[BaseException] = []

    def call_until_stopped(stub: EchoStub) -> None:
        while not stop.is_set():
            try:
                stub.Unary(b"x", timeout=5)
                calls.append(1)
            except grpc.RpcError as error:
                failures.append(error)

    with registry.get_connection("echo") as channel:
        callers = [threading.Thread(target=call_until_stopped, args=(EchoStub(channel),)) for _ in range(2)]
        for caller in callers:
            caller.start()
        try:
            wait_until(lambda: len(calls) >= 10, 10, "gRPC calls under way")
            started = 0
            for _ in range(50):
                with EtcdServer() as etcd:
                    assert _is_healthy(etcd.client_url, 5)
                    started += 1
            during = len(calls)
        finally:
            stop.set()
            for caller in callers:
                caller.join(10)
    assert started == 50
    assert during > 100, f"only {during} gRPC calls ran while etcd started"
    assert failures == []


@pytest.mark.skipif(_setpriv() is None, reason="the parent-death signal needs Linux and util-linux's setpriv")
def test_a_local_etcd_never_outlives_the_process_that_started_it():
    code = textwrap.dedent(
        """
        import sys
        from genesis_registry.localetcd import EtcdServer

        etcd = EtcdServer().start()
        print(etcd.pid, flush=True)
        sys.stdin.read()  # until killed
        """
    )
    with subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as parent:
        assert parent.stdout is not None
        etcd_pid = None
        try:
            etcd_pid = int(parent.stdout.readline())
            assert _running(etcd_pid)
            assert Path(f"/proc/{etcd_pid}/comm").read_text().strip() == "etcd"
            parent.kill()  # SIGKILL: no finalizer, no atexit runs in the parent
            parent.wait(10)
            wait_until(lambda: not _running(etcd_pid), 10, f"etcd {etcd_pid} to die with its parent")
        finally:
            parent.kill()
            if etcd_pid is not None and _running(etcd_pid):  # the test failed: leave no orphan
                os.kill(etcd_pid, signal.SIGKILL)


@pytest.mark.skipif(not hasattr(os, "register_at_fork"), reason="needs os.register_at_fork")
def test_no_python_runs_in_a_child_between_fork_and_exec(tmp_path):
    # CPython runs after_in_child hooks in a child only when Python code runs there before
    # exec (a pre-exec hook); grpcio's and this library's hooks then run in the child of a
    # threaded process. The hook below reports any such child through a pipe.
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    armed = [True]

    def report() -> None:
        if armed[0]:
            os.write(write_end, b"!")

    os.register_at_fork(after_in_child=report)  # cannot be unregistered: disarmed below
    try:
        with EtcdServer() as etcd:
            etcd.etcdctl("put", "/k", "v")
            etcd.restart()
        with EtcdCluster(1, data_dir=tmp_path):
            pass
    finally:
        armed[0] = False
        os.close(write_end)
    try:
        seen = os.read(read_end, 100)
    except BlockingIOError:
        seen = b""
    finally:
        os.close(read_end)
    assert seen == b"", f"{len(seen)} child(ren) ran Python between fork and exec"
