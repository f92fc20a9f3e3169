"""Process lifecycle: interpreter exit with registries left open, fork, threads."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading

import genesis_registry as gr
import pytest
from support.etcd import etcd_keys, instance

PYTHON = sys.executable


def run_script(
    script: str, endpoints: list[str], namespace: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, ENDPOINTS=",".join(endpoints), NAMESPACE=namespace)
    return subprocess.run(
        [PYTHON, "-c", textwrap.dedent(script)], env=env, capture_output=True, text=True, timeout=timeout
    )


PRELUDE = """
import os, threading, genesis_registry as gr
conn = gr.EtcdConnector(gr.EtcdConfig(endpoints=os.environ["ENDPOINTS"]))
conn.connect()
reg = gr.Registry(conn, gr.Config(namespace=os.environ["NAMESPACE"], default_ttl=60))
reg.register(gr.ServiceInstance(id="child", name="svc", endpoints=["grpc://127.0.0.1:1"]))
"""


def test_interpreter_exit_with_an_open_registry_revokes_its_leases(etcd_endpoints, etcd_server, namespace):
    result = run_script(PRELUDE + "print('registered', flush=True)\n", etcd_endpoints, namespace)
    assert result.returncode == 0, result.stderr
    assert "registered" in result.stdout
    assert result.stderr == ""
    # A 60 s TTL: the key is gone now only because the exit hook revoked the lease.
    assert etcd_keys(etcd_server, namespace) == {}


def test_exit_releases_a_non_daemon_thread_blocked_in_a_watch(etcd_endpoints, etcd_server, namespace):
    script = (
        PRELUDE
        + """
watch = reg.watch("svc")
def consume():
    for _ in watch:
        pass
    print("watch ended", flush=True)
threading.Thread(target=consume).start()
print("main done", flush=True)
"""
    )
    result = run_script(script, etcd_endpoints, namespace, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["main done", "watch ended"]
    assert etcd_keys(etcd_server, namespace) == {}


def test_exit_with_only_a_connector_open_is_clean(etcd_endpoints, namespace):
    script = """
import os, genesis_registry as gr
conn = gr.EtcdConnector(gr.EtcdConfig(endpoints=os.environ["ENDPOINTS"]))
conn.connect()
"""
    result = run_script(script, etcd_endpoints, namespace)
    assert (result.returncode, result.stderr) == (0, "")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_gets_a_fresh_runtime(etcd_endpoints, etcd_server, namespace):
    script = (
        PRELUDE
        + """
import sys
reg.get_service("svc")
pid = os.fork()
if pid == 0:
    code = 0
    try:
        reg.get_service("svc")
        print("inherited registry still usable: wrong", flush=True)
        code = 3
    except gr.RegistryClosedError as e:
        print("inherited:", e, flush=True)
    conn2 = gr.EtcdConnector(gr.EtcdConfig(endpoints=os.environ["ENDPOINTS"]))
    conn2.connect()
    reg2 = gr.Registry(conn2, gr.Config(namespace=os.environ["NAMESPACE"]))
    reg2.register(gr.ServiceInstance(id="grandchild", name="svc", endpoints=["grpc://127.0.0.1:2"]))
    print("child sees", [i.id for i in reg2.get_service("svc")], flush=True)
    reg2.close()
    conn2.close()
    os._exit(code)
_, status = os.waitpid(pid, 0)
print("child exit", os.waitstatus_to_exitcode(status), flush=True)
print("parent sees", [i.id for i in reg.get_service("svc")], flush=True)
"""
    )
    result = run_script(script, etcd_endpoints, namespace)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("inherited:") and "fork" in lines[0]
    assert lines[1] == "child sees ['child', 'grandchild']"
    assert lines[2] == "child exit 0"
    assert lines[3].startswith("parent sees ['child'")


def test_close_while_other_threads_call_in(connector, namespace):
    reg = gr.Registry(connector, gr.Config(namespace=namespace))
    reg.register(instance("a"))
    errors: list[BaseException] = []
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            try:
                reg.get_service("svc")
            except gr.RegistryClosedError:
                return
            except BaseException as e:
                errors.append(e)
                return

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    reg.close()
    stop.set()
    for t in threads:
        t.join(10)
    assert not errors
    assert not any(t.is_alive() for t in threads)


def test_ctrl_c_interrupts_a_blocked_watch(etcd_endpoints, etcd_server, namespace):
    import signal

    script = (
        PRELUDE
        + """
import signal
# A process started with SIGINT ignored (e.g. a job a non-interactive shell ran in the
# background) passes that on, and Python then installs no KeyboardInterrupt handler:
# install it, as that handler is what this test is about.
signal.signal(signal.SIGINT, signal.default_int_handler)
try:
    # "ready" once the watch delivered the current instance: from then on it blocks for the
    # next event, which never comes. Printed inside the try, so that a signal arriving
    # before the block is reached still lands in the handler.
    for event in reg.watch("svc"):
        print("ready", event.service.id, flush=True)
except KeyboardInterrupt:
    print("interrupted", flush=True)
"""
    )
    env = dict(os.environ, ENDPOINTS=",".join(etcd_endpoints), NAMESPACE=namespace)
    child = subprocess.Popen(
        [PYTHON, "-c", textwrap.dedent(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    with child:
        try:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "ready child"
            child.send_signal(signal.SIGINT)
            out, err = child.communicate(timeout=30)
        finally:
            child.kill()  # a no-op once it exited; ends it if the test failed
    assert child.returncode == 0, err
    assert out.strip() == "interrupted"
    assert etcd_keys(etcd_server, namespace) == {}, "the exit hook still revoked the lease"
