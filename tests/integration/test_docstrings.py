"""Every docstring example of every module of genesis_registry runs, so the docs cannot rot.

The modules are found by walking the package (a new module is checked without being listed
here), and each docstring with examples is one test. Examples run with ``doctest`` in the
namespace of their module, plus live objects they may use (built only when an example names
them), on the suite's real etcd:

* ``gr``: the ``genesis_registry`` package.
* ``etcd_endpoint`` / ``etcd_endpoints``: the test etcd, ``host:port`` (the plugin's ``etcd_endpoints``).
* ``conn``: a connected ``EtcdConnector`` to it.
* ``reg``: a ``Registry`` on ``conn`` in a namespace of this docstring's own (the plugin's
  ``registry_namespace``), ``default_ttl=5``; ``areg``: an ``AsyncRegistry``, the same.
* ``echo``: a running echo gRPC server (``support.echo.EchoServer`` named ``"user-1"``), and
  ``instance``: a ``ServiceInstance`` ``user-1`` of ``user-service`` at its endpoint.
* ``pb``: stand-ins for generated gRPC modules, answered by the echo server:
  ``pb.UserServiceStub(channel).GetUser(pb.GetUserRequest(id="123"))`` returns
  ``b"user-1|123"``; ``pb.TestServiceStub(channel).StreamCall(requests())`` echoes each
  request. ``request`` is ``pb.GetUserRequest(id="123")``, ``requests()`` yields ``b"hello"``.
* ``server``: a started local ``EtcdServer`` of this docstring's own, which its examples may
  crash, wipe or stop; ``cluster``: a started 3-member ``EtcdCluster``, the same. (Skipped
  where no etcd binary is found.)

An example may ``await`` (and use ``async for`` / ``async with``) at top level: each docstring
gets an event loop of its own, which ``areg`` belongs to. What an example leaves open
(registries, connectors, watches, channels) is closed after it.

``# doctest: +SKIP`` is refused: an example that cannot run is not an example. So is code
in a docstring's ``::`` block that is not a ``>>>`` example: the few that cannot run here
(command lines, pytest tests, what runs until Ctrl-C or needs Docker) are listed in
:data:`ILLUSTRATIONS`, each with why.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import copy
import doctest
import importlib
import inspect
import io
import pkgutil
import re
import types
from collections.abc import Callable, Iterator
from typing import Any
from unittest import mock

import genesis_registry as gr
import pytest
from genesis_registry.localetcd import EtcdCluster, EtcdNotFoundError, EtcdServer
from support.echo import EchoServer, instance_for

_COMMAND_LINE = "a command line, not Python"
_PYTEST_CODE = "pytest tests using the plugin's fixtures, as this suite's own tests do"
_UNTIL_STOPPED = "runs until Ctrl-C; tests/integration/test_cli.py runs it as a process and interrupts it"
_DOCKER = "needs a Docker engine, which the machines running this suite do not have"

#: (module, name in it) of each docstring with code in a ``::`` block that is not a ``>>>``
#: example, and why it cannot be one.
ILLUSTRATIONS: dict[tuple[str, str], str] = {
    ("genesis_registry.__main__", ""): _COMMAND_LINE,
    ("genesis_registry.cli", ""): _COMMAND_LINE,
    ("genesis_registry.demo", ""): _COMMAND_LINE,
    ("genesis_registry.testing", "pytest_plugin_registered"): _COMMAND_LINE,
    ("genesis_registry.cli.client", "cmd_register"): _UNTIL_STOPPED,
    ("genesis_registry.cli.client", "cmd_watch"): _UNTIL_STOPPED,
    ("genesis_registry.cli.etcd", "cmd_etcd"): _UNTIL_STOPPED,
    ("genesis_registry.cli.console", "cmd_console"): "runs until Ctrl-C; tests/integration/test_console.py runs it "
    "as a process and interrupts it",
    ("genesis_registry.cli.demo", "run"): _UNTIL_STOPPED,
    ("genesis_registry.cli.demo", "tour"): "the whole demo (seconds of traffic); tests/integration/test_cli.py runs it",
    ("genesis_registry.testing", ""): _PYTEST_CODE,
    ("genesis_registry.testing", "async_registry"): _PYTEST_CODE,
    ("genesis_registry.testing", "etcd_cluster"): _PYTEST_CODE,
    ("genesis_registry.testing", "etcd_endpoints"): _PYTEST_CODE,
    ("genesis_registry.testing", "etcd_server"): _PYTEST_CODE,
    ("genesis_registry.testing", "pytest_runtest_call"): _PYTEST_CODE,
    ("genesis_registry.testing", "pytest_runtest_setup"): _PYTEST_CODE,
    ("genesis_registry.testing", "registry"): _PYTEST_CODE,
    ("genesis_registry.testing", "registry_namespace"): _PYTEST_CODE,
    ("genesis_registry.localetcd.external", "ContainerEtcd"): _DOCKER,
    ("genesis_registry.localetcd.external", "ContainerEtcd.__init__"): _DOCKER,
    ("genesis_registry.localetcd.external", "ContainerEtcd.close"): _DOCKER,
    ("genesis_registry.localetcd.external", "ContainerEtcd.start_container"): _DOCKER,
}

#: Differences doctest forgives in every example: ``...`` in expected output matches anything.
OPTIONFLAGS = doctest.ELLIPSIS


def modules() -> list[types.ModuleType]:
    """The package and every module below it, imported."""
    found = [gr]
    for info in pkgutil.walk_packages(gr.__path__, f"{gr.__name__}."):
        found.append(importlib.import_module(info.name))
    return found


def docstrings() -> list[tuple[str, doctest.DocTest]]:
    """(module name, test) of every docstring with examples, each found once: in the module
    that defines the object."""
    finder = doctest.DocTestFinder(exclude_empty=True)
    found = []
    for module in modules():
        for test in finder.find(module):
            if test.examples:
                found.append((module.__name__, test))
    return sorted(found, key=lambda pair: pair[1].name)


def where(module: str, test: doctest.DocTest) -> tuple[str, str]:
    """``(module, name in it)``, the key of :data:`ILLUSTRATIONS`; an empty name is the
    module's own docstring."""
    return module, test.name[len(module) + 1 :]


