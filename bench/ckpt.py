"""One method of the checkpoint benchmark (bench/ckpt.sh runs them all in one run).

A training-loop stand-in holds STATE_GIB of float32 tensors in host memory, takes
steps (a cheap in-place update of one tensor each) and checkpoints every EVERY steps,
CHECKPOINTS times. Printed, one line: the stall per checkpoint (how long the loop waited),
the time until each checkpoint was complete, the restore time of the last one (page
cache dropped first; into tensors already initialised, as a restarted job's model is),
the bytes, the process's peak RSS, and a bare copy of the state
into the restored tensors timed at the end of the same process, beside the last stall;
cairn-async also times the bare copy into its own staging buffers, right after the
checkpoints.

With --disk-file, the disk limits are also measured next to what they bound, since this
machine's disk swings by a third within minutes: sequential write and read (fio,
O_DIRECT, 1 MiB blocks, libaio queue depth 16: one of the rows of
../shared/bench/limits.sh) of a file of the state's size at that path, before the first
checkpoint, between the last one and the restore, and after the restore. The completion
is set beside the writes before and after the checkpoints, the restore beside the reads
before and after it.

The Cairn methods also print the CPU time every process of the path spent per GB
(this process, and the local cluster's FUSE daemon, logic nodes, dataservers and
metadata voters, from the pid files beside CAIRN_CLUSTER), over the last checkpoint
(from its stage to its completion: the first one also faults in the staging buffers)
and over the restore, and the throughput those costs allow on this machine's cores: a
figure the disk's swings do not move.

    python bench/ckpt.py METHOD --dir DIR [--gib 2] [--every 5] [--checkpoints 2] [--disk-file F]

METHOD: memcpy (copy the state into preallocated tensors: the bare copy), torch-save
(torch.save + fsync to DIR), dcp-fs (dcp.save, FileSystemWriter, to DIR), dcp-fs-async
(dcp.async_save, FileSystemWriter, to DIR: the Cairn FUSE mount in ckpt.sh), cairn-async
(dcp.async_save, CairnStorageWriter, to DIR inside the cluster of CAIRN_CLUSTER).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
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


def disk_limits(path: str, size: int) -> tuple[float, float]:
    """MB/s of a sequential write of a new file at `path` (ending with fsync), then of
    reading it back with the page cache dropped, as ../shared/bench/limits.sh measures
    (fio, O_DIRECT, 1 MiB blocks, libaio, queue depth 16). The file is removed: an
    overwrite of allocated blocks, or a read of what the disk has just read, runs far
    faster than either limit on this machine's virtual disk."""

    def fio(rw: str) -> float:
        out = subprocess.run(
            ["fio", "--name=adjacent", f"--filename={path}", f"--rw={rw}", "--bs=1M", f"--size={size}",
             "--direct=1", "--ioengine=libaio", "--iodepth=16", "--end_fsync=1", "--output-format=json"],
            check=True, capture_output=True, text=True,
        ).stdout
        return json.loads(out)["jobs"][0][rw]["bw_bytes"] / 1e6

    try:
        os.remove(path)
    except FileNotFoundError:
        pass
    write = fio("write")
    drop_caches()
    read = fio("read")
    os.remove(path)
    return write, read


CLUSTER_ROLES = ("fuse", "logic", "dataserver", "metadata")


def cluster_pids() -> dict[str, list[int]]:
    """The local cluster's processes by role, from the pid files `cairnctl local up`
    writes beside the cluster's configuration (none without CAIRN_CLUSTER)."""
    conf = os.environ.get("CAIRN_CLUSTER")
    if not conf:
        return {}
    pids: dict[str, list[int]] = {}
    for name in os.listdir(os.path.dirname(conf)):
        role = name.split("-")[0].removesuffix(".pid")
        if name.endswith(".pid") and role in CLUSTER_ROLES:
            with open(os.path.join(os.path.dirname(conf), name)) as f:
                pids.setdefault(role, []).append(int(f.read()))
    return pids


def bare_copy(src: dict[str, torch.Tensor], dst: dict[str, torch.Tensor]) -> float:
    """The faster of two timed copies of every tensor of `src` into `dst`, in seconds."""
    copies = []
    for _ in range(2):
        t0 = time.perf_counter()
        for k, v in src.items():
            dst[k].copy_(v)
        copies.append(time.perf_counter() - t0)
    return min(copies)


