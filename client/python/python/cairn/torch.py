"""PyTorch Distributed Checkpoint (``torch.distributed.checkpoint``) storage on Cairn.

    from cairn.torch import CairnStorageWriter, CairnStorageReader
    dcp.save(state_dict, storage_writer=CairnStorageWriter("/ckpt/step-100"))
    future = dcp.async_save(state_dict, storage_writer=writer)   # stalls only for the host copy
    dcp.load(state_dict, storage_reader=CairnStorageReader("/ckpt/step-100"))

A checkpoint at PATH is a directory: ``.metadata`` (DCP's pickled ``Metadata``) and
``__<rank>_<n>.distcp`` files holding the raw bytes of tensors (C order) and of the other
objects, back to back. Every rank writes into one staging directory beside PATH; after the
last rank's files are committed, the coordinator writes ``.metadata`` there and renames
the staging directory to PATH: one Raft entry, so a reader sees the whole checkpoint or
none of it, and a writer killed at any point leaves PATH (and every earlier checkpoint)
as it was. Stale staging directories of PATH are removed by the next save of PATH.

Async checkpoints: ``CairnStorageWriter`` is its own ``AsyncStager``. ``stage`` copies the
state into host buffers it keeps between checkpoints (so the copy is a plain memcpy, no
allocation); the upload then runs in the Rust client's threads with the GIL released.
Policy for a checkpoint staged while the previous one is still uploading: **wait** -
``stage`` blocks until the previous upload has read its buffers (at most ``stage_timeout``
seconds), so host memory for staging stays at one copy of the state
(``staging_budget_bytes`` caps it: a larger state is refused with ``ValueError``).

Restore reads each file in its own thread (sequential read-ahead within a file), straight
into the destination tensor's memory when it is a contiguous CPU tensor of the stored
chunk's shape and dtype.
"""

from __future__ import annotations

import dataclasses
import io
import os
import pickle
import posixpath
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from torch.futures import Future
from torch.distributed._state_dict_utils import _copy_state_dict, _create_cpu_state_dict
from torch.distributed.checkpoint.metadata import Metadata, MetadataIndex, StorageMeta, TensorStorageMetadata
from torch.distributed.checkpoint.planner import (
    LoadItemType,
    LoadPlan,
    LoadPlanner,
    ReadItem,
    SavePlan,
    SavePlanner,
    WriteItem,
    WriteItemType,
)
from torch.distributed.checkpoint.staging import AsyncStager
from torch.distributed.checkpoint.storage import StorageReader, StorageWriter, WriteResult

from . import Client, default_client

__all__ = ["CairnStorageWriter", "CairnStorageReader"]

METADATA_FILE = ".metadata"
SCHEME = "cairn://"


@dataclasses.dataclass(frozen=True)
class _Stored:
    """Where one item's bytes lie in the checkpoint."""

    relative_path: str
    offset: int
    length: int


@dataclasses.dataclass(frozen=True)
class _Written:
    """What a rank tells the coordinator of one item: where it lies, and in which staging
    directory (so `finish` needs no state that a later save may have changed)."""

    stored: _Stored
    staging: str


@dataclasses.dataclass(frozen=True)
class _RankPlan:
    """What the coordinator tells every rank: where to write and how to name files."""

    staging: str
    prefix: str


def _path(checkpoint_id: str | os.PathLike[str]) -> str:
    path = os.fspath(checkpoint_id)
    if path.startswith(SCHEME):
        path = path[len(SCHEME) :]
    path = posixpath.normpath("/" + path.lstrip("/"))
    if path == "/":
        raise ValueError("a checkpoint needs a directory of its own, not the root")
    return path


def _byte_view(t: torch.Tensor) -> memoryview:
    """The bytes of a contiguous CPU tensor, without a copy (any dtype)."""
    return memoryview(t.reshape(-1).view(torch.uint8).numpy())


def _tensor_bytes(state_dict: Any) -> int:
    if isinstance(state_dict, torch.Tensor):
        return state_dict.numel() * state_dict.element_size()
    if isinstance(state_dict, dict):
        return sum(_tensor_bytes(v) for v in state_dict.values())
    if isinstance(state_dict, (list, tuple)):
        return sum(_tensor_bytes(v) for v in state_dict)
    return 0


def _tensor_layout(state_dict: Any) -> Any:
    """The structure of a state: keys, and each tensor's shape, dtype and device. Staging
    buffers made for one layout serve every state of the same layout."""
    if isinstance(state_dict, torch.Tensor):
        return (tuple(state_dict.shape), state_dict.dtype, state_dict.device.type)
    if isinstance(state_dict, dict):
        return tuple((k, _tensor_layout(v)) for k, v in state_dict.items())
    if isinstance(state_dict, (list, tuple)):
        return tuple(_tensor_layout(v) for v in state_dict)
    return type(state_dict).__name__


