"""The micro-benchmarks use the test suite's local etcd plugin."""

pytest_plugins = ["genesis_registry.testing"]
