"""The data model: ServiceInstance (from the Rust core), EventType, ServiceEvent.

No etcd is needed: everything here is construction, validation and the JSON codec
that must stay byte-compatible with the Go services sharing the keys.
"""

from __future__ import annotations

import collections.abc
import copy
import dataclasses
import json
import pickle
import random
import types
from typing import Any

import genesis_registry as gr
import pytest

S = gr.ServiceInstance


def seed_instance() -> gr.ServiceInstance:
    """The seed's example instance (metadata given unsorted on purpose)."""
    return S(
        id="user-service-001",
        name="user-service",
        version="1.0.0",
        metadata={"region": "us-west-1", "zone": "zone-a", "weight": "100"},
        endpoints=["grpc://192.168.1.100:8080"],
    )


# ---------------------------------------------------------------------------
# Construction
# ---------------------------------------------------------------------------


def test_construct_positionally() -> None:
    inst = S("a", "svc", "1.2", {"k": "v"}, ["h:1", "g:2"])
    assert inst.id == "a"
    assert inst.name == "svc"
    assert inst.version == "1.2"
    assert dict(inst.metadata) == {"k": "v"}
    assert inst.endpoints == ("h:1", "g:2")


def test_construct_by_keyword_in_any_order() -> None:
    inst = S(endpoints=["h:1"], metadata={"k": "v"}, version="1.2", name="svc", id="a")
    assert inst == S("a", "svc", "1.2", {"k": "v"}, ["h:1"])


def test_defaults() -> None:
    inst = S(id="a", name="svc")
    assert inst.version == ""
    assert dict(inst.metadata) == {}
    assert len(inst.metadata) == 0
    assert inst.endpoints == ()
    assert type(inst.endpoints) is tuple


def test_none_means_default_for_optional_fields() -> None:
    assert S("a", "svc", None, None, None) == S("a", "svc")


def test_accepts_any_mapping_and_iterable() -> None:
    inst = S(
        "a",
        "svc",
        metadata=types.MappingProxyType({"k": "v"}),
        endpoints=(e for e in ["h:1", "h:2"]),
    )
    assert dict(inst.metadata) == {"k": "v"}
    assert inst.endpoints == ("h:1", "h:2")


def test_id_and_name_are_required() -> None:
    with pytest.raises(TypeError):
        S()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        S("a")  # type: ignore[call-arg]


def test_unknown_keyword_is_refused() -> None:
    with pytest.raises(TypeError, match="bogus"):
        S("a", "svc", bogus=1)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("kwargs", "must_mention"),
    [
        pytest.param(dict(id=None, name="svc"), ["id", "NoneType", "None"], id="id-None"),
        pytest.param(dict(id=42, name="svc"), ["id", "int", "42"], id="id-int"),
        pytest.param(dict(id="a", name=None), ["name", "NoneType", "None"], id="name-None"),
        pytest.param(dict(id="a", name=b"svc"), ["name", "bytes", "b'svc'"], id="name-bytes"),
        pytest.param(dict(id="a", name="svc", version=1.5), ["version", "float", "1.5"], id="version-float"),
        pytest.param(
            dict(id="a", name="svc", metadata={"weight": 100}),
            ['metadata["weight"]', "int", "100"],
            id="metadata-value-int",
        ),
        pytest.param(dict(id="a", name="svc", metadata={7: "v"}), ["metadata keys", "int", "7"], id="metadata-key-int"),
        pytest.param(
            dict(id="a", name="svc", metadata=[("k", "v")]), ["metadata", "mapping", "list"], id="metadata-list"
        ),
        pytest.param(
            dict(id="a", name="svc", endpoints="grpc://h:1"),
            ["endpoints", "str", "'grpc://h:1'"],
            id="endpoints-bare-str",
        ),
        pytest.param(
            dict(id="a", name="svc", endpoints=b"h:1"), ["endpoints", "bytes", "b'h:1'"], id="endpoints-bytes"
        ),
        pytest.param(dict(id="a", name="svc", endpoints=[9001]), ["endpoint", "int", "9001"], id="endpoint-int"),
        pytest.param(dict(id="a", name="svc", endpoints=5), ["endpoints", "int"], id="endpoints-int"),
    ],
)
def test_type_errors_name_the_bad_value(kwargs: dict[str, Any], must_mention: list[str]) -> None:
    with pytest.raises(TypeError) as excinfo:
        S(**kwargs)
    message = str(excinfo.value)
    for part in must_mention:
        assert part in message, f"{part!r} not in {message!r}"


