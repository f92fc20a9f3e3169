"""etcd authentication with users and roles, on a real etcd whose simple auth tokens live two
seconds: a role limited to the namespace, a read-only role, a role narrower than the
namespace, a wrong password, and tokens expiring under long-lived registrations and watches.

Each test makes its own users and roles for its own namespace (etcd permissions are key
prefixes), so the tests share one etcd without seeing each other.
"""

from __future__ import annotations

import base64
import json
import logging
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import genesis_registry as gr
import pytest
from genesis_registry.localetcd import EtcdServer
from support.scenario import Scenario
from support.wait import wait_until

ROOT = "root:r00t-Passw0rd"
TOKEN_TTL = 2
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture(scope="module")
def auth_etcd() -> Iterator[EtcdServer]:
    """etcd with authentication on and simple tokens that expire after 2 s idle."""
    with EtcdServer(extra_args=["--auth-token-ttl", str(TOKEN_TTL)]) as server:
        server.etcdctl("user", "add", ROOT)
        server.etcdctl("auth", "enable")
        yield server


def as_root(etcd: EtcdServer, *args: str) -> str:
    return etcd.etcdctl(*args, "--user", ROOT).stdout.decode()


def add_user(etcd: EtcdServer, user: str, password: str, permission: str, prefix: str) -> None:
    """A user whose only role grants ``permission`` (read, write, readwrite) on keys under ``prefix``."""
    role = f"{user}-role"
    as_root(etcd, "user", "add", f"{user}:{password}")
    as_root(etcd, "role", "add", role)
    as_root(etcd, "role", "grant-permission", "--prefix=true", role, permission, prefix)
    as_root(etcd, "user", "grant-role", user, role)


def all_keys(etcd: EtcdServer) -> dict[str, int]:
    """Every key in etcd (read as root) -> its lease id."""
    data = json.loads(as_root(etcd, "get", "", "--from-key", "-w", "json"))
    return {base64.b64decode(kv["key"]).decode(): int(kv.get("lease", 0)) for kv in data.get("kvs", [])}


def connector(etcd: EtcdServer, user: str, password: str) -> gr.EtcdConnector:
    conn = gr.EtcdConnector(gr.EtcdConfig(endpoints=etcd.endpoints, username=user, password=password))
    conn.connect()
    return conn


def svc(id: str, name: str = "svc") -> gr.ServiceInstance:
    return gr.ServiceInstance(id=id, name=name, endpoints=["grpc://127.0.0.1:9000"])


@pytest.mark.timeout(60)
def test_role_limited_to_the_namespace_registers_discovers_and_watches(
    auth_etcd: EtcdServer, namespace: str, scenario: Scenario
) -> None:
    add_user(auth_etcd, "ns-app", "app-pw", "readwrite", namespace + "/")
    scenario.inject(f"user ns-app with a role readwrite on {namespace}/ only")
    with (
        connector(auth_etcd, "ns-app", "app-pw") as conn,
        gr.Registry(conn, gr.Config(namespace=namespace)) as reg,
        connector(auth_etcd, "ns-app", "app-pw") as conn2,
        gr.Registry(conn2, gr.Config(namespace=namespace)) as other,
    ):
        reg.register(svc("a"))
        with reg.watch("svc") as watch:
            first = watch.get(10)
            other.register(svc("b"))
            second = watch.get(10)
        seen = [(e.type.value, e.service.id) for e in (first, second) if e is not None]
        scenario.check("watch events", expected=[("PUT", "a"), ("PUT", "b")], seen=seen)
        scenario.check("get_service", expected=["a", "b"], seen=[i.id for i in other.get_service("svc")])

        scenario.inject("the same user registers in another namespace, /elsewhere")
        before = all_keys(auth_etcd)
        outside = gr.Registry(conn, gr.Config(namespace="/elsewhere"))
        with pytest.raises(gr.AuthenticationError) as info:
            outside.register(svc("x"))
        scenario.check("refused: names the permission", expected=True, seen="permission denied" in str(info.value))
        scenario.check("refused: names the key", expected=True, seen="/elsewhere/svc/x" in str(info.value))
        outside.close()
        scenario.check("keys in etcd unchanged", expected=before, seen=all_keys(auth_etcd))
        scenario.check("still discovered", expected=["a", "b"], seen=[i.id for i in reg.get_service("svc")])