def cpu_seconds(pids: dict[str, list[int]]) -> dict[str, float]:
    """User and system CPU seconds so far: this process's ("client") and each role's."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    out = {"client": ru.ru_utime + ru.ru_stime}
    tick = os.sysconf("SC_CLK_TCK")
    for role, ps in pids.items():
        out[role] = 0.0
        for pid in ps:
            with open(f"/proc/{pid}/stat") as f:
                # Fields 14 and 15 (utime, stime), counted after the parenthesised name.
                fields = f.read().rsplit(")", 1)[1].split()
            out[role] += (int(fields[11]) + int(fields[12])) / tick
    return out


def cpu_per_gb(before: dict[str, float], after: dict[str, float], nbytes: int) -> str:
    """CPU seconds per GB by process between two `cpu_seconds`, their total, and the MB/s
    that total allows on this machine's cores."""
    per = {k: (after[k] - before[k]) / (nbytes / 1e9) for k in before}
    total = sum(per.values())
    parts = "/".join(f"{k}:{v:.2f}" for k, v in per.items())
    return f"{parts}/total:{total:.2f} cpu_bound_MBps={os.cpu_count() / total * 1e3:.0f}"


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
    ap.add_argument("--disk-file", help="measure the disk limits next to the checkpoints and restore")
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

    limits: list[tuple[float, float]] = []
    if a.disk_file:
        limits.append(disk_limits(a.disk_file, size))
    cairn_path = a.method in ("dcp-fs-async", "cairn-async")
    pids = cluster_pids() if cairn_path else {}
    cpu_marks: list[dict[str, float]] = []

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
        if cairn_path and i == a.every * a.checkpoints:
            cpu_marks.append(cpu_seconds(pids))
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
    if cairn_path:
        cpu_marks.append(cpu_seconds(pids))
    # The bare copy of the state into the very buffers the stall copied it into: how fast
    # one copy of the same bytes runs also depends on which physical pages the
    # destination got (here the same copy took 0.08 s into one allocation and 0.13 s into
    # another, in one process), so this is the like-for-like figure for the stall.
    staged_copy = ""
    if a.method == "cairn-async":
        copy_s = bare_copy(sd, writer._staged)
        staged_copy = f" copy_into_staging_s={copy_s:.3f} last_stall_vs_copy_into_staging={stalls[-1] / copy_s:.2f}x"
    if a.disk_file:
        limits.append(disk_limits(a.disk_file, size))

    restore = 0.0
    if a.method != "memcpy":
        # Initialised (its pages touched), as the model a restarted job loads into: the
        # restore is timed, not the first touch of 2 GiB of fresh memory.
        target = {k: torch.zeros_like(v) for k, v in sd.items()}
        drop_caches()
        if cairn_path:
            cpu_marks.append(cpu_seconds(pids))
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
        if cairn_path:
            cpu_marks.append(cpu_seconds(pids))
        if a.disk_file:
            limits.append(disk_limits(a.disk_file, size))
        assert all(torch.equal(target[k], sd[k]) for k in sd), "restored state differs"
        # The bare copy of the same bytes in this process, minutes after the run's memcpy
        # method: the machine's speed drifts, so each stall is also set beside this.
        memcpy_s = bare_copy(sd, target)
    else:
        memcpy_s = stalls[-1]

    mb = size / 1e6
    # Which connections the Cairn methods' processes used (common/src/transport.rs).
    transport = ""
    cpu = ""
    if cairn_path:
        transport = f" transport={os.environ.get('CAIRN_TRANSPORT', 'local')}"
        cpu = (
            f" cpu_s_per_GB_checkpoint={cpu_per_gb(cpu_marks[0], cpu_marks[1], size)}"
            f" cpu_s_per_GB_restore={cpu_per_gb(cpu_marks[2], cpu_marks[3], size)}"
        )
    fmt = lambda xs: "/".join(f"{x:.3f}" for x in xs)  # noqa: E731
    # The targets of issue 7, against the limits measured next to each figure: completion
    # against the write limit / 1.5 (4+2 writes 1.5 bytes per byte), restore against the
    # read limit, each limit the mean of its two passes.
    adjacent = ""
    if len(limits) == 3:
        mean_write = (limits[0][0] + limits[1][0]) / 2
        mean_read = (limits[1][1] + limits[2][1]) / 2
        adjacent = (
            f" disk_write_adjacent_MBps={'/'.join(f'{w:.0f}' for w, _ in limits)}"
            f" disk_read_adjacent_MBps={'/'.join(f'{r:.0f}' for _, r in limits)}"
            f" complete_vs_write_limit_over_1.5={mb / completes[-1] / (mean_write / 1.5):.0%}"
            f" restore_vs_read_limit={mb / restore / mean_read:.0%}"
        )
    print(
        f"ckpt {a.method} state_MB={mb:.0f} stall_s={fmt(stalls)} complete_s={fmt(completes)} "
        f"complete_MBps={mb / completes[-1]:.0f} restore_s={restore:.3f} "
        f"restore_MBps={(mb / restore) if restore else 0:.0f} peak_rss_MiB={rss_mib:.0f} "
        f"memcpy_here_s={memcpy_s:.3f} last_stall_vs_memcpy_here={stalls[-1] / memcpy_s:.2f}x"
        f"{staged_copy}{transport}{adjacent}{cpu}",
        flush=True,
    )
    if a.method in ("torch-save", "dcp-fs"):
        shutil.rmtree(a.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
