"""The ``genesis-registry`` command, run for real (``python -m genesis_registry``) in child
processes against a real etcd: every subcommand in table and JSON form, signals, errors,
authentication, the local etcd (one member and a cluster) and the demo."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import pty
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import genesis_registry as gr
import pytest
from genesis_registry.localetcd import EtcdServer, find_etcdctl_binary
from support.cli_process import Child, assert_one_line_error, child_env, free_ports, run_cli
from support.etcd import etcd_keys, instance, make_connector

#: In argument lists of parametrized tests: "--endpoints <the test etcd>".
ETCD = "@etcd"


def search(pattern: str, text: str) -> re.Match[str]:
    match = re.search(pattern, text)
    assert match is not None, f"{pattern!r} not in {text!r}"
    return match


def cells(line: str) -> list[str]:
    """The columns of a table line (separated by two spaces or more)."""
    return re.split(r"\s{2,}", line.strip())


def pid_running(pid: int) -> bool:
    """True while ``pid`` is a live (not zombie) process."""
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def processes_mentioning(text: str) -> list[str]:
    """Command lines of the processes whose command line contains ``text`` (pgrep -f)."""
    if shutil.which("pgrep") is None:
        return []
    found = subprocess.run(["pgrep", "-af", text], capture_output=True, text=True)
    return [line for line in found.stdout.splitlines() if str(os.getpid()) != line.split()[0]]


@pytest.fixture
def spawn() -> Iterator[Callable[..., Child]]:
    """Starts :class:`Child` processes; kills any still running at the end of the test."""
    children: list[Child] = []

    def start(*args: str, **kwargs: Any) -> Child:
        child = Child(*args, **kwargs)
        children.append(child)
        return child

    yield start
    for child in children:
        child.close()


@pytest.fixture
def at(etcd_endpoints: list[str], namespace: str) -> list[str]:
    """The common options pointing at the test etcd and this test's namespace."""
    return ["--endpoints", ",".join(etcd_endpoints), "--namespace", namespace]


@pytest.fixture
def reader(etcd_endpoints: list[str], namespace: str) -> Iterator[Callable[[], dict[str, int]]]:
    """``list_services()`` read from etcd now, through a registry of the test's own."""
    conn = make_connector(etcd_endpoints)
    reg = gr.Registry(conn, gr.Config(namespace=namespace))
    yield reg.list_services
    reg.close()
    conn.close()


# --------------------------------------------------------------------------
# Help
# --------------------------------------------------------------------------


@pytest.mark.parametrize("command", [None, "demo", "etcd", "list", "get", "watch", "register", "deregister", "console"])
def test_help_works_for_the_command_and_every_subcommand(command: str | None) -> None:
    result = run_cli(*([command] if command else []), "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: genesis-registry{' ' + command if command else ''}")
    assert result.stderr == ""
    if command is None:
        for name in ("demo", "etcd", "list", "get", "watch", "register", "deregister", "console"):
            assert name in result.stdout


def test_version_and_the_demo_module_entry_point() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"genesis-registry {gr.__version__}"
    demo_help = subprocess.run(
        [sys.executable, "-m", "genesis_registry.demo", "--help"], capture_output=True, text=True, timeout=60
    )
    assert demo_help.returncode == 0
    assert "--keep-etcd" in demo_help.stdout and "--console" in demo_help.stdout


# --------------------------------------------------------------------------
# list, get
# --------------------------------------------------------------------------


def test_list_prints_services_with_counts_as_a_table_and_as_json(registry: gr.Registry, at: list[str]) -> None:
    registry.register_many([instance("a1", "alpha"), instance("a2", "alpha"), instance("b1", "beta-service")])

    table = run_cli("list", *at)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert [cells(line) for line in lines] == [["SERVICE", "INSTANCES"], ["alpha", "2"], ["beta-service", "1"]]
    assert len({len(line) for line in lines}) == 1  # counts right-aligned under the header's end

    doc = run_cli(*at, "list", "--json")  # common options before and after the command name
    assert doc.returncode == 0, doc.stderr
    assert [json.loads(line) for line in doc.stdout.splitlines()] == [
        {"namespace": at[3], "services": {"alpha": 2, "beta-service": 1}}
    ]


def test_list_of_an_empty_namespace(at: list[str]) -> None:
    table = run_cli("list", *at)
    assert (table.returncode, table.stdout) == (0, "")
    assert table.stderr.strip() == f"no services under {at[3]}"
    doc = run_cli("list", "--json", *at)
    assert json.loads(doc.stdout) == {"namespace": at[3], "services": {}}