def test_unencodable_str_gets_an_accurate_message() -> None:
    with pytest.raises((TypeError, ValueError)) as excinfo:
        S("\ud800", "svc")
    message = str(excinfo.value)
    assert "\\ud800" in message
    assert "not str (" not in message, message


# ---------------------------------------------------------------------------
# Immutability, hashing, equality, ordering
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("attribute", ["id", "name", "version", "metadata", "endpoints"])
def test_attributes_cannot_be_set_or_deleted(attribute: str) -> None:
    inst = seed_instance()
    before = getattr(inst, attribute)
    with pytest.raises(AttributeError):
        setattr(inst, attribute, before)
    with pytest.raises(AttributeError):
        delattr(inst, attribute)
    assert getattr(inst, attribute) == before


def test_no_new_attributes() -> None:
    inst = seed_instance()
    with pytest.raises(AttributeError):
        inst.extra = 1  # type: ignore[attr-defined]
    assert not hasattr(inst, "extra")


def test_metadata_is_a_read_only_mapping() -> None:
    inst = seed_instance()
    metadata = inst.metadata
    assert isinstance(metadata, collections.abc.Mapping)
    assert not isinstance(metadata, collections.abc.MutableMapping)
    with pytest.raises(TypeError):
        metadata["region"] = "eu-central-1"  # type: ignore[index]
    with pytest.raises(TypeError):
        metadata["new"] = "x"  # type: ignore[index]
    with pytest.raises(TypeError):
        del metadata["zone"]  # type: ignore[attr-defined]
    assert dict(inst.metadata) == {"region": "us-west-1", "weight": "100", "zone": "zone-a"}


def test_metadata_is_sorted_by_key() -> None:
    assert list(seed_instance().metadata) == ["region", "weight", "zone"]


def test_endpoints_is_a_tuple() -> None:
    inst = S("a", "svc", endpoints=["h:1", "h:2"])
    assert type(inst.endpoints) is tuple
    with pytest.raises(TypeError):
        inst.endpoints[0] = "x"  # type: ignore[index]


def test_later_changes_to_the_arguments_do_not_leak_in() -> None:
    metadata = {"k": "v"}
    endpoints = ["h:1"]
    inst = S("a", "svc", metadata=metadata, endpoints=endpoints)
    metadata["k"] = "changed"
    metadata["added"] = "x"
    endpoints.append("h:2")
    assert dict(inst.metadata) == {"k": "v"}
    assert inst.endpoints == ("h:1",)


def test_equality_is_by_value() -> None:
    a = S("a", "svc", "1", {"x": "1", "y": "2"}, ["h:1"])
    b = S("a", "svc", "1", {"y": "2", "x": "1"}, ("h:1",))
    assert a is not b
    assert a == b
    assert not (a != b)


@pytest.mark.parametrize(
    "changes",
    [
        dict(id="b"),
        dict(name="other"),
        dict(version="2"),
        dict(metadata={"x": "1"}),
        dict(metadata={"x": "1", "y": "3"}),
        dict(endpoints=["h:2"]),
        dict(endpoints=["h:1", "h:1"]),
    ],
)
def test_any_differing_field_makes_instances_unequal(changes: dict[str, Any]) -> None:
    base = S("a", "svc", "1", {"x": "1", "y": "2"}, ["h:1"])
    other = base.replace(**changes)
    assert base != other
    assert not (base == other)


def test_endpoint_order_matters() -> None:
    assert S("a", "s", endpoints=["h:1", "h:2"]) != S("a", "s", endpoints=["h:2", "h:1"])


def test_not_equal_to_other_types() -> None:
    inst = S("a", "svc")
    assert inst != "a"
    assert not (inst == ("a", "svc"))
    assert inst != inst.to_dict()


def test_hashable_and_usable_in_sets_and_as_dict_keys() -> None:
    a = S("a", "svc", "1", {"x": "1", "y": "2"}, ["h:1"])
    same = S("a", "svc", "1", {"y": "2", "x": "1"}, ["h:1"])
    other = a.replace(id="b")
    assert hash(a) == hash(same)
    assert len({a, same, other}) == 2
    table = {a: "first"}
    assert table[same] == "first"
    assert other not in table