@pytest.mark.timeout(60)
def test_read_only_role_discovers_but_cannot_register(
    auth_etcd: EtcdServer, namespace: str, scenario: Scenario
) -> None:
    add_user(auth_etcd, "ro-writer", "w-pw", "readwrite", namespace + "/")
    add_user(auth_etcd, "ro-reader", "r-pw", "read", namespace + "/")
    scenario.inject(f"user ro-reader with a role read-only on {namespace}/ registers")
    with (
        connector(auth_etcd, "ro-writer", "w-pw") as wconn,
        gr.Registry(wconn, gr.Config(namespace=namespace)) as writer,
        connector(auth_etcd, "ro-reader", "r-pw") as rconn,
        gr.Registry(rconn, gr.Config(namespace=namespace)) as reader,
    ):
        writer.register_many([svc("a"), svc("b")])
        scenario.check("reader discovers", expected=["a", "b"], seen=[i.id for i in reader.get_service("svc")])
        with reader.watch("svc") as watch:
            initial = [watch.get(10), watch.get(10)]
            before = all_keys(auth_etcd)
            with pytest.raises(gr.AuthenticationError) as info:
                reader.register(svc("c"))
            message = str(info.value)
            scenario.check("refused: names the permission", expected=True, seen="permission denied" in message)
            scenario.check("refused: names the key", expected=True, seen=f"{namespace}/svc/c" in message)
            scenario.check("reader holds no registration", expected=[], seen=reader.registered_ids())
            scenario.check("keys in etcd unchanged", expected=before, seen=all_keys(auth_etcd))
            writer.register(svc("d"))
            later = watch.get(10)
        scenario.check(
            "reader's watch",
            expected=[("PUT", "a"), ("PUT", "b"), ("PUT", "d")],
            seen=[(e.type.value, e.service.id) for e in [*initial, later] if e is not None],
        )
        scenario.check(
            "writer's instances kept", expected=["a", "b", "d"], seen=[i.id for i in reader.get_service("svc")]
        )


@pytest.mark.timeout(60)
def test_a_refused_registration_loses_nothing_already_registered(
    auth_etcd: EtcdServer, namespace: str, scenario: Scenario
) -> None:
    """A role narrower than the namespace: one service allowed, another refused, on the same lease."""
    add_user(auth_etcd, "narrow", "n-pw", "readwrite", f"{namespace}/allowed/")
    scenario.inject(f"user narrow may write {namespace}/allowed/ only; registers allowed/a, then other/b (ttl 2)")
    with (
        connector(auth_etcd, "narrow", "n-pw") as conn,
        gr.Registry(conn, gr.Config(namespace=namespace, default_ttl=TOKEN_TTL)) as reg,
    ):
        reg.register(svc("a", name="allowed"))
        with pytest.raises(gr.AuthenticationError, match="permission denied"):
            reg.register(svc("b", name="other"))
        scenario.check("registered ids", expected=["a"], seen=reg.registered_ids())
        for _ in range(3):
            outlive_a_lease(auth_etcd, seconds=2 * TOKEN_TTL)
            keys = sorted(k for k in all_keys(auth_etcd) if k.startswith(namespace + "/"))
            if keys != [f"{namespace}/allowed/a"]:
                break
        scenario.check(
            "keys after 3 x (an unrefreshed 4 s lease expired)", expected=[f"{namespace}/allowed/a"], seen=keys
        )
        scenario.check("lease failures", expected=0, seen=reg.stats()["lease_failures"])


def outlive_a_lease(etcd: EtcdServer, seconds: int) -> None:
    """Returns once etcd has expired a lease of ``seconds`` granted now and never kept alive:
    etcd's own clock, not ours, says that much time has passed."""
    out = as_root(etcd, "lease", "grant", str(seconds))
    lease = out.split()[1]  # "lease 694d... granted with TTL(4s)"

    def expired() -> bool:
        return "already expired" in as_root(etcd, "lease", "timetolive", lease)

    wait_until(expired, timeout=seconds + 15, message=f"lease {lease} ({seconds}s) to expire")


def gateway(etcd: EtcdServer, path: str, body: dict[str, Any], token: str | None = None) -> dict[str, Any]:
    """A call to etcd's JSON gateway; an error reply is returned as its JSON body."""
    request = urllib.request.Request(etcd.client_url + path, data=json.dumps(body).encode(), method="POST")
    if token is not None:
        request.add_header("Authorization", token)
    try:
        with _OPENER.open(request, timeout=10) as response:
            return dict(json.loads(response.read()))
    except urllib.error.HTTPError as exc:
        return dict(json.loads(exc.read()))


