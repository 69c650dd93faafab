"""Cairn's Python client: files on a Cairn cluster, through its logic nodes.

    import cairn
    c = cairn.connect()                  # CAIRN_CLUSTER, else the `cairnctl local up` cluster
    with c.open("/data/x.bin", "wb") as f:
        f.write(memoryview(array))       # any contiguous buffer; numpy arrays and CPU tensors too
    with c.open("/data/x.bin", "rb") as f:
        f.readinto(out)                  # straight into the caller's memory

A file's writes become durable and visible to every later open when it is closed (its
layout is committed through Raft), never partly. Calls that wait on the cluster release
the GIL. Errors are Python's own: ``FileNotFoundError``, ``FileExistsError``,
``NotADirectoryError``, ``IsADirectoryError``, ``PermissionError``, ``OSError`` (with
its ``errno``), and ``TimeoutError`` when no logic node answers in time.

``cairn.torch`` holds the PyTorch Distributed Checkpoint storage (``CairnStorageWriter``,
``CairnStorageReader``).
"""

from __future__ import annotations

import errno as _errno
import io
import os
import posixpath
import threading
from typing import IO, Any, Iterable

from ._cairn import Client as _Native
from ._cairn import RawFile as _RawFile
from ._cairn import Stat

__all__ = ["CairnFile", "Client", "Stat", "connect", "default_client", "LOCAL_CLUSTER"]

#: Where `cairnctl local up` describes the cluster it started (its default directory).
LOCAL_CLUSTER = os.path.join(os.path.expanduser("~"), ".cache", "cairn", "local", "cluster.toml")
#: Buffer of the file objects `open` returns unless told otherwise (large writes and
#: reads bypass it).
BUFFER_BYTES = 1 << 20
#: The same for files opened only for reading. The native reader already reads ahead
#: for a sequential reader, so this buffer only saves native calls on small reads; a
#: large one would make every random read fetch all of it.
READ_BUFFER_BYTES = 128 << 10


def _native(cluster: str | os.PathLike[str] | Iterable[str] | None, timeout: float) -> _Native:
    if cluster is None:
        cluster = os.environ.get("CAIRN_CLUSTER") or LOCAL_CLUSTER
    if isinstance(cluster, (str, os.PathLike)):
        text = os.fspath(cluster)
        if os.path.exists(text):
            return _Native.from_config(text, timeout)
        if ":" in text and "/" not in text:
            return _Native([a.strip() for a in text.split(",") if a.strip()], timeout)
        raise FileNotFoundError(
            _errno.ENOENT,
            "no Cairn cluster config here (set CAIRN_CLUSTER to a cluster config or to "
            "host:port,host:port of its logic nodes, or start one with `cairnctl local up`)",
            text,
        )
    return _Native(list(cluster), timeout)


def connect(cluster: str | os.PathLike[str] | Iterable[str] | None = None, *, timeout: float = 60.0) -> Client:
    """A client of a Cairn cluster.

    ``cluster`` is a cluster config file (such as the ``cluster.toml`` of a local
    cluster), a list of logic node addresses ("host:port", the cluster using Cairn's
    default 4+2 code) or such a list joined with commas. Without it: ``CAIRN_CLUSTER``,
    else the cluster ``cairnctl local up`` started. A request that no logic node answers
    within ``timeout`` seconds raises ``TimeoutError``.
    """
    return Client(_native(cluster, timeout))


_default: Client | None = None
_default_lock = threading.Lock()


def default_client() -> Client:
    """One shared client of the cluster `connect()` finds, made on first use."""
    global _default
    with _default_lock:
        if _default is None:
            _default = connect()
        return _default


def _bytes_view(b: Any) -> memoryview:
    """A flat byte view of any contiguous buffer (CPU tensors included), without a copy."""
    if type(b).__module__.startswith("torch") and hasattr(b, "untyped_storage"):
        t = b.detach()
        if t.device.type != "cpu":
            raise ValueError("only tensors in host memory can be written; copy to the CPU first")
        if not t.is_contiguous():
            raise ValueError("a tensor written must be contiguous")
        import torch

        b = t.reshape(-1).view(torch.uint8).numpy()
    m = memoryview(b)
    if m.format != "B" or m.ndim != 1:
        m = m.cast("B")
    return m