def test_sorted_orders_by_id_first() -> None:
    # The names would sort the other way round: id must win.
    c = S("c", "a-service")
    a = S("a", "z-service")
    b = S("b", "m-service")
    assert sorted([c, a, b]) == [a, b, c]
    assert [i.id for i in sorted([b, c, a], reverse=True)] == ["c", "b", "a"]


def test_ordering_breaks_id_ties_with_the_other_fields() -> None:
    x = S("a", "svc-1")
    y = S("a", "svc-2")
    assert x < y and y > x and x <= y and y >= x
    assert not (y < x)
    z = S("a", "svc-1", "2")
    assert x < z
    assert x <= x and x >= x and not (x < x)


def test_ordering_against_other_types_raises() -> None:
    with pytest.raises(TypeError):
        _ = S("a", "svc") < 1  # type: ignore[operator]
    with pytest.raises(TypeError):
        sorted([S("a", "svc"), "b"])  # type: ignore[type-var]


# ---------------------------------------------------------------------------
# pickle, copy, replace, to_dict, repr
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_pickle_round_trip(protocol: int) -> None:
    original = seed_instance()
    restored = pickle.loads(pickle.dumps(original, protocol=protocol))
    assert type(restored) is S
    assert restored == original
    assert restored.to_json() == original.to_json()
    assert list(restored.metadata.items()) == list(original.metadata.items())
    assert restored.endpoints == original.endpoints


def test_pickle_inside_containers() -> None:
    data = {"instances": [seed_instance(), S("b", "svc")], "set": {S("c", "svc")}}
    assert pickle.loads(pickle.dumps(data)) == data


def test_copy_and_deepcopy() -> None:
    original = seed_instance()
    assert copy.copy(original) == original
    assert copy.deepcopy(original) == original
    nested = {"x": [original, (original,)]}
    deep = copy.deepcopy(nested)
    assert deep == nested
    assert deep["x"] is not nested["x"]


def test_replace_changes_only_the_given_fields() -> None:
    original = seed_instance()
    changed = original.replace(version="2.0.0", endpoints=["grpc://10.0.0.1:9000"])
    assert changed.version == "2.0.0"
    assert changed.endpoints == ("grpc://10.0.0.1:9000",)
    assert (changed.id, changed.name, dict(changed.metadata)) == (
        original.id,
        original.name,
        dict(original.metadata),
    )
    # The original is untouched.
    assert original == seed_instance()


def test_replace_every_field() -> None:
    changed = seed_instance().replace(id="i", name="n", version="v", metadata={"k": "v"}, endpoints=["h:1"])
    assert changed == S("i", "n", "v", {"k": "v"}, ["h:1"])


def test_replace_with_nothing_gives_an_equal_instance() -> None:
    assert seed_instance().replace() == seed_instance()


def test_replace_none_keeps_and_empty_clears() -> None:
    original = seed_instance()
    assert original.replace(id=None, name=None, version=None, metadata=None, endpoints=None) == original
    cleared = original.replace(version="", metadata={}, endpoints=[])
    assert cleared.version == ""
    assert dict(cleared.metadata) == {}
    assert cleared.endpoints == ()


def test_replace_is_keyword_only_and_type_checked() -> None:
    original = seed_instance()
    with pytest.raises(TypeError):
        original.replace("other-id")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match=r"id must be a str, not int \(1\)"):
        original.replace(id=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"metadata\[\"k\"\] must be a str, not int \(5\)"):
        original.replace(metadata={"k": 5})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="single str"):
        original.replace(endpoints="h:1")
    with pytest.raises(TypeError, match="bogus"):
        original.replace(bogus="x")  # type: ignore[call-arg]


def test_to_dict() -> None:
    d = seed_instance().to_dict()
    assert d == {
        "id": "user-service-001",
        "name": "user-service",
        "version": "1.0.0",
        "metadata": {"region": "us-west-1", "weight": "100", "zone": "zone-a"},
        "endpoints": ["grpc://192.168.1.100:8080"],
    }
    assert type(d) is dict
    assert type(d["metadata"]) is dict
    assert type(d["endpoints"]) is list
    assert json.loads(json.dumps(d)) == d


def test_to_dict_is_a_copy() -> None:
    inst = seed_instance()
    d = inst.to_dict()
    d["metadata"]["region"] = "changed"
    d["endpoints"].append("h:2")
    assert inst == seed_instance()