def skipped(test: doctest.DocTest) -> list[doctest.Example]:
    return [example for example in test.examples if example.options.get(doctest.SKIP)]


DOCSTRINGS = docstrings()


# -- stand-ins for generated gRPC code, served by the echo server --------------------------


class GetUserRequest:
    def __init__(self, id: str) -> None:
        self.id = id


class UserServiceStub:
    def __init__(self, channel: Any) -> None:
        self.GetUser = channel.unary_unary(
            "/echo.Echo/Unary", request_serializer=lambda r: r.id.encode(), response_deserializer=bytes
        )


class TestServiceStub:
    __test__ = False  # not a pytest test class

    def __init__(self, channel: Any) -> None:
        self.StreamCall = channel.stream_stream("/echo.Echo/BidiStream")


def requests() -> Iterator[bytes]:
    yield b"hello"


PB = types.SimpleNamespace(
    GetUserRequest=GetUserRequest, UserServiceStub=UserServiceStub, TestServiceStub=TestServiceStub
)


# -- the live objects ----------------------------------------------------------------------


class Objects:
    """The live objects a docstring's examples name, built on demand and closed after it."""

    NAMES = (
        "etcd_endpoint",
        "etcd_endpoints",
        "conn",
        "reg",
        "areg",
        "echo",
        "instance",
        "pb",
        "request",
        "requests",
        "server",
        "cluster",
    )

    def __init__(self, request: pytest.FixtureRequest, loop: asyncio.AbstractEventLoop) -> None:
        self._request = request
        self._loop = loop
        self._built: dict[str, Any] = {}
        self._cleanups: list[Callable[[], None]] = []

    def get(self, name: str) -> Any:
        if name not in self._built:
            self._built[name] = getattr(self, f"_make_{name}")()
        return self._built[name]

    def close(self) -> None:
        for cleanup in reversed(self._cleanups):
            cleanup()

    def _make_etcd_endpoints(self) -> list[str]:
        return list(self._request.getfixturevalue("etcd_endpoints"))

    def _make_etcd_endpoint(self) -> str:
        return str(self.get("etcd_endpoints")[0])

    def _config(self) -> gr.Config:
        return gr.Config(
            namespace=self._request.getfixturevalue("registry_namespace"), default_ttl=5, retry_interval=0.1
        )

    def _make_conn(self) -> gr.EtcdConnector:
        conn = gr.EtcdConnector(gr.EtcdConfig(endpoints=self.get("etcd_endpoints")))
        self._cleanups.append(conn.close)
        conn.connect()
        return conn

    def _make_reg(self) -> gr.Registry:
        reg = gr.Registry(self.get("conn"), self._config())
        self._cleanups.append(reg.close)
        return reg

    def _make_areg(self) -> gr.AsyncRegistry:
        areg = gr.AsyncRegistry(self.get("conn"), self._config())
        self._cleanups.append(lambda: self._loop.run_until_complete(areg.close()))
        return areg

    def _make_echo(self) -> EchoServer:
        server = EchoServer("user-1").start()
        self._cleanups.append(server.stop)
        return server

    def _make_instance(self) -> gr.ServiceInstance:
        return instance_for(self.get("echo"), "user-service")

    def _make_pb(self) -> types.SimpleNamespace:
        return PB

    def _make_request(self) -> GetUserRequest:
        return GetUserRequest(id="123")

    def _make_requests(self) -> Callable[[], Iterator[bytes]]:
        return requests

    def _make_server(self) -> EtcdServer:
        try:
            server = EtcdServer()
        except EtcdNotFoundError as exc:
            pytest.skip(str(exc))
        self._cleanups.append(server.close)
        return server.start()

    def _make_cluster(self) -> EtcdCluster:
        try:
            cluster = EtcdCluster(3)
        except EtcdNotFoundError as exc:
            pytest.skip(str(exc))
        self._cleanups.append(cluster.close)
        return cluster.start()


