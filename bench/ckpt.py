"""One method of the checkpoint benchmark (bench/ckpt.sh runs them all in one run).

A training-loop stand-in holds STATE_GIB of float32 tensors in host memory, takes
steps (a cheap in-place update of one tensor each) and checkpoints every EVERY steps,
CHECKPOINTS times. Printed, one line: the stall per checkpoint (how long the loop waited),
the time until each checkpoint was complete, the restore time of the last one (page
cache dropped first; into tensors already initialised, as a restarted job's model is),
the bytes, the process's peak RSS, and a bare copy of the state
into the restored tensors timed at the end of the same process, beside the last stall.

    python bench/ckpt.py METHOD --dir DIR [--gib 2] [--every 5] [--checkpoints 2]

METHOD: memcpy (copy the state into preallocated tensors: the bare copy), torch-save
(torch.save + fsync to DIR), dcp-fs (dcp.save, FileSystemWriter, to DIR), dcp-fs-async
(dcp.async_save, FileSystemWriter, to DIR: the Cairn FUSE mount in ckpt.sh), cairn-async
(dcp.async_save, CairnStorageWriter, to DIR inside the cluster of CAIRN_CLUSTER).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import time

import torch
import torch.distributed.checkpoint as dcp

TENSOR_MIB = 64


def make_state(gib: float) -> dict[str, torch.Tensor]:
    n = max(1, int(gib * 1024 / TENSOR_MIB))
    g = torch.Generator().manual_seed(0)
    return {f"layer{i}.weight": torch.rand(TENSOR_MIB << 18, generator=g) for i in range(n)}


def nbytes(sd: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in sd.values())


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def step(sd: dict[str, torch.Tensor], i: int) -> None:
    t = sd[f"layer{i % len(sd)}.weight"]
    t[: 1 << 16].add_(1.0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("method", choices=["memcpy", "torch-save", "dcp-fs", "dcp-fs-async", "cairn-async"])
    ap.add_argument("--dir", required=True)
    ap.add_argument("--gib", type=float, default=2.0)
    ap.add_argument("--every", type=int, default=5)
    ap.add_argument("--checkpoints", type=int, default=2)
    a = ap.parse_args()

    sd = make_state(a.gib)
    size = nbytes(sd)
    writer = None
    client = None
    if a.method == "cairn-async":
        import cairn
        from cairn.torch import CairnStorageWriter

        client = cairn.connect()
        writer = CairnStorageWriter(client=client, staging_budget_bytes=size, overwrite=True)
    elif a.method == "dcp-fs-async":
        writer = dcp.FileSystemWriter(a.dir, overwrite=True)
    dst = {k: torch.empty_like(v) for k, v in sd.items()} if a.method == "memcpy" else None

    stalls: list[float] = []
    completes: list[float] = []
    pending = None
    started = 0.0
    path = ""
    for i in range(1, a.every * a.checkpoints + 1):
        step(sd, i)
        if i % a.every:
            continue
        path = os.path.join(a.dir, f"step-{i}")
        t0 = time.perf_counter()
        if pending is not None:
            # Checkpoints never overlap here: each is measured alone.
            pending.result()
            completes.append(time.perf_counter() - started)
            pending = None
            t0 = time.perf_counter()
        started = t0
        if a.method == "memcpy":
            for k, v in sd.items():
                dst[k].copy_(v)
        elif a.method == "torch-save":
            os.makedirs(a.dir, exist_ok=True)
            with open(path + ".pt", "wb") as f:
                torch.save(sd, f)
                f.flush()
                os.fsync(f.fileno())
        elif a.method == "dcp-fs":
            dcp.save(sd, storage_writer=dcp.FileSystemWriter(path, overwrite=True))
        else:
            pending = dcp.async_save(sd, checkpoint_id=path, storage_writer=writer)
        stalls.append(time.perf_counter() - t0)
        if pending is None:
            completes.append(time.perf_counter() - t0)
        elif i == a.every * a.checkpoints:
            pending.result()
            completes.append(time.perf_counter() - started)
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    restore = 0.0
    if a.method != "memcpy":
        # Initialised (its pages touched), as the model a restarted job loads into: the
        # restore is timed, not the first touch of 2 GiB of fresh memory.
        target = {k: torch.zeros_like(v) for k, v in sd.items()}
        drop_caches()
        t0 = time.perf_counter()
        if a.method == "torch-save":
            with open(path + ".pt", "rb") as f:
                loaded = torch.load(f)
            for k, v in loaded.items():
                target[k].copy_(v)
        elif a.method == "cairn-async":
            from cairn.torch import CairnStorageReader

            dcp.load(target, storage_reader=CairnStorageReader(path, client=client))
        else:
            dcp.load(target, storage_reader=dcp.FileSystemReader(path))
        restore = time.perf_counter() - t0
        assert all(torch.equal(target[k], sd[k]) for k in sd), "restored state differs"
        # The bare copy of the same bytes in this process, minutes after the run's memcpy
        # method: the machine's speed drifts, so each stall is also set beside this.
        copies = []
        for _ in range(2):
            t0 = time.perf_counter()
            for k, v in sd.items():
                target[k].copy_(v)
            copies.append(time.perf_counter() - t0)
        memcpy_s = min(copies)
    else:
        memcpy_s = stalls[-1]

    mb = size / 1e6
    # Which connections the Cairn methods' processes used (common/src/transport.rs).
    transport = ""
    if a.method in ("dcp-fs-async", "cairn-async"):
        transport = f" transport={os.environ.get('CAIRN_TRANSPORT', 'local')}"
    fmt = lambda xs: "/".join(f"{x:.3f}" for x in xs)  # noqa: E731
    print(
        f"ckpt {a.method} state_MB={mb:.0f} stall_s={fmt(stalls)} complete_s={fmt(completes)} "
        f"complete_MBps={mb / completes[-1]:.0f} restore_s={restore:.3f} "
        f"restore_MBps={(mb / restore) if restore else 0:.0f} peak_rss_MiB={rss_mib:.0f} "
        f"memcpy_here_s={memcpy_s:.3f} last_stall_vs_memcpy_here={stalls[-1] / memcpy_s:.2f}x"
        f"{transport}",
        flush=True,
    )
    if a.method in ("torch-save", "dcp-fs"):
        shutil.rmtree(a.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