@pytest.mark.timeout(120)
def test_expiring_tokens_go_unnoticed_by_registrations_and_watches(
    auth_etcd: EtcdServer, namespace: str, scenario: Scenario, caplog: pytest.LogCaptureFixture
) -> None:
    add_user(auth_etcd, "ttl-app", "t-pw", "readwrite", namespace + "/")
    scenario.inject(f"auth tokens expire after {TOKEN_TTL} s idle; 3 rounds of idling past it, then using the client")
    caplog.set_level(logging.DEBUG, logger="genesis_registry")
    with (
        connector(auth_etcd, "ttl-app", "t-pw") as conn,
        gr.Registry(conn, gr.Config(namespace=namespace, default_ttl=TOKEN_TTL)) as reg,
        connector(auth_etcd, "ttl-app", "t-pw") as wconn,
        gr.Registry(wconn, gr.Config(namespace=namespace)) as writer,
    ):
        reg.register(svc("a"))
        lease = all_keys(auth_etcd)[f"{namespace}/svc/a"]
        watch = reg.watch("svc")
        events = [watch.get(10)]
        expired_tokens = []
        for round in range(3):
            # A token taken now and left idle as long as reg's: proof that reg's expired.
            probe = gateway(auth_etcd, "/v3/auth/authenticate", {"name": "ttl-app", "password": "t-pw"})["token"]
            outlive_a_lease(auth_etcd, seconds=2 * TOKEN_TTL)
            reply = gateway(auth_etcd, "/v3/kv/range", {"key": base64.b64encode(b"x").decode()}, token=probe)
            expired_tokens.append("invalid auth token" in json.dumps(reply))
            writer.register(svc(f"w{round}"))  # the open watch stream must still deliver
            events.append(watch.get(10))
            reg.register(svc(f"r{round}"))  # a call on an expired token
            events.append(watch.get(10))
            # A new watch on the aged stream.
            scenario.check(f"round {round}: new service read", expected=(), seen=reg.get_service(f"new{round}"))
        watch.close()
        scenario.check("probe tokens expired in each round", expected=[True, True, True], seen=expired_tokens)
        expected_events = [("PUT", "a")] + [("PUT", f"{p}{r}") for r in range(3) for p in ("w", "r")]
        seen_events = [(e.type.value, e.service.id) for e in events if e is not None]
        scenario.check("watch events across expiries", expected=expected_events, seen=seen_events)
        scenario.check("a's lease unchanged", expected=lease, seen=all_keys(auth_etcd).get(f"{namespace}/svc/a"))
        stats = reg.stats()
        scenario.check("lease failures", expected=0, seen=stats["lease_failures"])
        scenario.note("watch restarts", stats["watch_restarts"])
        refreshed = sum("fresh auth token" in r.getMessage() for r in caplog.records)
        scenario.note("log lines about reopening a stream with a fresh token", refreshed)
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        scenario.check("errors logged", expected=[], seen=errors)


@pytest.mark.timeout(60)
def test_wrong_password_is_refused_and_never_echoed(
    auth_etcd: EtcdServer, scenario: Scenario, caplog: pytest.LogCaptureFixture
) -> None:
    add_user(auth_etcd, "pw-user", "Right-Pw-1", "read", "/nothing/")
    wrong = "Wr0ng-Pw-7f3a9c"
    scenario.inject(f"user pw-user with the wrong password {wrong!r}; library logs at DEBUG")
    caplog.set_level(logging.DEBUG, logger="genesis_registry")
    conn = gr.EtcdConnector(gr.EtcdConfig(endpoints=auth_etcd.endpoints, username="pw-user", password=wrong))
    with pytest.raises(gr.AuthenticationError) as info:
        conn.connect()
    texts = {
        "message": str(info.value),
        "exception repr": repr(info.value),
        "connector repr": repr(conn),
        "config repr": repr(conn.config),
        "logs": "\n".join(r.getMessage() + repr(getattr(r, "__dict__", {})) for r in caplog.records),
    }
    conn.close()
    scenario.check("says the credentials were refused", expected=True, seen="password" in texts["message"])
    scenario.check("password appears in", expected=[], seen=[where for where, text in texts.items() if wrong in text])
    scenario.check("user named", expected=True, seen="pw-user" in texts["message"])