def test_get_prints_instances_as_a_table_and_as_json(registry: gr.Registry, at: list[str]) -> None:
    first = gr.ServiceInstance(
        id="user-001",
        name="user-service",
        version="1.0.0",
        endpoints=["grpc://127.0.0.1:9001", "127.0.0.1:9002"],
        metadata={"zone": "a", "weight": "100"},
    )
    second = instance("user-002", "user-service", port=9003)
    registry.register_many([second, first])

    table = run_cli("get", "user-service", *at)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert [cells(line) for line in lines] == [
        ["ID", "VERSION", "ENDPOINTS", "METADATA"],
        ["user-001", "1.0.0", "grpc://127.0.0.1:9001,127.0.0.1:9002", "weight=100,zone=a"],
        ["user-002", "-", "grpc://127.0.0.1:9003", "-"],
    ]
    for column in ("VERSION", "ENDPOINTS", "METADATA"):  # aligned columns
        start = lines[0].index(column)
        assert all(line[start - 2 : start] == "  " and line[start] != " " for line in lines)

    doc = run_cli("--json", "get", "user-service", *at)
    assert doc.returncode == 0, doc.stderr
    assert json.loads(doc.stdout) == {
        "namespace": at[3],
        "service": "user-service",
        "instances": [first.to_dict(), second.to_dict()],
    }


def test_get_of_a_service_without_instances(at: list[str]) -> None:
    table = run_cli("get", "nobody", *at)
    assert (table.returncode, table.stdout) == (0, "")
    assert "no instances of nobody" in table.stderr
    doc = run_cli("get", "nobody", "--json", *at)
    assert json.loads(doc.stdout)["instances"] == []


def test_endpoints_default_to_the_environment_variable(
    registry: gr.Registry, etcd_endpoints: list[str], namespace: str
) -> None:
    registry.register(instance("e1", "env-service"))
    result = run_cli("list", "--namespace", namespace, env=child_env(GENESIS_ETCD_ENDPOINTS=",".join(etcd_endpoints)))
    assert result.returncode == 0, result.stderr
    assert cells(result.stdout.splitlines()[1]) == ["env-service", "1"]


def test_stats_prints_the_registry_counters_at_exit(registry: gr.Registry, at: list[str]) -> None:
    registry.register(instance("s1", "stats-service"))
    table = run_cli("get", "stats-service", "--stats", *at)
    assert table.returncode == 0, table.stderr
    rows = [cells(line) for line in table.stdout.splitlines()]
    stats_at = rows.index(["STAT", "VALUE"])
    services_at = rows.index(["SERVICE", "INSTANCES", "CACHE_AGE_S", "EVENT_LAG_US", "EVENT_LAG_MAX_US"])
    stats = dict(row for row in rows[stats_at + 1 : services_at] if any(row))
    assert stats["watched_services"] == "1"
    assert set(stats) >= {"registrations", "lease_failures", "watch_events"}
    (service_row,) = rows[services_at + 1 :]
    assert service_row[:2] == ["stats-service", "1"]
    assert float(service_row[2]) >= 0

    doc = run_cli("get", "stats-service", "--stats", "--json", *at)
    first, last = (json.loads(line) for line in doc.stdout.splitlines())
    assert [i["id"] for i in first["instances"]] == ["s1"]
    assert last["stats"]["watched_services"] == 1
    assert last["services"]["stats-service"]["instances"] == 1
    assert set(last["services"]["stats-service"]) == {"instances", "age_s", "event_lag_us", "event_lag_max_us"}


# --------------------------------------------------------------------------
# watch
# --------------------------------------------------------------------------


def test_watch_prints_current_instances_then_changes_until_ctrl_c(
    registry: gr.Registry, at: list[str], spawn: Callable[..., Child]
) -> None:
    registry.register_many([instance("w2", "watched", port=9002), instance("w1", "watched", port=9001, version="2.0")])
    watch = spawn("watch", "watched", *at)

    assert cells(watch.readline())[1:] == ["PUT", "w1", "2.0", "grpc://127.0.0.1:9001", "-"]
    assert cells(watch.readline())[1:] == ["PUT", "w2", "-", "grpc://127.0.0.1:9002", "-"]

    registry.register(instance("w3", "watched", port=9003, metadata={"zone": "b"}))
    assert cells(watch.readline())[1:] == ["PUT", "w3", "-", "grpc://127.0.0.1:9003", "zone=b"]
    registry.deregister("w1")
    line = watch.readline()
    assert cells(line)[1:] == ["DELETE", "w1"]
    assert re.match(r"\d\d:\d\d:\d\d\.\d{3}  ", line)

    code, rest = watch.stop(signal.SIGINT)
    assert (code, rest) == (0, [])
    assert "watching watched" in watch.stderr
    assert "Traceback" not in watch.stderr