def test_to_dict_of_a_bare_instance() -> None:
    assert S("a", "s").to_dict() == {"id": "a", "name": "s", "version": "", "metadata": {}, "endpoints": []}


def test_repr_shows_every_field() -> None:
    assert repr(seed_instance()) == (
        "ServiceInstance(id='user-service-001', name='user-service', version='1.0.0', "
        "metadata={'region': 'us-west-1', 'weight': '100', 'zone': 'zone-a'}, "
        "endpoints=('grpc://192.168.1.100:8080',))"
    )
    assert repr(S("a", "s")) == "ServiceInstance(id='a', name='s', version='', metadata={}, endpoints=())"


def test_repr_evaluates_back_to_an_equal_instance() -> None:
    tricky = S("it's", 'say "hi"', "\\", {"k\n": "\u2028"}, ["h:1", "é:2"])
    assert eval(repr(tricky), {"ServiceInstance": S}) == tricky


# ---------------------------------------------------------------------------
# validate()
# ---------------------------------------------------------------------------


def assert_invalid(inst: gr.ServiceInstance, *must_mention: str) -> str:
    with pytest.raises(gr.InvalidServiceInstanceError) as excinfo:
        inst.validate()
    message = str(excinfo.value)
    for part in must_mention:
        assert part in message, f"{part!r} not in {message!r}"
    return message


def test_invalid_instance_error_is_a_registry_and_value_error() -> None:
    assert issubclass(gr.InvalidServiceInstanceError, gr.RegistryError)
    assert issubclass(gr.InvalidServiceInstanceError, ValueError)


def test_validate_accepts_the_seed_instance() -> None:
    seed_instance().validate()  # does not raise


@pytest.mark.parametrize(
    "endpoint",
    [
        "grpc://127.0.0.1:9001",
        "127.0.0.1:9001",
        "[::1]:80",
        "grpc://[::1]:80",
        "[2001:db8::8a2e:370:7334]:443",
        "localhost:1",
        "h:65535",
        "user-service.default.svc.cluster.local:50051",
        "my_host.example:443",
        "example.com.:443",
    ],
)
def test_validate_accepts_endpoint(endpoint: str) -> None:
    S("a", "svc", endpoints=[endpoint]).validate()  # does not raise


@pytest.mark.parametrize(
    ("endpoint", "problem"),
    [
        ("http://h:1", "unsupported scheme"),
        ("https://h:1", "unsupported scheme"),
        ("dns:///h:1", "unsupported scheme"),
        ("h", "no port"),
        ("grpc://h", "no port"),
        ("h:0", "invalid port"),
        ("h:65536", "invalid port"),
        ("h:port", "invalid port"),
        (":80", "no host"),
        ("::1:80", "without brackets"),
        ("h:80/path", "without a path"),
        ("h 1:80", "whitespace"),
        ("", "must not be empty"),
    ],
)
def test_validate_refuses_endpoint_naming_it(endpoint: str, problem: str) -> None:
    message = assert_invalid(S("a", "svc", endpoints=["grpc://ok:1", endpoint]), f'"{endpoint}"', problem)
    assert '"grpc://ok:1"' not in message


def test_validate_refuses_empty_id() -> None:
    assert_invalid(S("", "svc", endpoints=["h:1"]), "id must not be empty", '(got "")')


def test_validate_refuses_id_with_slash() -> None:
    assert_invalid(S("a/b", "svc", endpoints=["h:1"]), "id must not contain '/'", '"a/b"')


def test_validate_refuses_empty_name() -> None:
    assert_invalid(S("a", "", endpoints=["h:1"]), "name must not be empty", '(got "")')


def test_validate_refuses_name_with_slash() -> None:
    assert_invalid(S("a", "user/service", endpoints=["h:1"]), "name must not contain '/'", '"user/service"')


def test_validate_refuses_no_endpoints_naming_the_instance() -> None:
    assert_invalid(S("user-1", "svc"), "at least one endpoint", '"user-1"')


def test_validate_exact_message() -> None:
    with pytest.raises(gr.InvalidServiceInstanceError) as excinfo:
        S("a", "svc", endpoints=["http://h:1"]).validate()
    assert str(excinfo.value) == (
        'invalid service instance: endpoint "http://h:1" has an unsupported scheme: '
        "only grpc://host:port or a bare host:port is accepted"
    )


