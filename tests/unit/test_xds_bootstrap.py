"""The xDS bootstrap the library installs for grpcio: ours alone, or merged into the user's
inline or file bootstrap, re-merged from the user's original on a new address, undone by
uninstall. Only the environment and temp files: no grpc channel, no etcd."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from genesis_registry import _xds_bootstrap as boot
from genesis_registry.errors import InvalidConfigError, RegistryError

FILE = "GRPC_XDS_BOOTSTRAP"
CONFIG = "GRPC_XDS_BOOTSTRAP_CONFIG"
ADDRESS = "127.0.0.1:40001"
OTHER_ADDRESS = "127.0.0.1:40002"

THEIRS: dict[str, Any] = {
    "xds_servers": [
        {"server_uri": "istiod:15010", "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3"]}
    ],
    "node": {"id": "sidecar~10.0.0.1~pod.ns~ns.svc.cluster.local", "metadata": {"ISTIO_VERSION": "1.24"}},
    "authorities": {"traffic-director": {"xds_servers": [{"server_uri": "td:443", "channel_creds": []}]}},
    "certificate_providers": {"default": {"plugin_name": "file_watcher", "config": {"refresh_interval": "600s"}}},
}


def ours(address: str) -> dict[str, Any]:
    return {"server_uri": address, "channel_creds": [{"type": "insecure"}]}


def authority(address: str) -> dict[str, Any]:
    return {
        "xds_servers": [ours(address)],
        "client_listener_resource_name_template": "xdstp://genesis-registry/envoy.config.listener.v3.Listener/%s",
    }


def merged_with_theirs(address: str) -> dict[str, Any]:
    return {**THEIRS, "authorities": {**THEIRS["authorities"], "genesis-registry": authority(address)}}


def inline() -> Any:
    return json.loads(os.environ[CONFIG])


def in_file() -> Any:
    return json.loads(Path(os.environ[FILE]).read_text())


@pytest.fixture(autouse=True)
def clean(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No bootstrap of the user's, nothing installed; uninstalled after (before monkeypatch
    restores the environment)."""
    monkeypatch.delenv(FILE, raising=False)
    monkeypatch.delenv(CONFIG, raising=False)
    monkeypatch.delenv(boot._INHERITED, raising=False)
    boot.uninstall()
    yield
    boot.uninstall()


@pytest.fixture
def users_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "td-bootstrap.json"
    path.write_text(json.dumps(THEIRS, indent=2) + "\n")
    monkeypatch.setenv(FILE, str(path))
    return path


def test_without_a_bootstrap_of_the_users_ours_goes_inline_with_a_top_level_server() -> None:
    boot.install(ADDRESS)
    assert FILE not in os.environ
    node = inline().pop("node")
    assert inline() | {"node": node} == {
        "xds_servers": [ours(ADDRESS)],
        "node": node,
        "authorities": {"genesis-registry": authority(ADDRESS)},
    }
    assert node == {"id": f"genesis-registry~{os.uname().nodename}~{os.getpid()}"}


def test_the_users_inline_bootstrap_keeps_every_key_and_gains_our_authority(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CONFIG, json.dumps(THEIRS))
    boot.install(ADDRESS)
    assert inline() == merged_with_theirs(ADDRESS)


def test_the_users_inline_bootstrap_without_servers_gets_ours_at_the_top(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CONFIG, json.dumps({"xds_servers": [], "node": {"id": "me"}}))
    boot.install(ADDRESS)
    assert inline() == {
        "xds_servers": [ours(ADDRESS)],
        "node": {"id": "me"},
        "authorities": {"genesis-registry": authority(ADDRESS)},
    }


def test_an_authority_of_our_name_in_the_users_bootstrap_is_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CONFIG, json.dumps({**THEIRS, "authorities": {"genesis-registry": {"xds_servers": []}}}))
    boot.install(ADDRESS)
    assert inline()["authorities"] == {"genesis-registry": authority(ADDRESS)}


