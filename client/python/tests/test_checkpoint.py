"""PyTorch Distributed Checkpoint on a real local cluster: one process and 4 gloo ranks,
async saves, a writer killed with -9, a logic node killed during an upload."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp

import cairn
from cairn.torch import CairnStorageReader, CairnStorageWriter

WORKER = str(Path(__file__).with_name("ckpt_worker.py"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(cluster, mode: str, path: str, world: int, **kw) -> None:
    port = free_port()
    env = dict(os.environ, CAIRN_CLUSTER=str(cluster.config))
    extra = [f"--{k}={v}" for k, v in kw.items()]
    procs = [
        subprocess.Popen(
            [sys.executable, WORKER, mode, path, f"--rank={r}", f"--world={world}", f"--port={port}", *extra],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(world)
    ]
    outputs = []
    try:
        for p in procs:
            out, _ = p.communicate(timeout=300)
            outputs.append(out)
    finally:
        for p in procs:
            p.kill()
    for r, (p, out) in enumerate(zip(procs, outputs)):
        assert p.returncode == 0, f"rank {r} {mode} failed:\n{out}"


def sample_state() -> dict:
    g = torch.Generator().manual_seed(5)
    model = torch.nn.Transformer(d_model=64, nhead=4, num_encoder_layers=2, num_decoder_layers=2)
    return {
        "model": model.state_dict(),
        "opt": {"bf16": torch.randn(129, 33, generator=g).to(torch.bfloat16), "i": torch.arange(10)},
        "transposed": torch.randn(40, 30, generator=g).t(),
        "step": 7,
        "note": {"text": "cairn", "list": [1, 2, 3]},
    }


def zeroed(sd: dict) -> dict:
    return {k: zeroed(v) if isinstance(v, dict) else torch.zeros_like(v) if isinstance(v, torch.Tensor) else None for k, v in sd.items()}


def assert_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], dict):
            assert_equal(a[k], b[k])
        elif isinstance(a[k], torch.Tensor):
            assert torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype, k
        else:
            assert a[k] == b[k], k


def test_single_process_save_and_load(client: cairn.Client, workdir: str) -> None:
    sd = sample_state()
    path = f"{workdir}/step-1"
    dcp.save(sd, storage_writer=CairnStorageWriter(path, client=client))
    names = client.listdir(path)
    assert ".metadata" in names and any(n.endswith(".distcp") for n in names)
    # Nothing but the published checkpoint is left beside it.
    assert client.listdir(workdir) == ["step-1"]
    got = zeroed(sd)
    dcp.load(got, storage_reader=CairnStorageReader(path, client=client))
    assert_equal(sd, got)
    # checkpoint_id with the scheme; saving over an existing checkpoint is refused.
    got2 = zeroed(sd)
    dcp.load(got2, checkpoint_id=f"cairn://{path}", storage_reader=CairnStorageReader(client=client))
    assert_equal(sd, got2)
    with pytest.raises(BaseException, match="already exists"):
        dcp.save(sd, storage_writer=CairnStorageWriter(path, client=client))
    sd["step"] = 8
    dcp.save(sd, storage_writer=CairnStorageWriter(path, client=client, overwrite=True))
    got3 = zeroed(sd)
    dcp.load(got3, storage_reader=CairnStorageReader(path, client=client))
    assert got3["step"] == 8
    assert client.listdir(workdir) == ["step-1"]


def test_four_gloo_ranks_save_and_load(cluster, client: cairn.Client, workdir: str) -> None:
    path = f"{workdir}/step-100"
    run_ranks(cluster, "save", path, 4, mib=2, seed=100)
    assert client.listdir(workdir) == ["step-100"]
    files = client.listdir(path)
    assert {f.split("_")[2] for f in files if f.endswith(".distcp")} == {"0", "1", "2", "3"}
    run_ranks(cluster, "load", path, 4, mib=2, seed=100)


def test_async_save_stalls_only_for_the_copy(client: cairn.Client, workdir: str) -> None:
    sd = {"w": torch.randn(4 << 20), "b": torch.randn(1000)}  # 16 MB
    want_a = {k: v.clone() for k, v in sd.items()}
    writer = CairnStorageWriter(client=client)
    fut_a = dcp.async_save(sd, checkpoint_id=f"{workdir}/a", storage_writer=writer)
    # Training goes on and changes the state while A uploads.
    for v in sd.values():
        v.add_(1.0)
    want_b = {k: v.clone() for k, v in sd.items()}
    # Policy: staging B waits for A's upload (its buffers are reused).
    fut_b = dcp.async_save(sd, checkpoint_id=f"{workdir}/b", storage_writer=writer)
    fut_a.result()
    fut_b.result()
    for name, want in (("a", want_a), ("b", want_b)):
        got = {k: torch.zeros_like(v) for k, v in want.items()}
        dcp.load(got, storage_reader=CairnStorageReader(f"{workdir}/{name}", client=client))
        assert_equal(want, got)
    with pytest.raises(ValueError, match="staging budget"):
        CairnStorageWriter(client=client, staging_budget_bytes=1000).stage(sd)


def wait_for_staging(client: cairn.Client, workdir: str, name: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        staging = [n for n in client.listdir(workdir) if n.startswith(f".{name}.staging-")]
        if staging and any(n.endswith(".distcp") for n in client.listdir(f"{workdir}/{staging[0]}")):
            return
        time.sleep(0.05)
    raise AssertionError("the writer never started writing")


def test_writer_killed_mid_checkpoint_leaves_the_previous_one(cluster, client: cairn.Client, workdir: str) -> None:
    run_ranks(cluster, "save", f"{workdir}/step-1", 1, mib=1, seed=1)
    env = dict(os.environ, CAIRN_CLUSTER=str(cluster.config))
    writer = subprocess.Popen(
        [sys.executable, WORKER, "save", f"{workdir}/step-2", "--mib=400", "--seed=2"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_staging(client, workdir, "step-2")
        time.sleep(0.3)
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=30)
    finally:
        writer.kill()
    assert writer.returncode == -signal.SIGKILL, "the writer finished before it was killed"
    assert not client.exists(f"{workdir}/step-2")
    assert [n for n in client.listdir(workdir) if not n.startswith(".")] == ["step-1"]
    run_ranks(cluster, "load", f"{workdir}/step-1", 1, mib=1, seed=1)
    # The next save of the same path clears the dead writer's staging directory.
    run_ranks(cluster, "save", f"{workdir}/step-2", 1, mib=1, seed=3)
    assert client.listdir(workdir) == ["step-1", "step-2"]
    run_ranks(cluster, "load", f"{workdir}/step-2", 1, mib=1, seed=3)


def test_logic_node_killed_during_upload(cluster, client: cairn.Client, workdir: str) -> None:
    sd = {"w": torch.randn(100 << 20 >> 2), "step": 3}  # 100 MB
    path = f"{workdir}/ckpt"
    errors: list[BaseException] = []

    def save() -> None:
        try:
            dcp.save(sd, storage_writer=CairnStorageWriter(path, client=client))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    t = threading.Thread(target=save)
    t.start()
    try:
        wait_for_staging(client, workdir, "ckpt")
        os.kill(cluster.pid("logic-1"), signal.SIGKILL)
        t.join(timeout=300)
    finally:
        restarted = cluster.up()
    assert restarted.returncode == 0, restarted.stderr
    assert not t.is_alive() and not errors, errors
    got = {"w": torch.zeros_like(sd["w"]), "step": 0}
    dcp.load(got, storage_reader=CairnStorageReader(path, client=client))
    assert torch.equal(got["w"], sd["w"]) and got["step"] == 3
