"""Hostile input against a real etcd: ids, names, namespaces, metadata and endpoints made to
escape ``<namespace>/<name>/<id>``, values too large for etcd, and foreign values written
straight into a watched service's prefix.

After every attempt the test lists every key etcd holds (this module's etcd is its own, so
nothing else writes there) and checks that each one is the key of an instance registered on
purpose. Bad input must be refused with an error naming it, and must not cost anything that
was already registered.
"""

from __future__ import annotations

import base64
import json
import re
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import genesis_registry as gr
import pytest
from genesis_registry.localetcd import EtcdServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.scenario import Scenario
from support.wait import wait_until

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
#: etcd's default --max-request-bytes.
ETCD_REQUEST_LIMIT = 1536 * 1024


@pytest.fixture(scope="module")
def etcd() -> Iterator[EtcdServer]:
    with EtcdServer() as server:
        yield server


@pytest.fixture
def ns() -> str:
    return f"/hostile/{uuid.uuid4().hex[:12]}"


@pytest.fixture
def conn(etcd: EtcdServer) -> Iterator[gr.EtcdConnector]:
    with gr.EtcdConnector(gr.EtcdConfig(endpoints=etcd.endpoints, dial_timeout=5)) as connector:
        yield connector


@pytest.fixture
def reg(conn: gr.EtcdConnector, ns: str) -> Iterator[gr.Registry]:
    with gr.Registry(conn, gr.Config(namespace=ns, default_ttl=10, retry_interval=0.1)) as registry:
        yield registry