def test_the_users_file_is_merged_into_a_private_copy_and_left_unchanged(
    users_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CONFIG, '{"ignored": "the file wins in grpc"}')
    before = users_file.read_bytes()
    boot.install(ADDRESS)
    copy = Path(os.environ[FILE])
    assert copy != users_file
    assert in_file() == merged_with_theirs(ADDRESS)
    assert users_file.read_bytes() == before
    assert os.environ[CONFIG] == '{"ignored": "the file wins in grpc"}'
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600
    assert stat.S_IMODE(copy.parent.stat().st_mode) == 0o700


@pytest.mark.parametrize(
    ("text", "problem", "named"),
    [
        ("{not json", "is not valid JSON: Expecting property name", "(got '{not json')"),
        ('["a list"]', "must hold a JSON object", """(got '["a list"]')"""),
        ('{"authorities": []}', "authorities must be a JSON object", "(got [])"),
        ("", "is not valid JSON: Expecting value", "(got '')"),
    ],
)
def test_an_invalid_inline_bootstrap_is_refused_and_the_environment_kept(
    text: str, problem: str, named: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CONFIG, text)
    with pytest.raises(InvalidConfigError) as raised:
        boot.install(ADDRESS)
    message = str(raised.value)
    assert message.startswith(CONFIG)
    assert problem in message
    assert message.endswith(named)
    assert os.environ[CONFIG] == text
    assert FILE not in os.environ


def test_an_unreadable_or_invalid_file_is_refused_and_the_environment_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "missing.json"
    monkeypatch.setenv(FILE, str(missing))
    with pytest.raises(InvalidConfigError, match=f"cannot read {FILE} file '{missing}': No such file"):
        boot.install(ADDRESS)
    assert os.environ[FILE] == str(missing)

    broken = tmp_path / "broken.json"
    broken.write_text('{"xds_servers": [')
    monkeypatch.setenv(FILE, str(broken))
    with pytest.raises(InvalidConfigError, match=f"{FILE} file '{broken}' is not valid JSON"):
        boot.install(ADDRESS)
    assert os.environ[FILE] == str(broken)
    assert CONFIG not in os.environ


def test_an_empty_file_variable_is_refused_as_grpc_would_fail_on_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(FILE, "")
    with pytest.raises(InvalidConfigError, match=f"cannot read {FILE} file ''"):
        boot.install(ADDRESS)
    assert os.environ[FILE] == ""


