"""A real local cluster (`cairnctl local up`: 4 metadata voters, 8 dataservers in 4
halls, 2 logic nodes, every one a process on 127.0.0.1) for the package's tests."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

import cairn

ROOT = Path(__file__).resolve().parents[3]


def cairnctl() -> str:
    if os.environ.get("CAIRNCTL"):
        return os.environ["CAIRNCTL"]
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    path = target / "debug" / "cairnctl"
    if not path.exists():
        pytest.fail(f"{path} is missing: run `cargo build --workspace --bins` first (or set CAIRNCTL)")
    return str(path)


class LocalCluster:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.config = directory / "cluster.toml"
        self.base_port = 0

    def up(self) -> subprocess.CompletedProcess[str]:
        """Starts the cluster's processes that are not running (all, the first time)."""
        args = [cairnctl(), "local", "up", "--dir", str(self.dir), "--no-mount", "--base-port", str(self.base_port)]
        return subprocess.run(args, capture_output=True, text=True, timeout=180)

    def down(self) -> None:
        subprocess.run([cairnctl(), "local", "down", "--dir", str(self.dir)], capture_output=True, timeout=60)

    def pid(self, process: str) -> int:
        return int((self.dir / f"{process}.pid").read_text().strip())


@pytest.fixture(scope="session")
def cluster() -> Iterator[LocalCluster]:
    directory = Path(tempfile.mkdtemp(prefix="cairn-pytest-"))
    c = LocalCluster(directory)
    try:
        for _ in range(10):
            # Below Linux's ephemeral ports: a node restarted on its port never finds
            # it taken by a connection's local end.
            c.base_port = random.randrange(10000, 32000, 100)
            started = c.up()
            if started.returncode == 0:
                break
            if "taken" not in started.stderr:
                pytest.fail(f"cairnctl local up failed:\n{started.stdout}\n{started.stderr}")
            c.down()
        else:
            pytest.fail("no free ports for a local cluster")
        yield c
    finally:
        c.down()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def client(cluster: LocalCluster) -> cairn.Client:
    return cairn.connect(str(cluster.config))


@pytest.fixture
def workdir(client: cairn.Client, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh directory in the cluster for one test."""
    path = f"/{request.node.name}"
    if client.exists(path):
        client.rmtree(path)
    client.makedirs(path)
    yield path
