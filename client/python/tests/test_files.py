"""The package's file API against a real local cluster."""

from __future__ import annotations

import errno
import io
import os
import random
import threading
import tomllib
import zlib

import numpy as np
import pytest
import torch

import cairn


def crc(b: bytes) -> int:
    return zlib.crc32(b)


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, (1 << 20) - 1, 1 << 20, (1 << 20) + 1, 9_000_001])
def test_sizes_round_trip(client: cairn.Client, workdir: str, size: int) -> None:
    data = os.urandom(size)
    path = f"{workdir}/f{size}"
    with client.open(path, "wb") as f:
        # Small and large pieces, through the buffer and past it.
        f.write(data[:7])
        f.write(memoryview(data)[7:])
    assert client.stat(path).st_size == size
    assert crc(client.read_bytes(path)) == crc(data)
    with client.open(path, "rb") as f:
        assert crc(f.read()) == crc(data)


def test_a_written_buffer_may_change_once_write_returns(client: cairn.Client, workdir: str) -> None:
    """Whole stripes go out straight from the caller's buffer, and write returns once
    they are stored: what the caller does to the buffer afterwards changes nothing."""
    arr = np.random.default_rng(7).integers(0, 256, 40 << 20, dtype=np.uint8)
    want = arr.tobytes()
    path = f"{workdir}/shared"
    with client.open(path, "wb", buffering=0) as f:
        f.write(b"abc")  # the buffer's stripes start 3 bytes into it
        f.write(arr)
        arr[:] = 0
        f.write(arr[:5])
    assert crc(client.read_bytes(path)) == crc(b"abc" + want + bytes(5))

    # Stripes already stored, written again whole from another buffer.
    other = np.random.default_rng(8).integers(0, 256, 20 << 20, dtype=np.uint8)
    with client.open(path, "r+b", buffering=0) as f:
        f.seek(3 + (4 << 20))
        f.write(other)
    edited = b"abc" + want[: 4 << 20] + other.tobytes() + want[(24 << 20) :] + bytes(5)
    assert crc(client.read_bytes(path)) == crc(edited)

    # The buffer is no longer exported once write returns: a bytearray may grow.
    grows = bytearray(want[: 17 << 20])
    with client.open(path, "wb", buffering=0) as f:
        f.write(grows)
        grows.extend(b"more")
    assert crc(client.read_bytes(path)) == crc(want[: 17 << 20])


def test_retained_writes_hold_their_buffers_until_the_file_commits(client: cairn.Client, workdir: str) -> None:
    """write_retained may return before its stripes are stored: the file keeps the
    buffers exported at most until flush or close commits, and the content is every
    buffer, in order."""
    rng = np.random.default_rng(9)
    parts = [bytearray(rng.integers(0, 256, n, dtype=np.uint8).tobytes()) for n in (3, 24 << 20, 17 << 20, 5)]
    path = f"{workdir}/retained"
    with client.open(path, "wb", buffering=0) as f:
        for p in parts:
            assert f.write_retained(p) == len(p)
        f.flush()
        parts[1].extend(b"x")  # committed: released
        assert f.write_retained(parts[2]) == len(parts[2])
    parts[2].extend(b"y")  # closed: released
    want = b"".join(bytes(p) for p in (parts[0], parts[1][:-1], parts[2][:-1], parts[3], parts[2][:-1]))
    assert crc(client.read_bytes(path)) == crc(want)


def test_retained_writes_beside_another_thread_on_the_same_file(client: cairn.Client, workdir: str) -> None:
    """Releasing a retained buffer takes the GIL: it must never happen under the file's
    lock, which another thread holding the GIL may be waiting for (tell, closed)."""
    parts = [np.random.default_rng(i).integers(0, 256, 9 << 20, dtype=np.uint8) for i in range(6)]
    path = f"{workdir}/retained-threads"
    done = threading.Event()
    seen: list[int] = []

    def watch(f: io.RawIOBase) -> None:
        while not done.is_set():
            seen.append(f.tell())
            assert not f.closed

    with client.open(path, "wb", buffering=0) as f:
        watcher = threading.Thread(target=watch, args=(f,))
        watcher.start()
        try:
            for p in parts:
                f.write_retained(p)
            f.flush()
        finally:
            done.set()
            watcher.join(timeout=60)
        assert not watcher.is_alive()
    assert seen and seen[-1] <= sum(p.nbytes for p in parts)
    assert crc(client.read_bytes(path)) == crc(b"".join(p.tobytes() for p in parts))


