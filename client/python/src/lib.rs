//! `cairn._cairn`: the native half of the Python package. It holds the Rust client and a
//! tokio runtime and offers a blocking API; every call that waits on the cluster releases
//! the GIL first, so Python threads (a checkpoint's upload, a data loader's workers) run
//! their I/O in parallel. Writes take any contiguous buffer (bytes, memoryview, numpy
//! arrays, CPU tensors) without a Python-level copy, and send its whole stripes from its
//! own memory; `readinto` fills the caller's buffer (a tensor's memory, say) straight
//! from the read-ahead windows.
//!
//! The Python half (`python/cairn`) builds the `io` file objects, path conveniences and
//! the PyTorch checkpoint storage on top.

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use cairn_client::{CairnClient, ClientError, FileReader, FileWriter};
use cairn_common::config::{Config, ErasureConfig};
use cairn_common::proto::metadata::{Attr, Errno, FileKind};
use pyo3::buffer::PyBuffer;
use pyo3::exceptions::{PyOSError, PyTimeoutError, PyValueError};
use pyo3::prelude::*;
use tokio::runtime::Runtime;

const S_IFREG: u32 = 0o100_000;
const S_IFDIR: u32 = 0o040_000;
const S_IFLNK: u32 = 0o120_000;

/// A failure as Python sees it: `OSError(errno, message)`, which Python turns into its
/// subclass (`FileNotFoundError`, `FileExistsError`, ...); `TimeoutError` when no logic
/// node answered in time.
fn py_err(e: ClientError) -> PyErr {
    py_err_at(e, None)
}

/// `py_err`, naming the path the call was about (`OSError.filename`) when there is one.
fn py_err_at(e: ClientError, path: Option<&str>) -> PyErr {
    match (e, path) {
        (e @ ClientError::Unavailable { .. }, _) => PyTimeoutError::new_err(e.to_string()),
        (e, Some(path)) => PyOSError::new_err((e.os_errno(), e.to_string(), path.to_owned())),
        (e, None) => PyOSError::new_err((e.os_errno(), e.to_string())),
    }
}

fn os_err(errno: Errno, message: String) -> PyErr {
    PyOSError::new_err((errno as i32, message))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A file's attributes, shaped like `os.stat_result`.
#[pyclass(frozen, get_all, module = "cairn._cairn")]
#[derive(Debug)]
struct Stat {
    st_mode: u32,
    st_ino: u64,
    st_nlink: u32,
    st_uid: u32,
    st_gid: u32,
    st_size: u64,
    st_atime_ns: i64,
    st_mtime_ns: i64,
    st_ctime_ns: i64,
    /// Changes with every committed write: equal versions mean equal content.
    layout_version: u64,
}

#[pymethods]
impl Stat {
    #[getter]
    fn st_mtime(&self) -> f64 {
        self.st_mtime_ns as f64 / 1e9
    }

    fn is_dir(&self) -> bool {
        self.st_mode & 0o170_000 == S_IFDIR
    }

    fn __repr__(&self) -> String {
        format!(
            "cairn.Stat(st_mode=0o{:o}, st_ino={}, st_size={}, layout_version={})",
            self.st_mode, self.st_ino, self.st_size, self.layout_version
        )
    }
}

impl From<&Attr> for Stat {
    fn from(a: &Attr) -> Stat {
        let kind = match a.kind() {
            FileKind::Directory => S_IFDIR,
            FileKind::Symlink => S_IFLNK,
            _ => S_IFREG,
        };
        Stat {
            st_mode: kind | (a.mode & 0o7777),
            st_ino: a.inode,
            st_nlink: a.nlink,
            st_uid: a.uid,
            st_gid: a.gid,
            st_size: a.size,
            st_atime_ns: a.atime_ns,
            st_mtime_ns: a.mtime_ns,
            st_ctime_ns: a.ctime_ns,
            layout_version: a.layout_version,
        }
    }
}

/// What a client and the files it opened share: the Rust client and its runtime.
#[derive(Debug)]
struct Shared {
    client: Arc<CairnClient>,
    runtime: Runtime,
}

/// A connection to a Cairn cluster (its logic nodes), safe to share between threads.
#[pyclass(frozen, module = "cairn._cairn")]
#[derive(Debug)]
struct Client {
    shared: Arc<Shared>,
}

fn deadline(timeout: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(timeout)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| PyValueError::new_err(format!("timeout must be a positive number of seconds, not {timeout}")))
}