def gateway(etcd: EtcdServer, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """A call to etcd's JSON gateway (much quicker than starting etcdctl for each example)."""
    request = urllib.request.Request(etcd.client_url + path, data=json.dumps(body).encode(), method="POST")
    with _OPENER.open(request, timeout=10) as response:
        return dict(json.loads(response.read()))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def every_key(etcd: EtcdServer) -> set[bytes]:
    """Every key in etcd, as raw bytes."""
    reply = gateway(etcd, "/v3/kv/range", {"key": b64(b"\0"), "range_end": b64(b"\0"), "keys_only": True})
    return {base64.b64decode(kv["key"]) for kv in reply.get("kvs", [])}


def put_raw(etcd: EtcdServer, key: str, value: bytes) -> None:
    gateway(etcd, "/v3/kv/put", {"key": b64(key.encode()), "value": b64(value)})


def lease_count(etcd: EtcdServer) -> int:
    return len(gateway(etcd, "/v3/lease/leases", {}).get("leases", []))


def keys_under(etcd: EtcdServer, ns: str) -> set[bytes]:
    """Keys in etcd under ``ns/``; the assertion is that there are no others."""
    keys = every_key(etcd)
    outside = {k for k in keys if not k.startswith(ns.encode() + b"/")}
    assert not outside, f"keys outside {ns}/: {sorted(outside)[:5]}"
    return keys


def key(ns: str, name: str, id: str) -> bytes:
    return f"{ns}/{name}/{id}".encode()


def ok(id: str, name: str = "svc", **kw: Any) -> gr.ServiceInstance:
    return gr.ServiceInstance(id=id, name=name, endpoints=["grpc://127.0.0.1:9000"], **kw)


HOSTILE_SEGMENTS = [
    "a/b",
    "../../etc/passwd",
    "..",
    ".",
    "/",
    "",
    "a\x00b",
    "\x00",
    "a\nb",
    "\x1b[31mred",
    "tab\there",
    "\x7f",
    "\x85",
    "x" * 513,
    "\ud800",
    "\udcff",
    "a\ud83d",
]


@pytest.mark.timeout(120)
def test_hostile_ids_and_names_are_refused_naming_the_field(
    etcd: EtcdServer, reg: gr.Registry, ns: str, scenario: Scenario
) -> None:
    reg.register(ok("kept"))
    expected = {key(ns, "svc", "kept")}
    refused = []
    scenario.inject(
        f"{len(HOSTILE_SEGMENTS)} hostile values as id, then as name: /, .., NUL, controls, 513 bytes, surrogates"
    )
    for field in ("id", "name"):
        for value in HOSTILE_SEGMENTS:
            fields = {"id": "x", "name": "svc", field: value}
            with pytest.raises(gr.InvalidServiceInstanceError) as info:
                reg.register(ok(**fields))
            message = str(info.value)
            if field not in message:
                refused.append((field, value, message))
            scenario_keys = keys_under(etcd, ns)
            if scenario_keys != expected:
                refused.append((field, value, f"keys now {sorted(scenario_keys)}"))
    scenario.check("refusals not naming the field, or keys changed", expected=[], seen=refused)
    scenario.check("registered ids", expected=["kept"], seen=reg.registered_ids())
    scenario.check("kept instance discovered", expected=["kept"], seen=[i.id for i in reg.get_service("svc")])


HOSTILE_ENDPOINTS = [
    "grpc://h:1/../../x",
    "h:1/path",
    "../h:1",
    "h/../..:1",
    "http://h:1",
    "dns:///h:1",
    "user@h:1",
    "h:1\x00",
    "h:1\n",
    " h:1",
    "h:0",
    "h:65536",
    "h:-1",
    "[::1:1",
    "\ud800:1",
    "x" * 300 + ":1",
    "",
]


@pytest.mark.timeout(60)
def test_hostile_endpoints_are_refused_naming_the_endpoint(
    etcd: EtcdServer, reg: gr.Registry, ns: str, scenario: Scenario
) -> None:
    reg.register(ok("kept"))
    scenario.inject(f"{len(HOSTILE_ENDPOINTS)} hostile endpoints: paths, .., schemes, NUL, bad ports, surrogates")
    unclear = []
    for endpoint in HOSTILE_ENDPOINTS:
        with pytest.raises(gr.InvalidServiceInstanceError) as info:
            reg.register(gr.ServiceInstance(id="e", name="svc", endpoints=["grpc://127.0.0.1:1", endpoint]))
        if "endpoint" not in str(info.value):
            unclear.append((endpoint, str(info.value)))
    scenario.check("refusals not naming the endpoint", expected=[], seen=unclear)
    scenario.check("keys in etcd", expected={key(ns, "svc", "kept")}, seen=keys_under(etcd, ns))


@pytest.mark.timeout(60)
def test_hostile_metadata_and_version_stay_inside_the_value(
    etcd: EtcdServer, reg: gr.Registry, ns: str, scenario: Scenario
) -> None:
    hostile = {
        "../../x": "/etc/passwd",
        "a/b": "..",
        "nul\x00key": "nul\x00value",
        "ctl\x1b": "\n\r\t\x7f",
        "\u2028": "<script>&",
        "": "",
        "é": "ü" * 1000,
    }
    scenario.inject(f"metadata and version with /, .., NUL, controls, HTML, empty and long strings: {sorted(hostile)}")
    reg.register(ok("m", version="../\x00\n", metadata=hostile))
    scenario.check("keys in etcd", expected={key(ns, "svc", "m")}, seen=keys_under(etcd, ns))
    (seen,) = reg.get_service("svc")
    scenario.check("metadata read back", expected=hostile, seen=dict(seen.metadata))
    scenario.check("version read back", expected="../\x00\n", seen=seen.version)
    with pytest.raises((gr.InvalidServiceInstanceError, TypeError)) as info:
        ok("m2", metadata={"k": "\ud800"})
    scenario.check(
        "lone surrogate in metadata refused, naming metadata", expected=True, seen="metadata" in str(info.value)
    )


# Refused for safety. Empty segments ("/", "/a//b", a trailing "/") are not hostile: Go writes
# them as configured, and so does this library (tests/integration/test_namespaces.py).
HOSTILE_NAMESPACES = ["/a\x00b", "/a\nb", "/a/../b", "/a/./b", "..", "/ns/..", "/\ud800"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("namespace", HOSTILE_NAMESPACES)
def test_hostile_namespaces_are_refused_naming_the_namespace(
    etcd: EtcdServer, conn: gr.EtcdConnector, namespace: str, scenario: Scenario
) -> None:
    scenario.inject(f"namespace {namespace!r}")
    before = every_key(etcd)
    with pytest.raises(gr.InvalidConfigError) as info:
        gr.Config(namespace=namespace)  # refused at Config time, before any registry exists
    message = str(info.value)
    printable = [part for part in re.split(r"[\x00-\x1f\ud800-\udfff]", namespace) if part]
    scenario.check(
        "error names the namespace",
        expected=True,
        seen="namespace" in message and all(part in message for part in printable),
    )
    scenario.check("keys in etcd unchanged", expected=before, seen=every_key(etcd))


@pytest.mark.timeout(60)
def test_oversized_instances_are_refused_before_reaching_etcd(
    etcd: EtcdServer, reg: gr.Registry, ns: str, scenario: Scenario
) -> None:
    reg.register(ok("kept"))
    leases = lease_count(etcd)
    big = "v" * (ETCD_REQUEST_LIMIT + 1)
    scenario.inject("a 1.5 MiB metadata value; a 1.5 MiB version; 2 x 1 MiB instances in one register_many")
    for label, instance in (
        ("metadata", ok("big-meta", metadata={"blob": big})),
        ("version", ok("big-version", version=big)),
    ):
        with pytest.raises(gr.InvalidServiceInstanceError) as info:
            reg.register(instance)
        message = str(info.value)
        scenario.check(f"{label}: error names the id and the size", expected=True,
                       seen=instance.id in message and "bytes" in message)  # fmt: skip
    scenario.check("no lease granted for them", expected=leases, seen=lease_count(etcd))

    # Each fits, together they are twice etcd's limit: a transaction must not carry both.
    half = "h" * (1024 * 1024)
    pair = [ok("half-1", metadata={"blob": half}), ok("half-2", metadata={"blob": half})]
    reg.register_many(pair)
    expected = {key(ns, "svc", i) for i in ("kept", "half-1", "half-2")}
    scenario.check("keys in etcd", expected=expected, seen=keys_under(etcd, ns))
    scenario.check("registered ids", expected=["half-1", "half-2", "kept"], seen=reg.registered_ids())


@pytest.mark.timeout(60)
def test_an_etcd_with_a_smaller_request_limit_refuses_clearly(ns: str, scenario: Scenario) -> None:
    scenario.inject("etcd --max-request-bytes 65536; register a 100 KB instance after a small one")
    with (
        EtcdServer(extra_args=["--max-request-bytes", "65536"]) as small,
        gr.EtcdConnector(gr.EtcdConfig(endpoints=small.endpoints)) as conn,
        gr.Registry(conn, gr.Config(namespace=ns)) as reg,
    ):
        reg.register(ok("kept"))
        with pytest.raises(gr.RegistryError) as info:
            reg.register(ok("big", metadata={"blob": "b" * 100_000}))
        message = str(info.value)
        scenario.note("error", f"{type(info.value).__name__}: {message}")
        scenario.check("error says the request is too large", expected=True, seen="too large" in message)
        scenario.check("keys in etcd", expected={key(ns, "svc", "kept")}, seen=keys_under(small, ns))
        scenario.check("registered ids", expected=["kept"], seen=reg.registered_ids())


# --------------------------------------------------------------------------
# Property-based
# --------------------------------------------------------------------------

any_text = st.text(max_size=40) | st.sampled_from(HOSTILE_SEGMENTS)
# Half plausible, half anything: both registrations and refusals get exercised.
segments = st.from_regex(r"[A-Za-z0-9._~-]{1,30}", fullmatch=True) | any_text
good_endpoints = st.sampled_from(["grpc://127.0.0.1:9000", "h:1", "[::1]:80", "a.b-c_d:65535"])
endpoints = st.lists(good_endpoints, min_size=1, max_size=3) | st.lists(
    good_endpoints | st.text(max_size=20), max_size=3
)


@pytest.mark.timeout(300)
def test_property_registration_writes_only_its_own_key_or_refuses_clearly(
    etcd: EtcdServer, reg: gr.Registry, ns: str, scenario: Scenario
) -> None:
    scenario.inject("hypothesis: 150 instances with arbitrary id, name, version, metadata and endpoints")
    outcomes = {"registered": 0, "refused": 0}
    registered: set[bytes] = set()

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(
        id=segments,
        name=segments,
        version=any_text,
        metadata=st.dictionaries(any_text, any_text, max_size=3),
        endpoints=endpoints,
    )
    def attempt(id: str, name: str, version: str, metadata: dict[str, str], endpoints: list[str]) -> None:
        try:
            instance = gr.ServiceInstance(id=id, name=name, version=version, metadata=metadata, endpoints=endpoints)
        except gr.InvalidServiceInstanceError as exc:
            assert "valid Unicode" in str(exc), exc
            outcomes["refused"] += 1
            return
        try:
            reg.register(instance)
        except gr.InvalidServiceInstanceError as exc:
            assert str(exc), "an empty error message"
            outcomes["refused"] += 1
        except gr.ServiceAlreadyRegisteredError:
            return
        else:
            outcomes["registered"] += 1
            registered.add(key(ns, name, id))
            # The cache follows etcd's watch: it shows the write soon, not at once.
            wait_until(lambda: instance in reg.get_service(name), 10, f"{instance!r} discovered")
        assert keys_under(etcd, ns) == registered

    attempt()
    scenario.note("outcomes", outcomes)
    scenario.check("keys in etcd are the registered ones", expected=registered, seen=keys_under(etcd, ns))


# A JSON value of any shape, nested a few levels.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=10,
)
field_names = st.sampled_from(["id", "name", "version", "metadata", "endpoints", "ID", "Name", "extra"])
instance_like = st.dictionaries(field_names, json_values, max_size=5).map(lambda d: json.dumps(d).encode())
foreign_values = st.one_of(
    st.binary(max_size=64),
    json_values.map(lambda v: json.dumps(v).encode()),
    instance_like,
    st.integers(1, 20_000).map(lambda depth: b"[" * depth + b"]" * depth),
    # Well-formed values, some of them at odds with their key (another id or service).
    st.builds(
        lambda id, name, version, metadata: ok(id, name=name, version=version, metadata=metadata).to_json(),
        st.sampled_from(["f", "f", "other-id"]),
        st.sampled_from(["svc", "svc", "other-svc"]),
        st.text(max_size=10),
        st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2),
    ),
)