# ---------------------------------------------------------------------------
# to_json(): byte-identical to Go's json.Marshal
#
# The expected byte strings below are copied from the unit tests of
# rust/core/src/instance.rs (section "Encoding"), where each was produced by Go's
# encoding/json (json.Marshal of the seed's Go struct) and compared byte for byte.
# Go >= 1.22 writes \b and \f in their short forms (Go 1.19 wrote \u0008, \u000c).
# ---------------------------------------------------------------------------

GO_SEED = (
    b'{"id":"user-service-001","name":"user-service","version":"1.0.0",'
    b'"metadata":{"region":"us-west-1","weight":"100","zone":"zone-a"},'
    b'"endpoints":["grpc://192.168.1.100:8080"]}'
)
GO_SEED_NO_METADATA = (
    b'{"id":"user-service-001","name":"user-service","version":"1.0.0",'
    b'"metadata":null,"endpoints":["grpc://192.168.1.100:8080"]}'
)
GO_EMPTY = b'{"id":"","name":"","version":"","metadata":null,"endpoints":null}'

GO_VECTORS: list[tuple[str, gr.ServiceInstance, bytes]] = [
    ("seed", seed_instance(), GO_SEED),
    ("seed-without-metadata", seed_instance().replace(metadata={}), GO_SEED_NO_METADATA),
    ("empty", S("", ""), GO_EMPTY),
    (
        "html-escapes",
        S('<a href="x">&amp;</a>', "a&b", "<>"),
        rb'{"id":"\u003ca href=\"x\"\u003e\u0026amp;\u003c/a\u003e","name":"a\u0026b",'
        rb'"version":"\u003c\u003e","metadata":null,"endpoints":null}',
    ),
    (
        "quotes-and-backslashes",
        S(r'C:\path\"q"', "\\\\", '"'),
        rb'{"id":"C:\\path\\\"q\"","name":"\\\\","version":"\"","metadata":null,"endpoints":null}',
    ),
    (
        "control-characters-but-not-del-or-c1",
        S(
            "\x00\x01\x07\x08\t\n\x0b\x0c\r\x0e\x1b\x1f",
            "a\x7fb",
            "\u0080\u0085\u009f\u00a0",
        ),
        rb'{"id":"\u0000\u0001\u0007\b\t\n\u000b\f\r\u000e\u001b\u001f",'
        + '"name":"a\x7fb","version":"\u0080\u0085\u009f\u00a0",'.encode()
        + rb'"metadata":null,"endpoints":null}',
    ),
    (
        "line-separators-escaped-other-non-ascii-raw",
        S("\u2027\u2028\u2029\u202a", "line\u2028sep\u2029para", "\u20ac\u2000\ue280"),
        '{"id":"\u2027'.encode()
        + rb"\u2028\u2029"
        + '\u202a",'.encode()
        + rb'"name":"line\u2028sep\u2029para",'
        + '"version":"\u20ac\u2000\ue280",'.encode()
        + rb'"metadata":null,"endpoints":null}',
    ),
    (
        "non-ascii-raw-utf8",
        S("café", "中文服务", "😀\ufeff\ufffd\U0010ffff"),
        '{"id":"café","name":"中文服务","version":"😀\ufeff\ufffd\U0010ffff","metadata":null,"endpoints":null}'.encode(),
    ),
    (
        "metadata-keys-escaped-and-sorted-by-bytes",
        S(
            "m",
            "n",
            "v",
            {"<k>": "v&", 'a"b': "\\", "é": "中", "": "", "Z": "\n", "a": "\u2028"},
            ["[::1]:80", 'h"x', "", "<script>"],
        ),
        (
            r'{"id":"m","name":"n","version":"v","metadata":{"":"","\u003ck\u003e":"v\u0026",'
            r'"Z":"\n","a":"\u2028","a\"b":"\\","é":"中"},'
            r'"endpoints":["[::1]:80","h\"x","","\u003cscript\u003e"]}'
        ).encode(),
    ),
]


@pytest.mark.parametrize(("instance", "expected"), [v[1:] for v in GO_VECTORS], ids=[v[0] for v in GO_VECTORS])
def test_to_json_is_byte_identical_to_go(instance: gr.ServiceInstance, expected: bytes) -> None:
    encoded = instance.to_json()
    assert type(encoded) is bytes
    assert encoded == expected