impl Client {
    fn start(addrs: Vec<std::net::SocketAddr>, erasure: ErasureConfig, timeout: f64) -> PyResult<Client> {
        if addrs.is_empty() {
            return Err(PyValueError::new_err("no logic node addresses"));
        }
        let deadline = deadline(timeout)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("cairn-client")
            .build()?;
        Ok(Client {
            shared: Arc::new(Shared {
                client: CairnClient::new(addrs, erasure, deadline),
                runtime,
            }),
        })
    }

    /// Runs `f` with the GIL released; an error names `path`.
    fn run<T: Send>(
        &self,
        py: Python<'_>,
        path: &str,
        f: impl Future<Output = Result<T, ClientError>> + Send,
    ) -> PyResult<T> {
        py.detach(|| self.shared.runtime.block_on(f))
            .map_err(|e| py_err_at(e, Some(path)))
    }

    fn client(&self) -> &Arc<CairnClient> {
        &self.shared.client
    }
}

#[pymethods]
impl Client {
    /// A client of the logic nodes at `addrs` ("host:port"). Stripes are cut by the
    /// erasure code the logic nodes announce with their first answer; the code given
    /// (the default is Cairn's: 4+2, 2 MiB shard units) serves until then, and against
    /// logic nodes that predate the announcement.
    #[new]
    #[pyo3(signature = (addrs, timeout = 60.0, data_shards = 4, parity_shards = 2, shard_unit_bytes = 2 << 20))]
    fn new(
        addrs: Vec<String>,
        timeout: f64,
        data_shards: u8,
        parity_shards: u8,
        shard_unit_bytes: u32,
    ) -> PyResult<Client> {
        let addrs = addrs
            .iter()
            .map(|a| {
                a.parse()
                    .map_err(|e| PyValueError::new_err(format!("logic node address {a:?}: {e}")))
            })
            .collect::<PyResult<Vec<_>>>()?;
        let erasure = ErasureConfig {
            data_shards,
            parity_shards,
            shard_unit_bytes,
            ..ErasureConfig::default()
        };
        erasure.validate().map_err(|e| PyValueError::new_err(e.to_string()))?;
        Client::start(addrs, erasure, timeout)
    }

    /// A client of the cluster a config file describes (its logic nodes and code), such as
    /// the `cluster.toml` that `cairnctl local up` writes.
    #[staticmethod]
    #[pyo3(signature = (path, timeout = 60.0))]
    fn from_config(path: PathBuf, timeout: f64) -> PyResult<Client> {
        let config = Config::load(&path).map_err(|e| PyValueError::new_err(e.to_string()))?;
        Client::start(
            config.logic_nodes.iter().map(|l| l.addr).collect(),
            config.erasure,
            timeout,
        )
    }

    fn stat(&self, py: Python<'_>, path: &str) -> PyResult<Stat> {
        Ok(Stat::from(&self.run(py, path, self.client().resolve(path))?))
    }

    /// The names in the directory at `path`, in name order.
    fn listdir(&self, py: Python<'_>, path: &str) -> PyResult<Vec<String>> {
        let client = self.client();
        let entries = self.run(py, path, async {
            // The metadata group refuses to list a non-directory (ENOTDIR).
            client.list_dir(client.resolve(path).await?.inode).await
        })?;
        Ok(entries
            .into_iter()
            .map(|e| String::from_utf8_lossy(&e.name).into_owned())
            .collect())
    }

    #[pyo3(signature = (path, mode = 0o777))]
    fn mkdir(&self, py: Python<'_>, path: &str, mode: u32) -> PyResult<()> {
        let client = self.client();
        self.run(py, path, async {
            let (dir, name) = client.resolve_parent(path).await?;
            client.mkdir(dir, name.as_bytes(), mode).await.map(drop)
        })
    }