def test_watch_json_prints_one_object_per_event_and_ends_on_sigterm(
    registry: gr.Registry, at: list[str], spawn: Callable[..., Child]
) -> None:
    first = instance("j1", "jwatched", metadata={"zone": "a"})
    registry.register(first)
    watch = spawn("watch", "jwatched", "--json", *at)

    event = json.loads(watch.readline())
    assert (event["type"], event["instance"]) == ("PUT", first.to_dict())
    assert event["time"].endswith("+00:00")

    second = instance("j2", "jwatched", port=9100)
    registry.register(second)
    assert json.loads(watch.readline())["instance"] == second.to_dict()
    registry.deregister("j1")
    event = json.loads(watch.readline())
    assert (event["type"], event["instance"]["id"], event["instance"]["name"]) == ("DELETE", "j1", "jwatched")

    code, rest = watch.stop(signal.SIGTERM)
    assert (code, rest) == (0, [])
    assert "Traceback" not in watch.stderr


# --------------------------------------------------------------------------
# register, deregister
# --------------------------------------------------------------------------


def test_register_keeps_the_instance_until_ctrl_c_then_deregisters(
    at: list[str], spawn: Callable[..., Child], reader: Callable[[], dict[str, int]], registry: gr.Registry
) -> None:
    child = spawn(
        "register",
        *at,
        "--name",
        "cli-service",
        "--id",
        "c1",
        "--endpoint",
        "127.0.0.1:9001",
        "--endpoint",
        "grpc://127.0.0.1:9002",
        "--version",
        "1.2.3",
        "--meta",
        "zone=a",
        "--meta",
        "weight=100",
        "--ttl",
        "5",
    )
    line = child.readline()
    assert line == f"registered c1 of cli-service at {at[3]}/cli-service/c1 (ttl 5 s)"
    assert registry.get_service("cli-service") == (
        gr.ServiceInstance(
            id="c1",
            name="cli-service",
            version="1.2.3",
            endpoints=["127.0.0.1:9001", "grpc://127.0.0.1:9002"],
            metadata={"zone": "a", "weight": "100"},
        ),
    )

    code, rest = child.stop(signal.SIGINT)
    assert code == 0, child.stderr
    assert rest == ["deregistered c1 of cli-service"]
    assert reader() == {}  # gone when the command exits, not when its lease expires
    assert "Traceback" not in child.stderr


def test_register_json_and_sigterm(
    at: list[str], spawn: Callable[..., Child], reader: Callable[[], dict[str, int]]
) -> None:
    child = spawn("register", "--json", *at, "--name", "jsvc", "--id", "j1", "--endpoint", "127.0.0.1:9001")
    doc = json.loads(child.readline())
    assert doc == {
        "status": "registered",
        "key": f"{at[3]}/jsvc/j1",
        "ttl": 30,
        "instance": {"id": "j1", "name": "jsvc", "version": "", "metadata": {}, "endpoints": ["127.0.0.1:9001"]},
    }
    assert reader() == {"jsvc": 1}
    code, rest = child.stop(signal.SIGTERM)
    assert code == 0, child.stderr
    assert [json.loads(line) for line in rest] == [{"status": "deregistered", "key": f"{at[3]}/jsvc/j1", "id": "j1"}]
    assert reader() == {}


