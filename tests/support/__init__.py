"""What the tests share, apart from fixtures (those stay in ``conftest.py``).

Importable as ``support`` because pytest puts ``tests/`` on ``sys.path`` (``pythonpath`` in
``pyproject.toml``); a child process started by a test gets it through ``PYTHONPATH``
(:func:`support.paths.child_pythonpath`).

* :mod:`support.wait`: ``wait_until`` / ``await_until``, polling with a deadline.
* :mod:`support.etcd`: what etcd holds (keys, leases), read with ``etcdctl``; a connected connector.
* :mod:`support.views`: watch events applied to a dict, a follower thread, etcd's view to compare.
* :mod:`support.echo`: the ``echo.Echo`` gRPC servers (sync, asyncio, registered child process).
* :mod:`support.cli_process`: the ``genesis-registry`` command in a child process.
* :mod:`support.faults`: clients on a damaged cluster, churn, retries while etcd has no leader.
* :mod:`support.tcp_proxy`, :mod:`support.netlab`: cutting a client off, partitioning members.
* :mod:`support.scenario`: the record of what a reliability scenario injected and checked.
"""