def test_installing_the_same_address_again_rewrites_nothing(users_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    merges = []
    real = boot._merged

    def counted(*args: Any) -> dict[str, Any]:
        merges.append(args)
        return real(*args)

    monkeypatch.setattr(boot, "_merged", counted)
    boot.install(ADDRESS)
    copy = os.environ[FILE]
    boot.install(ADDRESS)
    assert os.environ[FILE] == copy
    assert len(merges) == 1


def test_a_new_address_is_merged_from_the_users_original(users_file: Path) -> None:
    before = users_file.read_bytes()
    boot.install(ADDRESS)
    first = Path(os.environ[FILE])
    boot.install(OTHER_ADDRESS)
    assert in_file() == merged_with_theirs(OTHER_ADDRESS)
    assert not first.exists()  # our previous copy is removed
    assert users_file.read_bytes() == before


def test_a_process_started_from_ours_merges_from_the_users_original(users_file: Path) -> None:
    """A child process (not a fork) inherits our variable: it merges from the user's file,
    not from our copy, which goes when we exit."""
    boot.install(ADDRESS)
    ours = os.environ[FILE]
    script = (
        "import json, os\n"
        "from genesis_registry import _xds_bootstrap as boot\n"
        f"boot.install({OTHER_ADDRESS!r})\n"
        "print(json.dumps([os.environ['GRPC_XDS_BOOTSTRAP'], open(os.environ['GRPC_XDS_BOOTSTRAP']).read()]))\n"
        "boot.uninstall()\n"
        "print(os.environ['GRPC_XDS_BOOTSTRAP'])\n"
    )
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    merged_at, _, restored = child.stdout.partition("\n")
    path, text = json.loads(merged_at)
    assert path not in (ours, str(users_file))
    assert json.loads(text) == merged_with_theirs(OTHER_ADDRESS)
    assert restored.strip() == str(users_file)
    assert os.environ[FILE] == ours  # the parent's own is untouched


def test_a_new_address_replaces_ours_at_the_top_too() -> None:
    boot.install(ADDRESS)
    boot.install(OTHER_ADDRESS)
    assert inline()["xds_servers"] == [ours(OTHER_ADDRESS)]
    assert inline()["authorities"] == {"genesis-registry": authority(OTHER_ADDRESS)}


def test_a_value_the_user_set_after_us_is_theirs(monkeypatch: pytest.MonkeyPatch) -> None:
    boot.install(ADDRESS)
    monkeypatch.setenv(CONFIG, json.dumps(THEIRS))
    boot.install(ADDRESS)
    assert inline() == merged_with_theirs(ADDRESS)
    boot.uninstall()
    assert inline() == THEIRS


def test_a_file_the_user_set_after_us_wins_and_our_inline_one_goes(
    users_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(FILE)
    boot.install(ADDRESS)
    monkeypatch.setenv(FILE, str(users_file))
    boot.install(ADDRESS)
    assert in_file() == merged_with_theirs(ADDRESS)
    assert CONFIG not in os.environ
    boot.uninstall()
    assert os.environ[FILE] == str(users_file)
    assert CONFIG not in os.environ


def test_uninstall_restores_the_users_variables(users_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    boot.install(ADDRESS)
    copy = Path(os.environ[FILE])
    boot.uninstall()
    assert os.environ[FILE] == str(users_file)
    assert not copy.exists()

    monkeypatch.delenv(FILE)
    monkeypatch.setenv(CONFIG, json.dumps(THEIRS))
    boot.install(ADDRESS)
    boot.uninstall()
    assert os.environ[CONFIG] == json.dumps(THEIRS)

    monkeypatch.delenv(CONFIG)
    boot.install(ADDRESS)
    boot.uninstall()
    assert CONFIG not in os.environ
    boot.uninstall()  # nothing installed: nothing to do
    assert CONFIG not in os.environ


def test_uninstall_leaves_a_value_the_user_set_since(monkeypatch: pytest.MonkeyPatch) -> None:
    boot.install(ADDRESS)
    monkeypatch.setenv(CONFIG, "{}")
    boot.uninstall()
    assert os.environ[CONFIG] == "{}"


def test_a_forked_child_of_a_parent_that_installed_ours_is_refused_and_changes_nothing(
    users_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """os.getpid() stands for the fork: module state is inherited, the pid is not. The
    child's grpc would still ask the parent's server (tests/integration/test_native.py forks
    for real)."""
    boot.install(ADDRESS)
    environment = {name: os.environ.get(name) for name in (FILE, CONFIG)}
    parent_pid = os.getpid()
    monkeypatch.setattr(os, "getpid", lambda: parent_pid + 1)
    with pytest.raises(RegistryError, match=rf"forked \(pid {parent_pid + 1}\) after its parent \(pid {parent_pid}\)"):
        boot.install("127.0.0.1:50052")
    assert {name: os.environ.get(name) for name in (FILE, CONFIG)} == environment
    monkeypatch.setattr(os, "getpid", lambda: parent_pid)
    boot.check_not_inherited()  # the parent itself goes on


def test_the_private_directory_is_removed_at_exit(users_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(boot, "_directory", None)  # a directory of this test's own
    boot.install(ADDRESS)
    directory = Path(os.environ[FILE]).parent
    boot._remove_directory()
    assert not directory.exists()


def test_concurrent_installs_leave_one_consistent_bootstrap(users_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(boot, "_directory", None)
    addresses = [f"127.0.0.1:{41000 + i}" for i in range(8)]
    threads = [threading.Thread(target=boot.install, args=(address,)) for address in addresses]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    copy = Path(os.environ[FILE])
    assert list(copy.parent.iterdir()) == [copy]
    assert in_file() in [merged_with_theirs(address) for address in addresses]
    boot.uninstall()
    assert os.environ[FILE] == str(users_file)