def test_deregister_removes_a_stale_key_and_fails_for_a_missing_one(
    etcd_server: Any, at: list[str], namespace: str
) -> None:
    # A key without an owner, as a crashed instance on a long lease leaves it.
    for i in ("s1", "s2"):
        stale = instance(i, "stale-service")
        etcd_server.etcdctl("put", f"{namespace}/stale-service/{i}", input=stale.to_json())

    result = run_cli("deregister", "stale-service", "s1", *at)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"deregistered s1 of stale-service (deleted {namespace}/stale-service/s1)"
    assert list(etcd_keys(etcd_server, namespace)) == [f"{namespace}/stale-service/s2"]

    doc = run_cli("deregister", "stale-service", "s2", "--json", *at)
    assert json.loads(doc.stdout) == {
        "removed": True,
        "namespace": namespace,
        "service": "stale-service",
        "id": "s2",
        "key": f"{namespace}/stale-service/s2",
    }
    assert etcd_keys(etcd_server, namespace) == {}

    missing = run_cli("deregister", "stale-service", "s1", *at)
    assert missing.returncode == 1
    assert missing.stdout == ""
    assert_one_line_error(missing, "no instance s1 of service stale-service", f"{namespace}/stale-service/s1")


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ["list"],
        ["get", "svc"],
        ["watch", "svc"],
        ["register", "--name", "svc", "--id", "i1", "--endpoint", "127.0.0.1:9001"],
        ["deregister", "svc", "i1"],
    ],
    ids=lambda c: c[0],
)
def test_unreachable_etcd_is_one_error_line_and_exit_1(command: list[str]) -> None:
    port = free_ports(1)  # nobody listens there
    result = run_cli(*command, "--endpoints", f"127.0.0.1:{port}", "--dial-timeout", "1")
    assert result.returncode == 1
    assert result.stdout == ""
    assert_one_line_error(result, f"127.0.0.1:{port}", "did not answer")


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["list", "--endpoints", "nohost"], ['"nohost" is not a valid host:port']),
        (["list", "--endpoints", "127.0.0.1:99999"], ["not a valid host:port"]),
        (["list", "--endpoints", ""], ["must not be empty"]),
        (["list", "--endpoints", "https://127.0.0.1:2379"], ["no TLS configuration"]),
        (["list", "--namespace", "/a/../b", ETCD], ['namespace must not contain "." or ".." segments', "/a/../b"]),
        (["list", "--dial-timeout", "soon", ETCD], ["--dial-timeout", "not a number"]),
        (["list", "--user", "root", ETCD], ["--user root needs a password", "GENESIS_ETCD_PASSWORD"]),
        (["list", "--password", "secret", ETCD], ["--password needs --user"]),
        (["list", "--cert", "c.pem", ETCD], ["--cert and --key go together"]),
        (["list", "--cacert", "/does/not/exist.pem", ETCD], ["cannot read TLS CA file"]),
        (["get", ETCD], ["required: NAME"]),
        (["deregister", "svc", ETCD], ["required: ID"]),
        (["frobnicate"], ["invalid choice: 'frobnicate'"]),
        ([], ["required: COMMAND"]),
        (["--endpoints", "127.0.0.1:1", "demo"], ["--endpoints does not apply to 'demo'"]),
        (["--stats", "etcd"], ["--stats does not apply to 'etcd'"]),
        (["register", "--name", "svc", "--id", "i1", ETCD], ["required: --endpoint"]),
        (["register", "--name", "a/b", "--id", "i1", "--endpoint", "h:1", ETCD], ["invalid service instance", "a/b"]),
        (["register", "--name", "svc", "--id", "", "--endpoint", "h:1", ETCD], ["invalid service instance", "id"]),
        (["register", "--name", "svc", "--id", "i1", "--endpoint", "http://h:1", ETCD], ["http://h:1"]),
        (
            ["register", "--name", "svc", "--id", "i1", "--endpoint", "h:1", "--meta", "novalue", ETCD],
            ["KEY=VALUE", "novalue"],
        ),
        (["register", "--name", "svc", "--id", "i1", "--endpoint", "h:1", "--ttl", "0.5", ETCD], ["at least 1 second"]),
        (["register", "--name", "svc", "--id", "i1", "--endpoint", "h:1", "--ttl", "-3", ETCD], ["positive"]),
        # Said before connecting: no etcd answers at this address.
        (
            ["register", "--name", "s", "--id", "i", "--endpoint", "h:1", "--ttl", "0.5", "--endpoints", "127.0.0.1:1"],
            ["at least 1 second"],
        ),
        (["deregister", "a/b", "i1", ETCD], ["invalid service instance", "a/b"]),
        (["etcd", "--port", "0"], ["--port", "not a port number"]),
        (["etcd", "--port", "65535"], ["leaves no room"]),
        (["etcd", "--members", "0"], ["--members", "at least 1"]),
    ],
)
def test_usage_errors_exit_2_with_one_line(args: list[str], words: list[str], etcd_endpoints: list[str]) -> None:
    # ETCD: the test etcd (for errors found once connected, like a bad service name in deregister)
    args = [arg for a in args for arg in (["--endpoints", ",".join(etcd_endpoints)] if a == ETCD else [a])]
    result = run_cli(*args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert_one_line_error(result, *words)


# --------------------------------------------------------------------------
# Authentication
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def auth_etcd() -> Iterator[EtcdServer]:
    """An etcd of its own with authentication on: user root, password ``s3cret-pw``."""
    with EtcdServer() as server:
        server.etcdctl("user", "add", "root:s3cret-pw")
        server.etcdctl("auth", "enable")
        yield server


def test_wrong_password_from_the_environment_is_refused_and_never_echoed(auth_etcd: EtcdServer) -> None:
    endpoint = auth_etcd.endpoints[0]
    wrong = "wr0ng-Passw0rd"
    result = run_cli("--endpoints", endpoint, "--user", "root", "list", env=child_env(GENESIS_ETCD_PASSWORD=wrong))
    assert result.returncode == 1
    line = assert_one_line_error(result, "refused the credentials of user root")
    assert wrong not in line + result.stdout

    right = run_cli(
        "--endpoints", endpoint, "--user", "root", "list", "--json", env=child_env(GENESIS_ETCD_PASSWORD="s3cret-pw")
    )
    assert right.returncode == 0, right.stderr
    assert json.loads(right.stdout)["services"] == {}
    assert "s3cret-pw" not in right.stdout + right.stderr


def test_password_prompt_on_a_terminal_does_not_echo(auth_etcd: EtcdServer) -> None:
    master, slave = pty.openpty()
    child = Child(
        "--endpoints",
        auth_etcd.endpoints[0],
        "--user",
        "root",
        "list",
        "--json",
        stdin=slave,
        # A new session whose controlling terminal (/dev/tty) is the pty on stdin.
        wrapper=("setsid", "--ctty"),
    )
    os.close(slave)
    try:
        seen = b""
        deadline = time.monotonic() + 20
        while b"password for root: " not in seen:
            assert time.monotonic() < deadline, f"no prompt; terminal shows {seen!r}; stderr {child.stderr}"
            if select.select([master], [], [], 0.5)[0]:
                seen += os.read(master, 1024)
        os.write(master, b"s3cret-pw\n")
        assert json.loads(child.readline()) == {"namespace": "/genesis/services", "services": {}}
        assert child.proc.wait(20) == 0, child.stderr
        with contextlib.suppress(OSError):  # EIO once the child closed the terminal
            while select.select([master], [], [], 0.2)[0]:
                chunk = os.read(master, 1024)
                if not chunk:
                    break
                seen += chunk
        assert b"s3cret-pw" not in seen
        assert "s3cret-pw" not in child.stderr
    finally:
        child.close()
        os.close(master)


def test_no_credentials_against_an_auth_enabled_etcd(auth_etcd: EtcdServer) -> None:
    result = run_cli("--endpoints", auth_etcd.endpoints[0], "list")
    assert result.returncode == 1
    assert_one_line_error(result, "etcd refused the request", "no user name was given")


# --------------------------------------------------------------------------
# etcd
# --------------------------------------------------------------------------


def etcd_put_get(endpoint: str, *args: str) -> str:
    cmd = [str(find_etcdctl_binary()), f"--endpoints=http://{endpoint}", *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDCTL_")}
    return subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=30, env=env).stdout


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_etcd_serves_on_the_port_and_stops_on_a_signal(sig: int, spawn: Callable[..., Child]) -> None:
    port = free_ports(2)
    child = spawn("etcd", "--port", str(port))
    assert child.readline().startswith("etcd running: 1 member, pid ")
    pid = int(search(r"pid (\d+)", child.lines[0]).group(1))
    data_dir = search(r"data in (\S+) \(removed at exit\)", child.lines[0]).group(1)
    assert child.readline() == f"endpoints: 127.0.0.1:{port}"
    assert child.readline().startswith("try: export GENESIS_ETCD_ENDPOINTS=")
    assert pid_running(pid)
    assert processes_mentioning(data_dir) or shutil.which("pgrep") is None

    served = run_cli("--endpoints", f"127.0.0.1:{port}", "list", "--json")
    assert served.returncode == 0, served.stderr

    code, _ = child.stop(sig)
    assert code == 0, child.stderr
    assert "Traceback" not in child.stderr
    assert not pid_running(pid)
    assert processes_mentioning(data_dir) == []
    assert not os.path.exists(data_dir)  # the temporary dir is removed


def test_etcd_data_dir_keeps_data_across_runs(tmp_path: pathlib.Path, spawn: Callable[..., Child]) -> None:
    port = free_ports(2)
    data_dir = tmp_path / "etcd-data"
    endpoint = f"127.0.0.1:{port}"

    first = spawn("etcd", "--port", str(port), "--data-dir", str(data_dir), "--json")
    doc = json.loads(first.readline())
    assert doc["endpoints"] == [endpoint]
    assert doc["members"] == 1
    assert doc["data_dir"] == str(data_dir)
    etcd_put_get(endpoint, "put", "/kept", "across-runs")
    assert first.stop(signal.SIGTERM)[0] == 0, first.stderr
    assert all(not pid_running(pid) for pid in doc["pids"])
    assert processes_mentioning(str(data_dir)) == []

    second = spawn("etcd", "--port", str(port), "--data-dir", str(data_dir), "--json")
    second.readline()
    assert etcd_put_get(endpoint, "get", "/kept", "--print-value-only").strip() == "across-runs"
    assert second.stop(signal.SIGINT)[0] == 0, second.stderr
    assert (data_dir / "member").is_dir()
    assert processes_mentioning(str(data_dir)) == []


def test_etcd_on_a_busy_port_fails_with_one_line() -> None:
    port = free_ports(2)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", port))
        busy.listen()
        result = run_cli("etcd", "--port", str(port))
    assert result.returncode == 1
    assert_one_line_error(result, str(port), "in use", "--port")


@pytest.mark.timeout(120)
def test_etcd_members_runs_a_loopback_cluster(tmp_path: pathlib.Path, spawn: Callable[..., Child]) -> None:
    port = free_ports(6)
    data_dir = tmp_path / "cluster"
    child = spawn("etcd", "--members", "3", "--port", str(port), "--data-dir", str(data_dir), "--json")
    doc = json.loads(child.readline(timeout=60))
    endpoints = [f"127.0.0.1:{port + i}" for i in range(3)]
    assert doc["endpoints"] == endpoints
    assert doc["members"] == 3
    assert len(doc["pids"]) == 3 and all(pid_running(pid) for pid in doc["pids"])

    joined = ",".join(endpoints)
    registered = run_cli("--endpoints", joined, "list")
    assert registered.returncode == 0, registered.stderr
    members = etcd_put_get(endpoints[0], "member", "list")
    peers = {f"http://127.0.0.1:{port + 3 + i}" for i in range(3)}
    assert {p for p in peers if p in members} == peers

    code, _ = child.stop(signal.SIGTERM, timeout=60)
    assert code == 0, child.stderr
    assert all(not pid_running(pid) for pid in doc["pids"])
    assert processes_mentioning(str(data_dir)) == []


# --------------------------------------------------------------------------
# demo
# --------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_demo_runs_to_completion_and_leaves_nothing_running() -> None:
    started = time.monotonic()
    result = run_cli("demo", timeout=100)
    took = time.monotonic() - started
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    pid = int(search(r"local etcd at 127\.0\.0\.1:\d+ \(pid (\d+)\)", out).group(1))
    assert not pid_running(pid)
    for name in ("greeter-1", "greeter-2", "greeter-3", "greeter-4"):
        assert f"+ {name} registered" in out
        assert f"- {name} deregistered" in out
    assert re.search(r"summary: \d+ calls answered, 0 failed", out), out
    assert "greeter-2    " in out and "(0 after it left" in out
    assert "traffic moved:" in out
    assert "no thread or process left" in out
    assert "Traceback" not in result.stderr
    assert took < 60, f"the demo took {took:.1f}s"


@pytest.mark.timeout(120)
def test_demo_keep_etcd_serves_until_ctrl_c(spawn: Callable[..., Child]) -> None:
    child = spawn("demo", "--keep-etcd")
    first = child.readline(timeout=60)
    match = re.search(r"local etcd at (127\.0\.0\.1:\d+) \(pid (\d+)\)", first)
    assert match, first
    endpoint, pid = match.group(1), int(match.group(2))
    child.read_until(lambda line: line == "Ctrl-C stops it", timeout=60)
    assert any(line.startswith("traffic moved:") for line in child.lines)

    served = run_cli("--endpoints", endpoint, "--namespace", "/demo", "list", "--json")
    assert served.returncode == 0, served.stderr
    assert json.loads(served.stdout)["services"] == {}  # the demo's servers are gone, etcd is not

    code, _ = child.stop(signal.SIGINT)
    assert code == 0, child.stderr
    assert not pid_running(pid)
