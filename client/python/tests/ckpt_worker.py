"""One rank of a checkpoint test, run as its own process (several make a gloo group).

    python ckpt_worker.py save|load PATH --rank R --world W --port P [--mib N] [--seed S]

The state of rank R with seed S is deterministic, so any process can check it: tensors
shared by every rank plus tensors of this rank's own. `load` exits non-zero if anything
loaded differs bit for bit.
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

from cairn.torch import CairnStorageReader, CairnStorageWriter


def state(rank: int, world: int, mib: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    shared = {
        "embed": torch.randn(1000, 64, generator=g),
        "norm": torch.randn(64, generator=g).to(torch.bfloat16),
        "step": torch.tensor(seed, dtype=torch.int64),
    }
    gr = torch.Generator().manual_seed(seed * 1000 + rank)
    own = {f"rank{rank}.w": torch.randn(mib * (1 << 18), generator=gr)}  # mib MiB of float32
    return {"model": shared, "own": own, "meta": {"seed": seed, "note": "cairn"}}


def blank(rank: int, world: int, mib: int) -> dict:
    s = state(rank, world, mib, 0)
    zeros = {k: torch.zeros_like(v) for k, v in s["model"].items()}
    return {
        "model": zeros,
        "own": {k: torch.zeros_like(v) for k, v in s["own"].items()},
        "meta": {"seed": -1, "note": ""},
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["save", "load"])
    ap.add_argument("path")
    ap.add_argument("--rank", type=int, default=0)
    ap.add_argument("--world", type=int, default=1)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--mib", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    if a.world > 1:
        dist.init_process_group(
            "gloo", init_method=f"tcp://127.0.0.1:{a.port}", rank=a.rank, world_size=a.world
        )
    if a.mode == "save":
        dcp.save(state(a.rank, a.world, a.mib, a.seed), storage_writer=CairnStorageWriter(a.path))
    else:
        got = blank(a.rank, a.world, a.mib)
        dcp.load(got, storage_reader=CairnStorageReader(a.path))
        want = state(a.rank, a.world, a.mib, a.seed)
        for part in ("model", "own"):
            for k, v in want[part].items():
                if not torch.equal(got[part][k], v):
                    raise SystemExit(f"rank {a.rank}: {part}.{k} differs")
        if got["meta"] != want["meta"]:
            raise SystemExit(f"rank {a.rank}: meta {got['meta']} != {want['meta']}")
    if a.world > 1:
        dist.barrier()
        dist.destroy_process_group()
    print(f"rank {a.rank} {a.mode} ok", flush=True)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