def test_to_json_key_order_does_not_depend_on_insertion_order() -> None:
    a = S("a", "s", metadata={"z": "1", "a": "2", "m": "3"}, endpoints=["h:1"])
    b = S("a", "s", metadata={"m": "3", "a": "2", "z": "1"}, endpoints=["h:1"])
    assert (
        a.to_json()
        == b.to_json()
        == (b'{"id":"a","name":"s","version":"","metadata":{"a":"2","m":"3","z":"1"},"endpoints":["h:1"]}')
    )


# Go's encoder: \b \t \n \f \r in short form, every other byte below 0x20 as \u00xx
# (same rule as rust/core/src/instance.rs escapes_each_ascii_control_character_like_go).
GO_CONTROL_ESCAPES = {0x08: "\\b", 0x09: "\\t", 0x0A: "\\n", 0x0C: "\\f", 0x0D: "\\r"}


@pytest.mark.parametrize("code", range(0x20))
def test_to_json_escapes_each_ascii_control_character_like_go(code: int) -> None:
    escape = GO_CONTROL_ESCAPES.get(code, f"\\u{code:04x}")
    encoded = S(f"x{chr(code)}y", "s").to_json()
    assert encoded == f'{{"id":"x{escape}y","name":"s","version":"","metadata":null,"endpoints":null}}'.encode()


def test_to_json_is_valid_json_with_the_same_values() -> None:
    for _, instance, _ in GO_VECTORS:
        decoded = json.loads(instance.to_json())
        assert list(decoded) == ["id", "name", "version", "metadata", "endpoints"]
        assert decoded["id"] == instance.id
        assert decoded["name"] == instance.name
        assert decoded["version"] == instance.version
        assert decoded["metadata"] == (dict(instance.metadata) or None)
        assert decoded["endpoints"] == (list(instance.endpoints) or None)


# ---------------------------------------------------------------------------
# from_json(): tolerant like Go's json.Unmarshal (the decoding behaviours below are
# the ones rust/core/src/instance.rs documents as checked against Go)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(("instance", "encoded"), [v[1:] for v in GO_VECTORS], ids=[v[0] for v in GO_VECTORS])
def test_from_json_reads_what_go_wrote(instance: gr.ServiceInstance, encoded: bytes) -> None:
    assert S.from_json(encoded) == instance


def test_from_json_seed_value() -> None:
    decoded = S.from_json(GO_SEED)
    assert decoded == seed_instance()
    assert decoded.id == "user-service-001"
    assert dict(decoded.metadata) == {"region": "us-west-1", "weight": "100", "zone": "zone-a"}
    assert decoded.endpoints == ("grpc://192.168.1.100:8080",)


def test_from_json_accepts_str_and_other_bytes_types() -> None:
    assert S.from_json(GO_SEED.decode()) == seed_instance()
    assert S.from_json(bytearray(GO_SEED)) == seed_instance()
    assert S.from_json(memoryview(GO_SEED)) == seed_instance()
    assert S.from_json('{"id":"café","name":"中文"}') == S("café", "中文")


def test_from_json_refuses_other_argument_types() -> None:
    with pytest.raises(TypeError, match="bytes or str"):
        S.from_json(5)  # type: ignore[arg-type]


def test_from_json_ignores_unknown_fields_of_any_shape() -> None:
    data = (
        b'{"x":{"y":[1,2,{"z":null}]},"y":[{}],"z":1e999,"w":-0.5e-3,"v":true,"":"",'
        b'"id":"after-unknown","name":"svc","extra":{"nested":{"deeper":["a",{"b":null}]}},'
        b'"endpoints":["h:1"],"ttl":30}'
    )
    assert S.from_json(data) == S("after-unknown", "svc", endpoints=["h:1"])


def test_from_json_missing_fields_default() -> None:
    assert S.from_json(b'{"id":"a"}') == S("a", "")
    assert S.from_json(b"{}") == S("", "")
    assert S.from_json(b" { } ") == S("", "")


def test_from_json_null_fields_default() -> None:
    data = b'{"id":null,"name":null,"version":null,"metadata":null,"endpoints":null}'
    assert S.from_json(data) == S("", "")
    assert S.from_json(b"null") == S("", "")