class CairnFile(io.RawIOBase):
    """An open Cairn file as a raw binary stream (wrap it in ``io.Buffered*``, or use
    ``Client.open``, which does). ``close`` commits: it returns once the content is
    durable and visible to every later open. ``flush`` of this raw stream commits too."""

    def __init__(self, raw: _RawFile, name: str, mode: str) -> None:
        super().__init__()
        self._raw = raw
        self.name = name
        self.mode = mode

    def readable(self) -> bool:
        return self._raw.readable()

    def writable(self) -> bool:
        return self._raw.writable()

    def seekable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        return self._raw.readinto(_bytes_view(b))

    def readall(self) -> bytes:
        here = self._raw.tell()
        end = self._raw.seek(0, os.SEEK_END)
        self._raw.seek(here)
        buf = bytearray(max(end - here, 0))
        n = self._raw.readinto(buf) if buf else 0
        del buf[n:]
        rest = bytearray(BUFFER_BYTES)
        while True:
            # The file may have grown since it was measured.
            k = self._raw.readinto(rest)
            if k == 0:
                return bytes(buf)
            buf += rest[:k]

    def write(self, b: Any) -> int:
        return self._raw.write(_bytes_view(b))

    def write_retained(self, b: Any) -> int:
        """Writes ``b`` as ``write`` does, but returns once its stripes are sent, not
        stored, so the next write overlaps their storing. ``b`` must stay unchanged until
        this file is flushed or closed (for buffers kept anyway, such as staged
        checkpoint tensors); the file holds it until then."""
        return self._raw.write_retained(_bytes_view(b))

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._raw.seek(offset, whence)

    def tell(self) -> int:
        return self._raw.tell()

    def truncate(self, size: int | None = None) -> int:
        return self._raw.truncate(size)

    def flush(self) -> None:
        # IOBase.close flushes after `close` below has closed the native file.
        if not self._raw.closed:
            self._raw.flush()

    def close(self) -> None:
        if self.closed:
            return
        try:
            self._raw.close()
        finally:
            super().close()


def _parse_mode(mode: str) -> dict[str, bool]:
    kinds = set(mode)
    if len(kinds) != len(mode) or not kinds <= set("rwxab+t") or len(kinds & set("rwxa")) != 1:
        raise ValueError(f"invalid mode: {mode!r}")
    if "b" in kinds and "t" in kinds:
        raise ValueError(f"invalid mode: {mode!r}")
    plus = "+" in kinds
    return {
        "read": "r" in kinds or plus,
        "write": "r" not in kinds or plus,
        "create": "r" not in kinds,
        "exclusive": "x" in kinds,
        "truncate": "w" in kinds,
        "append": "a" in kinds,
    }


class Client:
    """Files and directories of one cluster, by absolute path. Safe to share between
    threads; every call that waits on the cluster releases the GIL."""

    def __init__(self, native: _Native) -> None:
        self._native = native

    def open(
        self,
        path: str,
        mode: str = "rb",
        buffering: int = -1,
        encoding: str | None = None,
        errors: str | None = None,
        newline: str | None = None,
    ) -> IO[Any]:
        """Opens a file as the built-in ``open`` does (modes r, w, x, a, with + and b or
        t). ``buffering=0`` gives the raw ``CairnFile``."""
        flags = _parse_mode(mode)
        raw = CairnFile(self._native.open(path, **flags), path, mode)
        binary = "b" in mode
        if buffering == 0:
            if not binary:
                raise ValueError("can't have unbuffered text I/O")
            return raw
        default = BUFFER_BYTES if flags["write"] else READ_BUFFER_BYTES
        size = default if buffering in (-1, 1) else buffering
        buffered: io.BufferedIOBase
        try:
            if flags["read"] and flags["write"]:
                buffered = io.BufferedRandom(raw, size)
            elif flags["write"]:
                buffered = io.BufferedWriter(raw, size)
            else:
                buffered = io.BufferedReader(raw, size)
        except BaseException:
            raw.close()
            raise
        if binary:
            return buffered
        return io.TextIOWrapper(buffered, encoding=encoding or "utf-8", errors=errors, newline=newline)

    def stat(self, path: str) -> Stat:
        return self._native.stat(path)

    def exists(self, path: str) -> bool:
        try:
            self._native.stat(path)
        except FileNotFoundError:
            return False
        return True

    def isdir(self, path: str) -> bool:
        try:
            return self._native.stat(path).is_dir()
        except FileNotFoundError:
            return False

    def listdir(self, path: str = "/") -> list[str]:
        return self._native.listdir(path)

    def mkdir(self, path: str, mode: int = 0o777) -> None:
        self._native.mkdir(path, mode)

    def makedirs(self, path: str, mode: int = 0o777, exist_ok: bool = False) -> None:
        if not exist_ok and self.exists(path):
            raise FileExistsError(_errno.EEXIST, "File exists", path)
        self._native.makedirs(path, mode)

    def rename(self, src: str, dst: str) -> None:
        """Renames atomically (one Raft entry); a file or empty directory at ``dst`` is
        replaced."""
        self._native.rename(src, dst)

    replace = rename

    def remove(self, path: str) -> None:
        self._native.remove(path)

    unlink = remove

    def rmdir(self, path: str) -> None:
        self._native.rmdir(path)

    def rmtree(self, path: str) -> None:
        """Removes the directory ``path`` and everything under it."""
        for name in self._native.listdir(path):
            child = posixpath.join(path, name)
            if self._native.stat(child).is_dir():
                self.rmtree(child)
            else:
                self._native.remove(child)
        self._native.rmdir(path)

    def write_bytes(self, path: str, data: Any) -> None:
        """Replaces the file at ``path`` with ``data`` (any contiguous buffer)."""
        with self.open(path, "wb", buffering=0) as f:
            f.write(data)

    def read_bytes(self, path: str) -> bytes:
        with self.open(path, "rb", buffering=0) as f:
            return f.readall()
