"""Every Python block and the command-line tour in the README run, against a real etcd, so the
docs cannot rot. (The install and make lines are what CI itself runs.)"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from support.cli_process import CLI, Child, child_env, free_ports
from support.paths import child_pythonpath

README = Path(__file__).resolve().parents[2] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
#: Fragments: they use generated stubs and a registry the reader has. They run after a
#: prelude that provides them: a registry, real echo servers registered as the services,
#: and stand-ins for the generated modules that call the echo methods.
FRAGMENTS = re.findall(r"```python fragment\n(.*?)```", README.read_text(), flags=re.S)

PRELUDE = """
import logging, sys, types
import grpc
import genesis_registry as gr
from support.echo import EchoServer

log = logging.getLogger("readme")
conn = gr.EtcdConnector(gr.EtcdConfig(endpoints=[{endpoint!r}]))
conn.connect()
reg = gr.Registry(conn, gr.Config(namespace={namespace!r}))
servers = [EchoServer(f"echo-{{i}}").start() for i in range(2)]
for i, server in enumerate(servers):
    reg.register(gr.ServiceInstance(id=f"user-{{i}}", name="user-service", endpoints=[server.endpoint]))
    reg.register(gr.ServiceInstance(id=f"stream-{{i}}", name="stream-service", endpoints=[server.endpoint]))

class GetUserRequest:
    def __init__(self, id):
        self.id = id

class UserServiceStub:
    def __init__(self, channel):
        self.GetUser = channel.unary_unary(
            "/echo.Echo/Unary", request_serializer=lambda r: r.id.encode(), response_deserializer=bytes
        )

class TestServiceStub:
    def __init__(self, channel):
        self.StreamCall = channel.stream_stream("/echo.Echo/BidiStream")

def requests_for(instance):
    yield instance.id.encode()

user_pb2 = types.SimpleNamespace(GetUserRequest=GetUserRequest)
user_pb2_grpc = types.SimpleNamespace(UserServiceStub=UserServiceStub)
stream_pb2_grpc = types.SimpleNamespace(TestServiceStub=TestServiceStub)

class NoopInterceptor(grpc.UnaryUnaryClientInterceptor):
    def intercept_unary_unary(self, continuation, details, request):
        return continuation(details, request)

my_interceptor = NoopInterceptor()
"""

EPILOGUE = """
reg.close()
conn.close()
for server in servers:
    server.stop()
print("fragment done")
"""


def test_the_readme_has_python_examples():
    assert len(BLOCKS) >= 3 and FRAGMENTS


@pytest.mark.parametrize("index", range(len(FRAGMENTS)))
def test_readme_fragment_runs(index, etcd_endpoints, namespace):
    prelude = PRELUDE.format(endpoint=etcd_endpoints[0], namespace=namespace)
    code = prelude + FRAGMENTS[index] + EPILOGUE
    env = dict(os.environ, PYTHONPATH=child_pythonpath())  # the prelude's echo servers are support's
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("fragment done"), result.stdout


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs(index, etcd_endpoints, namespace):
    code = BLOCKS[index].replace('"127.0.0.1:2379"', repr(etcd_endpoints[0]))
    code = code.replace('"/genesis/services"', repr(namespace))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr


#: The command-line tour: each line runs as written, in order; lines ending in `&` keep
#: running (each is ready once it printed its first line) until SIGINT ends them at the end.
CLI_BLOCKS = re.findall(r"```sh cli\n(.*?)```", README.read_text(), flags=re.S)
#: Tests a user would write with the plugin's fixtures: run by pytest in a project of their own.
FIXTURE_BLOCKS = re.findall(r"```python fixture\n(.*?)```", README.read_text(), flags=re.S)


def cli_lines(block: str) -> list[tuple[list[str], bool]]:
    """(argv after the program name, runs in the background) for each command of ``block``."""
    commands = []
    for line in block.splitlines():
        line = line.split("  #", 1)[0].strip()
        if not line:
            continue
        background = line.endswith("&")
        argv = shlex.split(line.rstrip("&"))
        assert argv[0] == "genesis-registry", line
        commands.append((argv[1:], background))
    return commands


def test_the_readme_has_a_command_line_tour_and_a_fixture_example():
    assert len(CLI_BLOCKS) == 1 and len(FIXTURE_BLOCKS) == 1
    assert any(args[0] == "etcd" and background for args, background in cli_lines(CLI_BLOCKS[0]))


def test_readme_command_line_tour_runs_and_does_what_it_says(tmp_path):
    port = free_ports(2)
    env = child_env(GENESIS_ETCD_ENDPOINTS=f"127.0.0.1:{port}")
    background: dict[str, Child] = {}
    finished: dict[str, subprocess.CompletedProcess[str]] = {}
    try:
        for args, in_background in cli_lines(CLI_BLOCKS[0]):
            if args[0] == "etcd":  # the README's etcd listens on 2379; this one on a free port
                args = [*args, "--port", str(port)]
            if in_background:
                child = Child(*args, env=env)
                background[args[0]] = child
                child.readline(timeout=30)
            else:
                result = subprocess.run(
                    [*CLI, *args], env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60
                )
                assert result.returncode == 0, f"{args}: {result.stderr}"
                assert "Traceback" not in result.stderr
                finished[" ".join(args)] = result
        listed = finished["list"].stdout.splitlines()
        assert any(line.split() == ["greeter", "1"] for line in listed), listed
        (document,) = [json.loads(line) for line in finished["get greeter --json"].stdout.splitlines()]
        assert [(i["id"], i["endpoints"], i["metadata"]) for i in document["instances"]] == [
            ("g1", ["127.0.0.1:50051"], {"zone": "a"})
        ]
        assert "g1" in finished["get greeter --stats"].stdout
        assert "INSTANCES" in finished["get greeter --stats"].stdout
        watch = background["watch"]
        watch.read_until(lambda line: "DELETE" in line and "g1" in line)
        assert "PUT" in watch.lines[0] and "g1" in watch.lines[0]
        for name in ("watch", "register", "etcd"):  # the reverse of their start
            code, _ = background[name].stop(signal.SIGINT)
            assert code == 0, f"{name}: {background[name].stderr}"
    finally:
        for child in background.values():
            child.close()


def test_readme_fixture_example_passes_in_a_project_of_its_own(tmp_path, etcd_endpoints):
    (tmp_path / "test_example.py").write_text(FIXTURE_BLOCKS[0])
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["GENESIS_ETCD_ENDPOINTS"] = ",".join(etcd_endpoints)  # the session's etcd, not a new one
    # No -p: the plugin comes from the installed package's pytest11 entry point.
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path), str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout, result.stdout