def _item_bytes(item: WriteItem) -> int:
    if item.tensor_data is None:
        return item.bytes_io_data.nbytes if item.bytes_io_data is not None else 0
    size = 1
    for s in item.tensor_data.size:
        size *= s
    return size * item.tensor_data.properties.dtype.itemsize


def _buckets(items: list[WriteItem], n: int) -> list[list[WriteItem]]:
    """Items in `n` files of about equal size (largest first into the lightest file)."""
    bins: list[list[WriteItem]] = [[] for _ in range(max(1, n))]
    loads = [0] * len(bins)
    for item in sorted(items, key=_item_bytes, reverse=True):
        i = loads.index(min(loads))
        bins[i].append(item)
        loads[i] += _item_bytes(item)
    return [b for b in bins if b]


class _CairnStorage:
    """What the writer and the reader share: the client, the checkpoint's path (given
    at construction or as ``checkpoint_id``) and how many files move at once."""

    def _set_up(self, path: str | os.PathLike[str] | None, client: Client | None, thread_count: int) -> None:
        if thread_count < 1:
            raise ValueError("thread_count must be at least 1")
        self.client = client or default_client()
        self.path = _path(path) if path is not None else None
        self.thread_count = thread_count

    def _take_path(self, checkpoint_id: str | os.PathLike[str] | None) -> None:
        if checkpoint_id is not None:
            self.path = _path(checkpoint_id)

    @property
    def checkpoint_id(self) -> str | None:
        return self.path

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike[str]) -> bool:
        return os.fspath(checkpoint_id).startswith(SCHEME)