    /// Makes the directory at `path` and its missing parents; an existing one is fine.
    #[pyo3(signature = (path, mode = 0o777))]
    fn makedirs(&self, py: Python<'_>, path: &str, mode: u32) -> PyResult<()> {
        self.run(py, path, self.client().make_dirs(path, mode)).map(drop)
    }

    /// Renames atomically (one Raft entry), replacing a file or an empty directory at `dst`.
    fn rename(&self, py: Python<'_>, src: &str, dst: &str) -> PyResult<()> {
        self.run(py, src, self.client().rename_path(src, dst))
    }

    fn remove(&self, py: Python<'_>, path: &str) -> PyResult<()> {
        self.run(py, path, self.client().unlink_path(path))
    }

    fn rmdir(&self, py: Python<'_>, path: &str) -> PyResult<()> {
        self.run(py, path, self.client().rmdir_path(path))
    }

    /// Opens the file at `path`; the Python half turns a mode string into these flags.
    #[pyo3(signature = (path, *, read, write, create, exclusive, truncate, append, mode = 0o666))]
    #[allow(clippy::too_many_arguments)]
    fn open(
        &self,
        py: Python<'_>,
        path: &str,
        read: bool,
        write: bool,
        create: bool,
        exclusive: bool,
        truncate: bool,
        append: bool,
        mode: u32,
    ) -> PyResult<RawFile> {
        if !read && !write {
            return Err(PyValueError::new_err("a file is opened for reading, writing or both"));
        }
        let client = self.client();
        let (attr, writer) = self.run(py, path, async {
            let (dir, name) = client.resolve_parent(path).await?;
            let (attr, new) = if create {
                client.create_or_open(dir, name.as_bytes(), mode, exclusive).await?
            } else {
                (client.lookup(dir, name.as_bytes()).await?, false)
            };
            if attr.kind() == FileKind::Directory {
                return Err(ClientError::refused(Errno::Eisdir, format!("{path:?} is a directory")));
            }
            let writer = match (write, new) {
                // Empty and new: nothing to read first, nothing to truncate.
                (true, true) => Some(client.new_file_writer(attr)),
                (true, false) => {
                    let mut w = client.open_writer(attr.inode).await?;
                    if truncate {
                        w.set_len(0).await?;
                    }
                    Some(w)
                }
                (false, _) => None,
            };
            Ok((attr, writer))
        })?;
        Ok(RawFile {
            shared: self.shared.clone(),
            readable: read,
            writable: write,
            append,
            state: Mutex::new(FileState {
                pos: 0,
                size: writer.as_ref().map_or(attr.size, FileWriter::size),
                reader: read.then(|| client.open_reader(attr.inode, Some(attr.layout_version))),
                writer,
                inode: attr.inode,
                closed: false,
                retained: Vec::new(),
            }),
        })
    }
}

#[derive(Debug)]
struct FileState {
    inode: u64,
    pos: u64,
    /// The file's size as this handle knows it (its own writes included).
    size: u64,
    reader: Option<FileReader>,
    writer: Option<FileWriter>,
    closed: bool,
    /// Buffers given to `write_retained` whose stripes may still be being stored.
    retained: Vec<Bytes>,
}

impl FileState {
    /// The retained buffers that no stripe in flight can read any more: every stripe is
    /// stored, or the writer is gone. They are released (which takes the GIL) by the
    /// caller once it holds no lock.
    fn take_released(&mut self) -> Vec<Bytes> {
        if self.writer.as_ref().is_some_and(FileWriter::is_sending) {
            return Vec::new();
        }
        std::mem::take(&mut self.retained)
    }
}

/// An open file: a raw (unbuffered) binary stream. Its writes are durable and visible to
/// others once `flush` or `close` returns (each commits the layout through Raft).
#[pyclass(frozen, module = "cairn._cairn")]
#[derive(Debug)]
struct RawFile {
    shared: Arc<Shared>,
    readable: bool,
    writable: bool,
    append: bool,
    state: Mutex<FileState>,
}