def test_from_json_null_elements_become_empty_strings() -> None:
    assert dict(S.from_json(b'{"metadata":{"a":null}}').metadata) == {"a": ""}
    assert S.from_json(b'{"endpoints":["a",null,"b"]}').endpoints == ("a", "", "b")


def test_from_json_matches_field_names_case_insensitively() -> None:
    assert S.from_json(b'{"ID":"x","Endpoints":["h:1"]}') == S("x", "", endpoints=["h:1"])
    data = b'{"ID":"a","NAME":"b","Version":"c","MetaData":{"k":"v"},"EndPoints":["e"]}'
    assert S.from_json(data) == S("a", "b", "c", {"k": "v"}, ["e"])
    # Go folds U+017F (long s) to "s" as well; a later field wins.
    assert S.from_json('{"verſion":"1","endpointſ":["x"],"ENDPOINTſ":["y"]}') == S("", "", "1", endpoints=["y"])


def test_from_json_repeated_fields_apply_in_order() -> None:
    assert S.from_json(b'{"id":"a","ID":"b"}').id == "b"
    # null leaves a string as it was.
    assert S.from_json(b'{"id":"a","id":null}').id == "a"


def test_from_json_replaces_invalid_utf8_like_go() -> None:
    assert S.from_json(b'{"id":"bad\xff\xfeutf8"}').id == "bad\ufffd\ufffdutf8"


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"garbage", id="garbage"),
        pytest.param(b"{'id':'a'}", id="single-quotes"),
        pytest.param(b'{"id":"a"', id="truncated"),
        pytest.param(b'{"id":"a",}', id="trailing-comma"),
        pytest.param(b'{"id":"a"}garbage', id="trailing-garbage"),
        pytest.param(b"{}{}", id="two-objects"),
        pytest.param(b"[]", id="empty-array"),
        pytest.param(b'[{"id":"a"}]', id="array-of-object"),
        pytest.param(b"1", id="number"),
        pytest.param(b"-0.5", id="negative-number"),
        pytest.param(b'"x"', id="string"),
        pytest.param(b"true", id="bool"),
        pytest.param("\ufeff{}".encode(), id="bom"),
    ],
)
def test_from_json_refuses_malformed_values(data: bytes) -> None:
    with pytest.raises(gr.InvalidServiceInstanceError, match=r"^invalid service instance JSON: "):
        S.from_json(data)


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (b'{"id":5}', '"id"'),
        (b'{"id":true}', '"id"'),
        (b'{"id":{}}', '"id"'),
        (b'{"Name":1.5}', '"name"'),
        (b'{"version":false}', '"version"'),
        (b'{"metadata":[]}', '"metadata"'),
        (b'{"metadata":"x"}', '"metadata"'),
        (b'{"metadata":{"a":5}}', '"metadata" value'),
        (b'{"endpoints":{}}', '"endpoints"'),
        (b'{"endpoints":"x"}', '"endpoints"'),
        (b'{"endpoints":[5]}', '"endpoints" element'),
    ],
)
def test_from_json_refuses_wrong_field_types_naming_the_field(data: bytes, field: str) -> None:
    with pytest.raises(gr.InvalidServiceInstanceError) as excinfo:
        S.from_json(data)
    assert field in str(excinfo.value)


def test_from_json_error_is_also_a_value_error() -> None:
    with pytest.raises(ValueError):
        S.from_json(b"[]")


def test_from_json_str_with_lone_surrogate() -> None:
    try:
        decoded = S.from_json('{"id":"\ud800"}')
    except gr.InvalidServiceInstanceError:
        return
    assert decoded.id == "\ufffd"


def test_from_json_does_not_validate() -> None:
    # A Go peer's odd value must still be readable; validate() is separate.
    odd = S.from_json(b'{"id":"a/b","name":"..","endpoints":["http://x"]}')
    assert odd.id == "a/b"
    with pytest.raises(gr.InvalidServiceInstanceError):
        odd.validate()


# Pieces of strings that exercise every escaping rule (no lone surrogates: a Python
# str holding one is not valid UTF-8 and cannot become an instance).
PIECES = [
    "a", "Z", "0", "-", "/", ":", " ", '"', "\\", "<", ">", "&", "\x00", "\x08", "\x0c",
    "\n", "\r", "\t", "\x1f", "\x7f", "\x85", "é", "中", "😀", "\u2028", "\u2029",
    "\u202a", "\ufffd", "\\u", "ud800", "\u017f", "\U0010ffff",
]  # fmt: skip