def test_buffers_without_copies(client: cairn.Client, workdir: str) -> None:
    arr = np.arange(3_000_000, dtype=np.float32)
    client.write_bytes(f"{workdir}/arr", arr)
    out = np.empty_like(arr)
    with client.open(f"{workdir}/arr", "rb", buffering=0) as f:
        assert f.readinto(out) == arr.nbytes
        assert f.readinto(bytearray(10)) == 0
    assert np.array_equal(out, arr)

    t = torch.randn(513, 257).to(torch.bfloat16)
    client.write_bytes(f"{workdir}/t", t)
    back = torch.empty_like(t)
    with client.open(f"{workdir}/t", "rb", buffering=0) as f:
        f.readinto(back.view(torch.uint8).numpy())
    assert torch.equal(back, t)


def test_large_reads_land_in_the_callers_memory(client: cairn.Client, workdir: str) -> None:
    # Reads of 16 MiB and more that no read-ahead window holds are received straight into
    # the caller's buffer, 16 MiB per request: from the start, and after a small read
    # and a seek past its read-ahead, into a buffer larger than what is left.
    data = np.random.default_rng(7).integers(0, 256, 40_000_003, dtype=np.uint8)
    client.write_bytes(f"{workdir}/big", data)
    whole = np.empty_like(data)
    with client.open(f"{workdir}/big", "rb", buffering=0) as f:
        assert f.readinto(whole) == data.nbytes
    assert np.array_equal(whole, data)
    with client.open(f"{workdir}/big", "rb", buffering=0) as f:
        head = bytearray(10)
        assert f.readinto(head) == 10 and bytes(head) == data[:10].tobytes()
        f.seek(30_000_000)
        rest = np.zeros(data.nbytes, dtype=np.uint8)
        assert f.readinto(rest) == data.nbytes - 30_000_000
        assert f.readinto(rest) == 0
    assert np.array_equal(rest[: data.nbytes - 30_000_000], data[30_000_000:])
    assert not rest[data.nbytes - 30_000_000 :].any()


def test_random_reads_then_a_sequential_run(client: cairn.Client, workdir: str) -> None:
    # A read that does not follow the one before fetches about what it asks for (a part
    # of a stripe, from its data shards alone); reads that follow each other then read
    # ahead. Every byte is checked, buffered and raw, whatever window served it.
    data = np.random.default_rng(11).integers(0, 256, 9_000_001, dtype=np.uint8)
    client.write_bytes(f"{workdir}/rand", data)
    rng = random.Random(3)
    for buffering in (-1, 0):
        with client.open(f"{workdir}/rand", "rb", buffering=buffering) as f:
            for _ in range(200):
                at = rng.randrange(data.nbytes)
                n = rng.choice([1, 100, 4096, 65_536, 65_537, 300_000])
                f.seek(at)
                assert f.read(n) == data[at : at + n].tobytes(), (buffering, at, n)
            f.seek(1_234_567)
            run = b"".join(iter(lambda: f.read(10_000), b""))
            assert run == data[1_234_567:].tobytes()


def test_torch_save_and_load_through_file_objects(client: cairn.Client, workdir: str) -> None:
    model = torch.nn.Transformer(d_model=64, nhead=4, num_encoder_layers=2, num_decoder_layers=2)
    sd = model.state_dict()
    with client.open(f"{workdir}/model.pt", "wb") as f:
        torch.save(sd, f)
    with client.open(f"{workdir}/model.pt", "rb") as f:
        loaded = torch.load(f)
    assert sd.keys() == loaded.keys()
    assert all(torch.equal(sd[k], loaded[k]) for k in sd)


def test_modes_seek_truncate_append(client: cairn.Client, workdir: str) -> None:
    p = f"{workdir}/m"
    with client.open(p, "w") as f:
        f.write("héllo\n")
    with client.open(p, "a") as f:
        f.write("more\n")
    with client.open(p, "r") as f:
        assert f.read() == "héllo\nmore\n"
    with client.open(p, "r+b") as f:
        f.seek(1)
        f.write(b"E")
        f.seek(0)
        assert f.read(3) == b"hE\xa9"
        f.seek(-5, io.SEEK_END)
        assert f.read() == b"more\n"
        f.truncate(2)
    assert client.read_bytes(p) == b"hE"
    with client.open(p, "wb") as f:
        pass
    assert client.stat(p).st_size == 0
    with pytest.raises(FileExistsError):
        client.open(p, "xb")
    for bad in ["rw", "rr", "q", "rbt"]:
        with pytest.raises(ValueError):
            client.open(p, bad)