def acceptable(instance: gr.ServiceInstance, id: str) -> bool:
    """What a cache of service ``svc`` may hold at key ``.../svc/<id>``: the key's id, and the
    key's service or no name at all (missing fields are tolerated, as Go's decoder does)."""
    return instance.id == id and instance.name in ("svc", "")


@pytest.mark.timeout(300)
def test_property_foreign_values_never_reach_the_cache_malformed(
    etcd: EtcdServer, reg: gr.Registry, ns: str, scenario: Scenario
) -> None:
    scenario.inject("hypothesis: 120 foreign values put at <ns>/svc/f: random bytes, JSON of any shape, deep nesting")
    watch = reg.watch("svc")
    counts = {"sentinels": 0, "malformed": 0, "well-formed": 0}

    @settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(value=foreign_values)
    def attempt(value: bytes) -> None:
        before = reg.stats()["malformed_values"]
        put_raw(etcd, f"{ns}/svc/f", value)
        # A valid write after it: once the watch shows it, the foreign value was handled.
        counts["sentinels"] += 1
        sentinel = f"sentinel-{counts['sentinels']}"
        reg_sentinel = ok(sentinel).to_json()
        put_raw(etcd, f"{ns}/svc/{sentinel}", reg_sentinel)
        while True:
            event = watch.get(10)
            assert event is not None
            if event.type is gr.EventType.PUT:
                assert acceptable(event.service, event.service.id), event
            if event.service.id == sentinel:
                break
        instances = {i.id: i for i in reg.get_service("svc")}
        assert all(acceptable(i, id) for id, i in instances.items()), instances
        try:
            decoded = gr.ServiceInstance.from_json(value)
            well_formed = acceptable(decoded, "f")
        except gr.InvalidServiceInstanceError:
            well_formed = False
        malformed = reg.stats()["malformed_values"] - before
        assert malformed == (0 if well_formed else 1), (value[:200], malformed)
        assert ("f" in instances) == well_formed, (value[:200], instances.get("f"))
        counts["malformed"] += malformed
        counts["well-formed"] += well_formed
        keys_under(etcd, ns)

    try:
        attempt()
        watch.close()
        scenario.note("counts", counts)
        instances = reg.get_service("svc")
        scenario.check(
            "instances cached at the end",
            expected=True,
            seen=len(instances) == counts["sentinels"] + ("f" in {i.id for i in instances}),
        )
        scenario.check("cache holds only acceptable instances", expected=True,
                       seen=all(acceptable(i, i.id) for i in instances))  # fmt: skip
        scenario.check("malformed values counted", expected=True, seen=counts["malformed"] > 0)
    finally:
        # Written without a lease: they would outlive the test and show up in the others' key lists.
        prefix = f"{ns}/".encode()
        gateway(etcd, "/v3/kv/deleterange", {"key": b64(prefix), "range_end": b64(prefix[:-1] + b"0")})


@pytest.mark.timeout(60)
def test_large_registrations_are_restored_together_after_a_lost_lease(
    etcd: EtcdServer, reg: gr.Registry, ns: str, scenario: Scenario
) -> None:
    half = "h" * (1024 * 1024)
    reg.register(ok("big-1", metadata={"blob": half}))
    reg.register(ok("big-2", metadata={"blob": half}))
    keys = {key(ns, "svc", "big-1"), key(ns, "svc", "big-2")}
    leases = {kv["lease"] for kv in gateway(etcd, "/v3/kv/range", {"key": b64(key(ns, "svc", "big-1"))})["kvs"]}
    (lease,) = leases
    scenario.inject(f"two 1 MiB instances on one lease; the lease revoked behind the registry's back ({lease})")
    gateway(etcd, "/v3/lease/revoke", {"ID": lease})

    def restored() -> bool:
        return keys_under(etcd, ns) == keys

    wait_until(lambda: reg.stats()["lease_recoveries"] >= 1 and restored(), 30, "both instances written back")
    scenario.check("keys in etcd", expected=keys, seen=keys_under(etcd, ns))
    scenario.check("registered ids", expected=["big-1", "big-2"], seen=reg.registered_ids())