def names_used(test: doctest.DocTest) -> set[str]:
    """The names of :class:`Objects` that the examples mention."""
    words = set(re.findall(r"[A-Za-z_]\w*", "\n".join(example.source for example in test.examples)))
    return words & set(Objects.NAMES) | ({"gr"} & words)


def close_what_was_left(globs: dict[str, Any], before: dict[str, Any], loop: asyncio.AbstractEventLoop) -> None:
    """Closes what the examples opened and left open: objects of the library's own types
    bound to names the examples assigned."""
    for name, value in globs.items():
        if before.get(name) is value or not type(value).__module__.startswith(gr.__name__):
            continue
        close = getattr(value, "close", None) or getattr(value, "stop", None)
        if close is None:
            continue
        with contextlib.suppress(Exception):
            result = close()
            if inspect.isawaitable(result):
                loop.run_until_complete(result)


def run_examples(test: doctest.DocTest, loop: asyncio.AbstractEventLoop) -> tuple[int, str]:
    """Runs ``test``'s examples; (failures, doctest's report)."""
    # doctest executes each example with exec(); one that awaits at top level compiles to a
    # coroutine instead (PyCF_ALLOW_TOP_LEVEL_AWAIT), which must run on the loop. doctest has no
    # hook for how an example is executed, so its module's exec is replaced while it runs.
    real_exec = exec

    def exec_example(code: types.CodeType, globs: dict[str, Any]) -> None:
        if code.co_flags & inspect.CO_COROUTINE:
            loop.run_until_complete(eval(code, globs))
        else:
            real_exec(code, globs)

    out = io.StringIO()
    runner = doctest.DocTestRunner(optionflags=OPTIONFLAGS)
    with mock.patch.object(doctest, "exec", exec_example, create=True):
        result = runner.run(test, out=out.write, compileflags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, clear_globs=False)
    return result.failed, out.getvalue()


def run_docstring(test: doctest.DocTest, request: pytest.FixtureRequest) -> tuple[int, str]:
    """Runs ``test``'s examples with the objects they name, then closes everything; (failures,
    doctest's report)."""
    test = copy.copy(test)  # its own namespace: the collected test stays as found
    test.globs = dict(test.globs)
    loop = asyncio.new_event_loop()
    objects = Objects(request, loop)
    try:
        extra = {name: gr if name == "gr" else objects.get(name) for name in names_used(test)}
        test.globs.update({name: value for name, value in extra.items() if name not in test.globs})
        before = dict(test.globs)
        try:
            return run_examples(test, loop)
        finally:
            close_what_was_left(test.globs, before, loop)
            test.globs.clear()
    finally:
        objects.close()
        loop.close()