def test_nothing_is_visible_before_close(client: cairn.Client, workdir: str) -> None:
    p = f"{workdir}/v"
    client.write_bytes(p, b"old")
    f = client.open(p, "wb", buffering=0)
    f.write(b"new content")
    assert client.read_bytes(p) == b"old"
    f.close()
    assert client.read_bytes(p) == b"new content"


def test_namespace_calls_and_errors(client: cairn.Client, workdir: str) -> None:
    client.makedirs(f"{workdir}/a/b/c")
    client.makedirs(f"{workdir}/a/b/c", exist_ok=True)
    with pytest.raises(FileExistsError):
        client.makedirs(f"{workdir}/a/b/c")
    client.write_bytes(f"{workdir}/a/b/c/x", b"1")
    client.write_bytes(f"{workdir}/a/y", b"2")
    assert client.listdir(f"{workdir}/a") == ["b", "y"]
    assert client.isdir(f"{workdir}/a/b") and not client.isdir(f"{workdir}/a/y")
    st = client.stat(f"{workdir}/a/y")
    assert st.st_size == 1 and not st.is_dir() and st.st_mode & 0o170000 == 0o100000

    client.rename(f"{workdir}/a/y", f"{workdir}/a/b/c/x")
    assert client.read_bytes(f"{workdir}/a/b/c/x") == b"2"
    assert not client.exists(f"{workdir}/a/y")

    with pytest.raises(FileNotFoundError) as e:
        client.stat(f"{workdir}/nope")
    assert e.value.filename == f"{workdir}/nope"
    with pytest.raises(IsADirectoryError):
        client.open(f"{workdir}/a", "rb")
    with pytest.raises(NotADirectoryError):
        client.listdir(f"{workdir}/a/b/c/x")
    with pytest.raises(OSError) as e:
        client.rmdir(f"{workdir}/a")
    assert e.value.errno == errno.ENOTEMPTY
    with pytest.raises(OSError) as e:
        client.open(f"{workdir}/bad\0name", "wb")
    assert e.value.errno == errno.EINVAL
    with pytest.raises(OSError):
        client.open("/", "rb")

    client.rmtree(f"{workdir}/a")
    assert client.listdir(workdir) == []


def test_closed_files_and_read_only_files_refuse(client: cairn.Client, workdir: str) -> None:
    p = f"{workdir}/c"
    client.write_bytes(p, b"abc")
    f = client.open(p, "rb", buffering=0)
    with pytest.raises(OSError):
        f.write(b"x")
    f.close()
    f.close()
    with pytest.raises(ValueError):
        f.read()


def test_threads_write_in_parallel(client: cairn.Client, workdir: str) -> None:
    blobs = {i: os.urandom(3_000_000 + i) for i in range(8)}

    def put(i: int) -> None:
        client.write_bytes(f"{workdir}/p{i}", blobs[i])

    threads = [threading.Thread(target=put, args=(i,)) for i in blobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, b in blobs.items():
        assert crc(client.read_bytes(f"{workdir}/p{i}")) == crc(b)


def test_connect_finds_the_cluster(cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    client = cairn.connect(str(cluster.config))
    client.write_bytes("/connect-probe", b"here")
    monkeypatch.setenv("CAIRN_CLUSTER", str(cluster.config))
    assert cairn.connect().read_bytes("/connect-probe") == b"here"
    with open(cluster.config, "rb") as f:
        addrs = [n["addr"] for n in tomllib.load(f)["logic_nodes"]]
    assert cairn.connect(addrs).read_bytes("/connect-probe") == b"here"
    monkeypatch.setenv("CAIRN_CLUSTER", ",".join(addrs))
    assert cairn.connect().read_bytes("/connect-probe") == b"here"
    client.remove("/connect-probe")

    monkeypatch.setenv("CAIRN_CLUSTER", "/no/such/cluster.toml")
    with pytest.raises(FileNotFoundError):
        cairn.connect()
    with pytest.raises(ValueError):
        cairn.connect(["not an address"])
    with pytest.raises(ValueError):
        cairn.connect(str(cluster.config), timeout=0)