def varied_instances() -> list[gr.ServiceInstance]:
    rng = random.Random(0x2545F4914F6CDD1D)

    def text() -> str:
        return "".join(rng.choice(PIECES) for _ in range(rng.randrange(10)))

    fixed = [
        seed_instance(),
        seed_instance().replace(metadata={}),
        S("", ""),
        S("", "", "", {"": ""}, [""]),
        S("\x00", "\u2028", "\\ud800", {"\x7f": "<>&"}, ['"', "\\"]),
        *(v[1] for v in GO_VECTORS),
    ]
    generated = [
        S(
            text(),
            text(),
            text(),
            {text(): text() for _ in range(rng.randrange(4))},
            [text() for _ in range(rng.randrange(4))],
        )
        for _ in range(500)
    ]
    return fixed + generated


def test_round_trip_over_varied_instances() -> None:
    instances = varied_instances()
    assert len(set(instances)) > 400  # the generator really varies
    for original in instances:
        encoded = original.to_json()
        assert S.from_json(encoded) == original, encoded
        assert S.from_json(encoded.decode("utf-8")) == original, encoded
        # An independent decoder reads the same strings back.
        decoded = json.loads(encoded)
        assert decoded["id"] == original.id
        assert decoded["version"] == original.version
        assert (decoded["metadata"] or {}) == dict(original.metadata)


# ---------------------------------------------------------------------------
# EventType, ServiceEvent
# ---------------------------------------------------------------------------


def test_event_type_is_str_valued() -> None:
    assert gr.EventType.PUT == "PUT"
    assert gr.EventType.DELETE == "DELETE"
    assert gr.EventType.PUT != "DELETE"  # type: ignore[comparison-overlap]
    assert isinstance(gr.EventType.PUT, str)
    assert str(gr.EventType.PUT) == "PUT"
    assert f"{gr.EventType.DELETE}" == "DELETE"
    assert json.dumps(gr.EventType.PUT) == '"PUT"'


def test_event_type_members_and_lookup() -> None:
    assert [t.value for t in gr.EventType] == ["PUT", "DELETE"]
    assert gr.EventType("PUT") is gr.EventType.PUT
    assert gr.EventType("DELETE") is gr.EventType.DELETE
    with pytest.raises(ValueError):
        gr.EventType("put")


def test_service_event_fields() -> None:
    inst = seed_instance()
    positional = gr.ServiceEvent(gr.EventType.PUT, inst)
    keyword = gr.ServiceEvent(type=gr.EventType.PUT, service=inst)
    assert positional == keyword
    assert positional.type is gr.EventType.PUT
    assert positional.service is inst
    assert positional != gr.ServiceEvent(gr.EventType.DELETE, inst)
    assert "PUT" in repr(positional) and "user-service-001" in repr(positional)


def test_service_event_is_frozen() -> None:
    event = gr.ServiceEvent(gr.EventType.PUT, seed_instance())
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.type = gr.EventType.DELETE  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.service = S("x", "y")  # type: ignore[misc]
    with pytest.raises((AttributeError, TypeError)):
        event.extra = 1  # type: ignore[attr-defined]
    assert event.type is gr.EventType.PUT
    assert event.service == seed_instance()


def test_service_event_is_hashable_by_value() -> None:
    a = gr.ServiceEvent(gr.EventType.PUT, seed_instance())
    b = gr.ServiceEvent(gr.EventType.PUT, seed_instance())
    assert hash(a) == hash(b)
    assert len({a, b, gr.ServiceEvent(gr.EventType.DELETE, seed_instance())}) == 2


def test_service_event_pickles() -> None:
    event = gr.ServiceEvent(gr.EventType.DELETE, S("a", "svc"))
    restored = pickle.loads(pickle.dumps(event))
    assert restored == event
    assert restored.type is gr.EventType.DELETE


def test_assert_invalid_helper_can_fail() -> None:
    # Guards the helper used above: a valid instance must make it fail.
    with pytest.raises(pytest.fail.Exception):
        assert_invalid(seed_instance())
    with pytest.raises(AssertionError):
        assert_invalid(S("", "svc", endpoints=["h:1"]), "text that is not in the message")
