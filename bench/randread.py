"""Random reads through the Python client: THREADS threads, each with its own open file,
read BLOCK bytes at random BLOCK-aligned offsets of one file for SECONDS seconds (page
cache dropped first). Prints one result line: reads per second and MB/s.

    python bench/randread.py --path /rand/data --gib 1 --seconds 15 --threads 4 --block 65536
"""
import argparse
import os
import random
import threading
import time

import cairn
import numpy as np


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--path", default="/rand/data")
    p.add_argument("--gib", type=float, default=1)
    p.add_argument("--seconds", type=float, default=15)
    p.add_argument("--threads", type=int, default=4)
    p.add_argument("--block", type=int, default=64 * 1024)
    a = p.parse_args()
    c = cairn.connect()
    size = int(a.gib * (1 << 30)) // a.block * a.block
    c.makedirs(os.path.dirname(a.path), exist_ok=True)
    data = np.random.default_rng(5).integers(0, 255, size, dtype=np.uint8)
    with c.open(a.path, "wb") as f:
        f.write(memoryview(data))
    os.system("sync; echo 3 > /proc/sys/vm/drop_caches")
    counts = [0] * a.threads
    stop = time.monotonic() + a.seconds

    def reader(i):
        rng = random.Random(i)
        buf = bytearray(a.block)
        with c.open(a.path, "rb") as f:
            while time.monotonic() < stop:
                at = rng.randrange(size // a.block) * a.block
                f.seek(at)
                if f.readinto(buf) != a.block or buf[:64] != data[at : at + 64].tobytes():
                    raise SystemExit(f"wrong bytes at {at}")
                counts[i] += 1

    start = time.monotonic()
    threads = [threading.Thread(target=reader, args=(i,)) for i in range(a.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    secs = time.monotonic() - start
    n = sum(counts)
    print(
        f"cairn random read bs={a.block} threads={a.threads} reads/s={n / secs:.0f} "
        f"MB/s={n * a.block / secs / 1e6:.1f}",
        flush=True,
    )


if __name__ == "__main__":
    main()