fn not_open_for(what: &str) -> PyErr {
    os_err(Errno::Eperm, format!("file not open for {what}"))
}

fn closed_file() -> PyErr {
    PyValueError::new_err("I/O operation on a closed file")
}

impl RawFile {
    /// Runs `f` on this file's open state with the GIL released; `f` may block on the
    /// runtime it is given.
    fn with_state<T: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut FileState, &Runtime) -> PyResult<T> + Send,
    ) -> PyResult<T> {
        let (result, released) = py.detach(|| {
            let mut st = lock(&self.state);
            if st.closed {
                return (Err(closed_file()), Vec::new());
            }
            let result = f(&mut st, &self.shared.runtime);
            (result, st.take_released())
        });
        // Attached and unlocked: releasing a buffer takes the GIL, and a thread holding
        // the GIL may be waiting for this file's lock (`tell`).
        drop(released);
        result
    }

    /// `write`, or `write_retained` when `retain`.
    fn write_shared(&self, py: Python<'_>, data: PyBuffer<u8>, retain: bool) -> PyResult<usize> {
        if !data.is_c_contiguous() {
            return Err(PyValueError::new_err("write needs a contiguous buffer"));
        }
        let len = data.len_bytes();
        let shared = Bytes::from_owner(Exported(data));
        let append = self.append;
        self.with_state(py, |st, rt| {
            // Released by `with_state` once no stripe in flight reads it: attached, and
            // (unless a failed stripe's request still holds it) as its last reference.
            st.retained.push(shared.clone());
            let here = st.pos;
            let w = writer(st)?;
            let pos = if append { w.size() } else { here };
            rt.block_on(async {
                if w.write_shared(pos, &shared).await? && !retain {
                    w.wait_sent().await?;
                }
                Ok(())
            })
            .map_err(py_err)?;
            st.size = w.size();
            st.pos = pos + len as u64;
            Ok(len)
        })
    }
}

/// A Python buffer as the memory of `Bytes`: it stays exported (alive, unmoved) until
/// the last `Bytes` of it is dropped.
struct Exported(PyBuffer<u8>);

impl AsRef<[u8]> for Exported {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: the exporter keeps the buffer's memory alive and unmoved while it is
        // exported, and it is a contiguous run of `len_bytes()` bytes (`write` checks).
        // It is only read; Python code that writes it from another thread meanwhile
        // races, as it would with `os.write`.
        unsafe { std::slice::from_raw_parts(self.0.buf_ptr().cast::<u8>(), self.0.len_bytes()) }
    }
}

/// The writer of an open state (present whenever the file was opened for writing).
fn writer(st: &mut FileState) -> PyResult<&mut FileWriter> {
    st.writer.as_mut().ok_or_else(|| not_open_for("writing"))
}

#[pymethods]
impl RawFile {
    fn readable(&self) -> bool {
        self.readable
    }

    fn writable(&self) -> bool {
        self.writable
    }

    fn seekable(&self) -> bool {
        true
    }

    #[getter]
    fn closed(&self) -> bool {
        lock(&self.state).closed
    }

    /// Reads into `buf` (any writable contiguous buffer) from the current position;
    /// returns the count, 0 at the end of the file.
    fn readinto(&self, py: Python<'_>, buf: PyBuffer<u8>) -> PyResult<usize> {
        if !self.readable {
            return Err(not_open_for("reading"));
        }
        if buf.readonly() || !buf.is_c_contiguous() {
            return Err(PyValueError::new_err("readinto needs a writable contiguous buffer"));
        }
        // SAFETY: `buf` keeps the exporter's memory alive and unmoved until it is dropped
        // at the end of this call, and it is a writable, contiguous run of `len_bytes()`
        // bytes. Python code that writes the same buffer from another thread meanwhile
        // races, as it would with `os.readv`.
        let dst = unsafe { std::slice::from_raw_parts_mut(buf.buf_ptr().cast::<u8>(), buf.len_bytes()) };
        self.with_state(py, |st, rt| {
            rt.block_on(async {
                if let Some(w) = st.writer.as_mut().filter(|w| w.is_dirty()) {
                    // Read-your-writes: publish this handle's writes first.
                    w.commit().await.map_err(py_err)?;
                    if let Some(r) = st.reader.as_mut() {
                        r.invalidate();
                    }
                }
                let reader = st.reader.as_mut().ok_or_else(|| not_open_for("reading"))?;
                let n = reader.read_into(st.pos, dst).await.map_err(py_err)?;
                st.pos += n as u64;
                Ok(n)
            })
        })
    }

