"""Every Python block in the README runs, against the test etcd, so the docs cannot rot."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
#: Illustrative fragments (they use generated stubs the reader has): compiled, not run.
FRAGMENTS = re.findall(r"```python fragment\n(.*?)```", README.read_text(), flags=re.S)


def test_the_readme_has_python_examples():
    assert len(BLOCKS) >= 3 and FRAGMENTS


@pytest.mark.parametrize("index", range(len(FRAGMENTS)))
def test_readme_fragments_compile(index):
    compile(FRAGMENTS[index], f"README fragment {index}", "exec")


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs(index, etcd_endpoints, namespace):
    code = BLOCKS[index].replace('"127.0.0.1:2379"', repr(etcd_endpoints[0]))
    code = code.replace('"/genesis/services"', repr(namespace))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