class CairnStorageWriter(_CairnStorage, StorageWriter, AsyncStager):
    """Writes DCP checkpoints into a Cairn cluster; see the module's description.

    ``path`` may be given here or as ``checkpoint_id``; ``client`` defaults to
    ``cairn.default_client()``. ``thread_count`` files are written per rank, in parallel
    (8 by default: each file has at most 4 stripes in flight, so more files keep more
    stripes moving). With ``overwrite``, a checkpoint already at the path is replaced
    (the old one is moved aside first, so the path is briefly absent, never partial);
    without it, saving over one raises ``FileExistsError``.
    """

    _synchronize_after_execute = False

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        client: Client | None = None,
        thread_count: int = 8,
        overwrite: bool = False,
        staging_budget_bytes: int | None = None,
        stage_timeout: float = 3600.0,
    ) -> None:
        super().__init__()
        self._set_up(path, client, thread_count)
        self.overwrite = overwrite
        self.staging_budget_bytes = staging_budget_bytes
        self.stage_timeout = stage_timeout
        self.save_id = ""
        self._staged: Any = None
        self._staged_layout: Any = None
        # Staging directory -> (checkpoint path, save id), on the coordinator, so saves
        # that overlap (async ones) each publish their own.
        self._publish: dict[str, tuple[str, str]] = {}
        # Set while no staged state is waiting to be (or being) uploaded.
        self._upload_done = threading.Event()
        self._upload_done.set()

    # -- staging (AsyncStager) --------------------------------------------------------

    def stage(self, state_dict: dict[str, Any]) -> dict[str, Any]:
        """Copies ``state_dict`` into this writer's host buffers and returns the copy; the
        training loop waits only for this. Waits first for the previous upload."""
        nbytes = _tensor_bytes(state_dict)
        if self.staging_budget_bytes is not None and nbytes > self.staging_budget_bytes:
            raise ValueError(
                f"the state holds {nbytes} bytes of tensors, beyond the staging budget of "
                f"{self.staging_budget_bytes} bytes"
            )
        if not self._upload_done.wait(self.stage_timeout):
            raise TimeoutError(f"the previous checkpoint is still uploading after {self.stage_timeout} s")
        layout = _tensor_layout(state_dict)
        if self._staged is None or self._staged_layout != layout:
            self._staged = _create_cpu_state_dict(state_dict, pin_memory=torch.cuda.is_available())
            self._staged_layout = layout
        staged = _copy_state_dict(state_dict, self._staged)
        self._upload_done.clear()
        return staged

    def synchronize_staging(self) -> None:
        """Staging is a blocking copy: nothing to wait for."""

    def close(self) -> None:
        """Drops the staging buffers."""
        self._upload_done.wait(self.stage_timeout)
        self._staged = None

    # -- StorageWriter ----------------------------------------------------------------

    def reset(self, checkpoint_id: str | os.PathLike[str] | None = None) -> None:
        self._take_path(checkpoint_id)
        self.save_id = uuid.uuid4().hex

    def set_up_storage_writer(self, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        if self.path is None:
            raise ValueError("CairnStorageWriter needs a checkpoint path (path= or checkpoint_id=)")
        if not kwargs.get("use_collectives", True):
            raise ValueError("CairnStorageWriter publishes through the coordinator; use_collectives=False is not offered")

    def prepare_local_plan(self, plan: SavePlan) -> SavePlan:
        return plan

    def prepare_global_plan(self, plans: list[SavePlan]) -> list[SavePlan]:
        """On the coordinator, before any rank writes: refuses to overwrite unless told
        to, removes stale staging directories of this path and makes a fresh one."""
        assert self.path is not None
        if self.client.exists(self.path) and not self.overwrite:
            raise FileExistsError(17, "a checkpoint already exists (pass overwrite=True to replace it)", self.path)
        parent, name = posixpath.split(self.path)
        self.client.makedirs(parent, exist_ok=True)
        for entry in self.client.listdir(parent):
            if entry.startswith(f".{name}.staging-") or entry.startswith(f".{name}.replaced-"):
                self.client.rmtree(posixpath.join(parent, entry))
        staging = posixpath.join(parent, f".{name}.staging-{self.save_id}")
        self.client.mkdir(staging)
        self._publish[staging] = (self.path, self.save_id)
        return [dataclasses.replace(p, storage_data=_RankPlan(staging, f"__{i}_")) for i, p in enumerate(plans)]

    def write_data(self, plan: SavePlan, planner: SavePlanner) -> Future[list[WriteResult]]:
        try:
            rank_plan: _RankPlan = plan.storage_data
            buckets = _buckets(plan.items, self.thread_count)
            with ThreadPoolExecutor(max_workers=max(1, len(buckets)), thread_name_prefix="cairn-ckpt") as pool:
                jobs = [
                    pool.submit(self._write_file, rank_plan, f"{rank_plan.prefix}{i}.distcp", items, planner)
                    for i, items in enumerate(buckets)
                ]
                results = [r for job in jobs for r in job.result()]
        finally:
            # The staged buffers are read: the next checkpoint may be staged.
            self._upload_done.set()
        fut: Future[list[WriteResult]] = Future()
        fut.set_result(results)
        return fut

    def _write_file(
        self, rank_plan: _RankPlan, name: str, items: list[WriteItem], planner: SavePlanner
    ) -> list[WriteResult]:
        results = []
        offset = 0
        with self.client.open(posixpath.join(rank_plan.staging, name), "wb", buffering=0) as f:
            for item in items:
                data = planner.resolve_data(item)
                if item.type == WriteItemType.BYTE_IO:
                    view = data.getbuffer()
                else:
                    t = data.detach()
                    if t.device.type != "cpu":
                        t = t.to("cpu")
                    view = _byte_view(t.contiguous())
                # The staged state stays unchanged until every file is closed.
                length = f.write_retained(view)
                results.append(
                    WriteResult(item.index, length, _Written(_Stored(name, offset, length), rank_plan.staging))
                )
                offset += length
        # Closed: committed, durable.
        return results

    def finish(self, metadata: Metadata, results: list[list[WriteResult]]) -> None:
        """On the coordinator once every rank's files are committed: writes the metadata
        and publishes the checkpoint with one rename."""
        written = [r for rank in results for r in rank]
        stagings = {r.storage_data.staging for r in written}
        if len(stagings) > 1:
            raise ValueError(f"one checkpoint written into several staging directories: {sorted(stagings)}")
        staging = stagings.pop() if stagings else next(reversed(self._publish))
        path, save_id = self._publish.pop(staging)
        metadata.storage_data = {r.index: r.storage_data.stored for r in written}
        metadata.storage_meta = StorageMeta(checkpoint_id=path, save_id=save_id)
        with self.client.open(posixpath.join(staging, METADATA_FILE), "wb") as f:
            pickle.dump(metadata, f)
        if self.overwrite and self.client.exists(path):
            parent, name = posixpath.split(path)
            aside = posixpath.join(parent, f".{name}.replaced-{save_id}")
            self.client.rename(path, aside)
            self.client.rename(staging, path)
            self.client.rmtree(aside)
        else:
            self.client.rename(staging, path)

    def storage_meta(self) -> StorageMeta | None:
        return StorageMeta(checkpoint_id=self.path, save_id=self.save_id)


class CairnStorageReader(_CairnStorage, StorageReader):
    """Reads DCP checkpoints that ``CairnStorageWriter`` wrote; see the module's
    description. ``thread_count`` files are read at once."""

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        client: Client | None = None,
        thread_count: int = 4,
    ) -> None:
        super().__init__()
        self._set_up(path, client, thread_count)
        self.load_id = ""
        self.metadata: Metadata | None = None
        self._planner_lock = threading.Lock()

    def reset(self, checkpoint_id: str | os.PathLike[str] | None = None) -> None:
        self._take_path(checkpoint_id)
        self.load_id = uuid.uuid4().hex

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        if self.path is None:
            raise ValueError("CairnStorageReader needs a checkpoint path (path= or checkpoint_id=)")
        with self.client.open(posixpath.join(self.path, METADATA_FILE), "rb") as f:
            metadata: Metadata = pickle.load(f)
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata

    def set_up_storage_reader(self, metadata: Metadata, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        if metadata.storage_data is None:
            raise ValueError("the checkpoint's metadata names no stored items")
        self.metadata = metadata

    def prepare_local_plan(self, plan: LoadPlan) -> LoadPlan:
        return plan

    def prepare_global_plan(self, plans: list[LoadPlan]) -> list[LoadPlan]:
        return plans

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> Future[None]:
        assert self.metadata is not None and self.path is not None
        per_file: dict[str, list[ReadItem]] = {}
        for item in plan.items:
            stored: _Stored = self.metadata.storage_data[item.storage_index]
            per_file.setdefault(stored.relative_path, []).append(item)
        with ThreadPoolExecutor(max_workers=self.thread_count, thread_name_prefix="cairn-restore") as pool:
            jobs = [pool.submit(self._read_file, name, items, planner) for name, items in per_file.items()]
            for job in jobs:
                job.result()
        fut: Future[None] = Future()
        fut.set_result(None)
        return fut

    def _chunk(self, index: MetadataIndex) -> tuple[torch.Size, torch.dtype]:
        """The shape and dtype of the stored chunk `index` names."""
        assert self.metadata is not None
        md = self.metadata.state_dict_metadata[index.fqn]
        if not isinstance(md, TensorStorageMetadata):
            raise ValueError(f"{index.fqn} is not a tensor in this checkpoint")
        for chunk in md.chunks:
            if tuple(chunk.offsets) == tuple(index.offset or ()):
                return chunk.sizes, md.properties.dtype
        if index.index is not None and index.index < len(md.chunks):
            return md.chunks[index.index].sizes, md.properties.dtype
        raise ValueError(f"no stored chunk of {index.fqn} at {index.offset}")

    def _read_file(self, name: str, items: list[ReadItem], planner: LoadPlanner) -> None:
        assert self.metadata is not None and self.path is not None
        storage = self.metadata.storage_data
        items = sorted(items, key=lambda i: storage[i.storage_index].offset)
        with self.client.open(posixpath.join(self.path, name), "rb", buffering=0) as f:

            def fill(stored: _Stored, view: memoryview) -> None:
                if len(view) != stored.length:
                    raise ValueError(f"{name}: an item of {stored.length} bytes read into {len(view)}")
                f.seek(stored.offset)
                got = 0
                while got < len(view):
                    n = f.readinto(view[got:])
                    if n == 0:
                        raise EOFError(f"{name} ends inside an item at {stored.offset}")
                    got += n

            for item in items:
                stored = storage[item.storage_index]
                if item.type == LoadItemType.BYTE_IO:
                    buf = bytearray(stored.length)
                    fill(stored, memoryview(buf))
                    with self._planner_lock:
                        planner.load_bytes(item, io.BytesIO(buf))
                    continue
                sizes, dtype = self._chunk(item.storage_index)
                with self._planner_lock:
                    target = planner.resolve_tensor(item).detach()
                whole = all(o == 0 for o in item.storage_offsets) and tuple(item.lengths) == tuple(sizes)
                if whole and target.device.type == "cpu" and target.dtype == dtype and target.is_contiguous():
                    # Straight into the destination's memory.
                    fill(stored, _byte_view(target))
                else:
                    chunk = torch.empty(sizes, dtype=dtype)
                    fill(stored, _byte_view(chunk))
                    for dim, (start, length) in enumerate(zip(item.storage_offsets, item.lengths)):
                        chunk = chunk.narrow(dim, start, length)
                    target.copy_(chunk)
                with self._planner_lock:
                    planner.commit_tensor(item, target)
