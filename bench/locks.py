#!/usr/bin/env python3
"""Locks through two mounts of one cluster (bench/locks.sh starts them).

1. Uncontended: one process takes and releases a write lock (lockf) on one mount, one
   pair after another; each call is one Raft entry of the metadata group.
2. Hand-over: a holder on mount A keeps the lock for a random 50-300 ms while a waiter
   on mount B blocks in lockf(LOCK_EX); the figure is the time from the holder's unlock
   returning to the waiter's lock returning (CLOCK_MONOTONIC is shared by the two
   processes).

Usage: locks.py MOUNT_A MOUNT_B [PAIRS] [ROUNDS]
"""
import fcntl
import multiprocessing as mp
import os
import random
import statistics
import sys
import time


def pct(values, p):
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * p))]


def pairs(path, n):
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    took = []
    for _ in range(n):
        t = time.perf_counter()
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.lockf(fd, fcntl.LOCK_UN)
        took.append(time.perf_counter() - t)
    os.close(fd)
    return took


def waiter(path, conn, rounds):
    fd = os.open(path, os.O_RDWR)
    for _ in range(rounds):
        conn.recv()
        conn.send("waiting")
        fcntl.lockf(fd, fcntl.LOCK_EX)
        got = time.perf_counter()
        fcntl.lockf(fd, fcntl.LOCK_UN)
        conn.send(got)
    os.close(fd)


def main():
    a, b = sys.argv[1], sys.argv[2]
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 500
    rounds = int(sys.argv[4]) if len(sys.argv) > 4 else 40
    path_a, path_b = os.path.join(a, "lockfile"), os.path.join(b, "lockfile")
    with open(path_a, "wb") as f:
        f.write(b"x")

    took = pairs(path_a, n)
    total = sum(took)
    print(
        f"uncontended pairs={n} pairs_per_s={n / total:.0f} "
        f"p50_ms={pct(took, 0.5) * 1e3:.2f} p99_ms={pct(took, 0.99) * 1e3:.2f}"
    )

    here, there = mp.Pipe()
    proc = mp.get_context("fork").Process(target=waiter, args=(path_b, there, rounds))
    proc.start()
    fd = os.open(path_a, os.O_RDWR)
    rng = random.Random(7)
    handover = []
    for _ in range(rounds):
        fcntl.lockf(fd, fcntl.LOCK_EX)
        here.send("held")
        here.recv()
        time.sleep(rng.uniform(0.05, 0.3))
        fcntl.lockf(fd, fcntl.LOCK_UN)
        released = time.perf_counter()
        handover.append(here.recv() - released)
    os.close(fd)
    proc.join()
    print(
        f"handover rounds={rounds} p50_ms={pct(handover, 0.5) * 1e3:.1f} "
        f"p99_ms={pct(handover, 0.99) * 1e3:.1f} max_ms={max(handover) * 1e3:.1f} "
        f"mean_ms={statistics.mean(handover) * 1e3:.1f}"
    )


if __name__ == "__main__":
    main()
