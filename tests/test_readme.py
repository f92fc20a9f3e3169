"""Every Python block in the README runs, against the test etcd, so the docs cannot rot."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
#: Fragments: they use generated stubs and a registry the reader has. They run after a
#: prelude that provides them: a registry, real echo servers registered as the services,
#: and stand-ins for the generated modules that call the echo methods.
FRAGMENTS = re.findall(r"```python fragment\n(.*?)```", README.read_text(), flags=re.S)

PRELUDE = """
import logging, sys, types
sys.path.insert(0, {tests!r})
import grpc
import genesis_registry as gr
from echo import EchoServer

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
    prelude = PRELUDE.format(tests=str(Path(__file__).parent), endpoint=etcd_endpoints[0], namespace=namespace)
    code = prelude + FRAGMENTS[index] + EPILOGUE
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("fragment done"), result.stdout


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs(index, etcd_endpoints, namespace):
    code = BLOCKS[index].replace('"127.0.0.1:2379"', repr(etcd_endpoints[0]))
    code = code.replace('"/genesis/services"', repr(namespace))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