@pytest.mark.parametrize(("module", "test"), DOCSTRINGS, ids=[test.name for _, test in DOCSTRINGS])
def test_docstring_examples_run(module: str, test: doctest.DocTest, request: pytest.FixtureRequest) -> None:
    skips = skipped(test)
    if skips:
        lines = "\n".join(f"  line {test.lineno + example.lineno + 1}: {example.source.strip()}" for example in skips)
        pytest.fail(f"{test.name}: examples must run, not carry +SKIP ({test.filename}):\n{lines}", pytrace=False)
    failed, report = run_docstring(test, request)
    if failed:
        pytest.fail(f"{test.name} ({test.filename}):\n{report}", pytrace=False)


def parse(text: str) -> doctest.DocTest:
    return doctest.DocTestParser().get_doctest(text, {}, "example", "<example>", 0)


def test_the_objects_are_live_and_examples_may_await(request: pytest.FixtureRequest) -> None:
    """What an example of the registry, the balancer or the stream manager can build on."""
    failed, report = run_docstring(
        parse(
            """
    >>> await areg.register(instance)
    >>> [i.id for i in reg.get_service("user-service")]
    ['user-1']
    >>> with reg.get_connection("user-service") as channel:
    ...     pb.UserServiceStub(channel).GetUser(request)
    b'user-1|123'
    >>> async with await areg.get_connection("user-service") as channel:
    ...     [reply async for reply in pb.TestServiceStub(channel).StreamCall(iter(requests()))]
    [b'user-1|hello']
    >>> left_open = gr.Registry(conn, gr.Config(namespace=reg.namespace))
    """
        ),
        request,
    )
    assert failed == 0, report


def test_a_failing_example_is_reported(request: pytest.FixtureRequest) -> None:
    failed, report = run_docstring(parse(">>> gr.Config(default_ttl=15).default_ttl\n16.0\n"), request)
    assert failed == 1
    assert "Expected:\n    16.0\nGot:\n    15.0" in report


def literal_blocks(docstring: str) -> list[str]:
    """The reStructuredText literal blocks of ``docstring``: after a line ending in ``::``,
    the lines indented deeper than it."""
    lines = inspect.cleandoc(docstring).splitlines()
    blocks = []
    for i, line in enumerate(lines):
        if not line.rstrip().endswith("::"):
            continue
        indent = len(line) - len(line.lstrip())
        block = []
        for after in lines[i + 1 :]:
            if after.strip() and len(after) - len(after.lstrip()) <= indent:
                break
            block.append(after)
        blocks.append("\n".join(block).strip())
    return blocks


def code_that_does_not_run() -> set[tuple[str, str]]:
    """(module, name in it) of every docstring with a ``::`` block that holds no example."""
    finder = doctest.DocTestFinder(exclude_empty=False)
    found = set()
    for module in modules():
        for test in finder.find(module):
            if any(block and ">>>" not in block for block in literal_blocks(test.docstring or "")):
                found.add(where(module.__name__, test))
    return found


def test_code_in_docstrings_is_examples_that_run() -> None:
    found = code_that_does_not_run()
    assert sorted(found - ILLUSTRATIONS.keys()) == [], "write these as >>> examples, or say in ILLUSTRATIONS why not"
    assert sorted(ILLUSTRATIONS.keys() - found) == [], "remove these from ILLUSTRATIONS: they hold no such code now"


def test_a_literal_block_ends_where_its_indentation_does() -> None:
    doc = """Summary.

    Example::

        x = 1

    More text.

    >>> 1
    1
    """
    assert literal_blocks(doc) == ["x = 1"]


def test_every_module_of_the_package_is_walked() -> None:
    names = {module.__name__ for module in modules()}
    assert {"genesis_registry", "genesis_registry.config", "genesis_registry.registry"} <= names