    /// Writes all of `data` (any contiguous buffer) at the current position (at the end
    /// in append mode); returns its length. Whole stripes of `data` are sent from its
    /// memory, and the call then waits until they are stored, so that `data` may change
    /// once it returns, as after any `write`.
    fn write(&self, py: Python<'_>, data: PyBuffer<u8>) -> PyResult<usize> {
        self.write_shared(py, data, false)
    }

    /// Like `write`, but returns once the stripes of `data` are sent, not stored: `data`
    /// must stay unchanged until the file is flushed or closed. The next write then
    /// overlaps the storing of this one's stripes.
    fn write_retained(&self, py: Python<'_>, data: PyBuffer<u8>) -> PyResult<usize> {
        self.write_shared(py, data, true)
    }

    /// Moves the position: `whence` 0 from the start, 1 from here, 2 from the end.
    #[pyo3(signature = (offset, whence = 0))]
    fn seek(&self, py: Python<'_>, offset: i64, whence: i32) -> PyResult<u64> {
        let client = &self.shared.client;
        self.with_state(py, |st, rt| {
            let base = match whence {
                0 => 0,
                1 => st.pos,
                2 => {
                    if st.writer.is_none() {
                        // Another client may have changed it since the open.
                        st.size = rt.block_on(client.getattr(st.inode)).map_err(py_err)?.size;
                    }
                    st.size
                }
                _ => return Err(PyValueError::new_err(format!("whence {whence}: 0, 1 or 2"))),
            };
            let pos = i128::from(base) + i128::from(offset);
            st.pos = u64::try_from(pos).map_err(|_| os_err(Errno::Einval, format!("seek to {pos}")))?;
            Ok(st.pos)
        })
    }

    fn tell(&self) -> PyResult<u64> {
        let st = lock(&self.state);
        if st.closed {
            return Err(closed_file());
        }
        Ok(st.pos)
    }

    /// Cuts or extends the file to `size` (default: the current position).
    #[pyo3(signature = (size = None))]
    fn truncate(&self, py: Python<'_>, size: Option<u64>) -> PyResult<u64> {
        self.with_state(py, |st, rt| {
            let size = size.unwrap_or(st.pos);
            rt.block_on(writer(st)?.set_len(size)).map_err(py_err)?;
            st.size = size;
            Ok(size)
        })
    }

    /// Commits this handle's writes: durable and visible to every later open when this
    /// returns (`fsync`).
    fn flush(&self, py: Python<'_>) -> PyResult<()> {
        self.with_state(py, |st, rt| match st.writer.as_mut() {
            Some(w) => rt.block_on(w.commit()).map(drop).map_err(py_err),
            None => Ok(()),
        })
    }

    /// Commits and closes; closing twice is fine. If the commit fails the error is raised
    /// and none of this handle's uncommitted writes is visible.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let (writer, retained) = py.detach(|| {
            let mut st = lock(&self.state);
            st.closed = true;
            st.reader = None;
            (st.writer.take(), std::mem::take(&mut st.retained))
        });
        let Some(mut w) = writer else {
            return Ok(());
        };
        // Without the file's lock: the writer is this call's alone now, and the stripes
        // it drops may release the last references to retained buffers (taking the GIL).
        let closed = py.detach(|| {
            self.shared.runtime.block_on(async {
                let committed = w.commit().await;
                w.close().await;
                committed.map(drop).map_err(py_err)
            })
        });
        drop(retained);
        closed
    }
}

#[pymodule]
fn _cairn(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Client>()?;
    m.add_class::<RawFile>()?;
    m.add_class::<Stat>()?;
    Ok(())
}
