//! A client workload that checks what Cairn promises through failures. Writers create
//! files of random sizes and contents and record each one the cluster acknowledged (its
//! commit returned) with its crc32c; readers read acknowledged files back and compare.
//! Every I/O's outcome is recorded, so a run reports failed I/Os and the longest gap
//! between successful ones: what an outage costs a training job that waits on storage.
//! At the end every acknowledged file is read back and checked.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use cairn_client::CairnClient;
use cairn_common::checksum::crc32c;
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use serde::Serialize;
use tokio::task::JoinSet;

/// Failure messages kept for the report (the count has them all).
const FAILURES_KEPT: usize = 20;

#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    /// The directory the files go in is this path with a time stamp appended (made).
    pub dir: String,
    pub writers: usize,
    pub readers: usize,
    /// Files are 1 byte to this size, spread evenly over the powers of two.
    pub file_bytes_max: u64,
    pub seed: u64,
}

/// A file the cluster acknowledged.
#[derive(Debug, Clone)]
struct Acked {
    inode: u64,
    path: String,
    len: u64,
    crc: u32,
}

#[derive(Debug)]
struct Gaps {
    last_ok: Instant,
    longest: Duration,
    /// When the longest gap began, from the start of the run.
    longest_from: Duration,
}

#[derive(Debug)]
struct Shared {
    client: Arc<CairnClient>,
    config: WorkloadConfig,
    dir_inode: u64,
    start: Instant,
    acked: Mutex<Vec<Acked>>,
    stop: AtomicBool,
    writes_ok: AtomicU64,
    reads_ok: AtomicU64,
    failed: AtomicU64,
    bytes_written: AtomicU64,
    bytes_read: AtomicU64,
    gaps: Mutex<Gaps>,
    failures: Mutex<Vec<String>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A running workload; [`Workload::finish`] stops it and checks every acknowledged file.
#[derive(Debug)]
pub struct Workload {
    shared: Arc<Shared>,
    tasks: JoinSet<()>,
}

/// What a run saw.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub seconds: f64,
    pub writes_ok: u64,
    pub reads_ok: u64,
    pub failed_ios: u64,
    pub bytes_written: u64,
    pub bytes_read: u64,
    /// The longest time with no successful I/O, and when (from the start) it began.
    pub longest_gap_s: f64,
    pub longest_gap_from_s: f64,
    pub files_verified: u64,
    pub bytes_verified: u64,
    /// Acknowledged files that did not read back whole and equal.
    pub verify_failures: u64,
    pub failures: Vec<String>,
}

/// `len` bytes of random content from `seed`.
fn content(seed: u64, len: u64) -> Bytes {
    let mut data = vec![0u8; len as usize];
    StdRng::seed_from_u64(seed).fill_bytes(&mut data);
    data.into()
}

impl Shared {
    fn ok(&self, read: bool, bytes: u64) {
        let (count, total) = if read {
            (&self.reads_ok, &self.bytes_read)
        } else {
            (&self.writes_ok, &self.bytes_written)
        };
        count.fetch_add(1, Ordering::Relaxed);
        total.fetch_add(bytes, Ordering::Relaxed);
        let now = Instant::now();
        let mut g = lock(&self.gaps);
        let gap = now.duration_since(g.last_ok);
        if gap > g.longest {
            g.longest = gap;
            g.longest_from = g.last_ok.duration_since(self.start);
        }
        g.last_ok = now;
    }

    fn fail(&self, what: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        self.keep(format!("{:.1}s {what}", self.start.elapsed().as_secs_f64()));
    }

    /// Keeps a failure's message for the report, up to `FAILURES_KEPT`.
    fn keep(&self, message: String) {
        let mut f = lock(&self.failures);
        if f.len() < FAILURES_KEPT {
            f.push(message);
        }
    }

    async fn write_one(&self, rng: &mut StdRng, name: String) -> anyhow::Result<Acked> {
        let bits = rng.random_range(0..=self.config.file_bytes_max.max(1).ilog2());
        let len = rng.random_range((1u64 << bits)..=(2u64 << bits).min(self.config.file_bytes_max.max(1)));
        let data = content(rng.next_u64(), len);
        let attr = self
            .client
            .create_in(self.dir_inode, name.as_bytes(), 0o644, true)
            .await?;
        self.client.write_file(attr.inode, data.clone()).await?;
        Ok(Acked {
            inode: attr.inode,
            path: format!("{}/{name}", self.config.dir),
            len,
            crc: crc32c(&data),
        })
    }

    async fn check(&self, f: &Acked) -> anyhow::Result<()> {
        let data = self.client.read_file(f.inode).await?;
        if data.len() as u64 != f.len || crc32c(&data) != f.crc {
            bail!(
                "{}: read {} bytes (crc {:08x}), acknowledged {} bytes (crc {:08x})",
                f.path,
                data.len(),
                crc32c(&data),
                f.len,
                f.crc
            );
        }
        Ok(())
    }

    async fn writer(self: Arc<Self>, id: usize) {
        let mut rng = StdRng::seed_from_u64(self.config.seed ^ (id as u64) << 32);
        let mut n = 0u64;
        while !self.stop.load(Ordering::Acquire) {
            n += 1;
            let name = format!("w{id}-{n}");
            match self.write_one(&mut rng, name.clone()).await {
                Ok(f) => {
                    self.ok(false, f.len);
                    lock(&self.acked).push(f);
                }
                Err(e) => self.fail(format!("write {name}: {e:#}")),
            }
        }
    }

    async fn reader(self: Arc<Self>, id: usize) {
        let mut rng = StdRng::seed_from_u64(self.config.seed ^ 0xdead_beef ^ (id as u64) << 40);
        while !self.stop.load(Ordering::Acquire) {
            let pick = {
                let acked = lock(&self.acked);
                (!acked.is_empty()).then(|| acked[rng.random_range(0..acked.len())].clone())
            };
            let Some(f) = pick else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            match self.check(&f).await {
                Ok(()) => self.ok(true, f.len),
                Err(e) => self.fail(format!("read: {e:#}")),
            }
        }
    }
}

impl Workload {
    pub async fn start(client: Arc<CairnClient>, mut config: WorkloadConfig) -> anyhow::Result<Workload> {
        // Each run its own directory, so runs with one seed do not collide.
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        config.dir = format!("{}-{stamp}", config.dir);
        let dir_inode = client
            .make_dirs(&config.dir, 0o755)
            .await
            .with_context(|| format!("making {}", config.dir))?;
        let shared = Arc::new(Shared {
            client,
            dir_inode,
            start: Instant::now(),
            acked: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            writes_ok: AtomicU64::new(0),
            reads_ok: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
            bytes_read: AtomicU64::new(0),
            gaps: Mutex::new(Gaps {
                last_ok: Instant::now(),
                longest: Duration::ZERO,
                longest_from: Duration::ZERO,
            }),
            failures: Mutex::new(Vec::new()),
            config: config.clone(),
        });
        let mut tasks = JoinSet::new();
        for id in 0..config.writers {
            tasks.spawn(shared.clone().writer(id));
        }
        for id in 0..config.readers {
            tasks.spawn(shared.clone().reader(id));
        }
        Ok(Workload { shared, tasks })
    }

    /// Seconds since the workload started.
    pub fn elapsed(&self) -> Duration {
        self.shared.start.elapsed()
    }

    /// Successful I/Os so far.
    pub fn ios_ok(&self) -> u64 {
        self.shared.writes_ok.load(Ordering::Relaxed) + self.shared.reads_ok.load(Ordering::Relaxed)
    }

    /// Bytes written and read back by successful I/Os so far.
    pub fn bytes_ok(&self) -> u64 {
        self.shared.bytes_written.load(Ordering::Relaxed) + self.shared.bytes_read.load(Ordering::Relaxed)
    }

    /// Waits until `n` more I/Os succeed than had when called (or `limit` passes);
    /// returns how long that took.
    pub async fn wait_for_ios(&self, n: u64, limit: Duration) -> anyhow::Result<Duration> {
        let (start, target) = (Instant::now(), self.ios_ok() + n);
        while self.ios_ok() < target {
            if start.elapsed() > limit {
                bail!("fewer than {n} I/Os succeeded in {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(start.elapsed())
    }

    /// Stops the writers and readers (letting each finish its I/O), then reads back
    /// every acknowledged file.
    pub async fn finish(mut self) -> Report {
        let s = self.shared.clone();
        s.stop.store(true, Ordering::Release);
        while self.tasks.join_next().await.is_some() {}
        let seconds = s.start.elapsed().as_secs_f64();
        let acked = lock(&s.acked).clone();
        let (mut files, mut bytes, mut bad) = (0, 0, 0);
        for f in &acked {
            match s.check(f).await {
                Ok(()) => {
                    files += 1;
                    bytes += f.len;
                }
                Err(e) => {
                    bad += 1;
                    s.keep(format!("verify: {e:#}"));
                }
            }
        }
        let (longest, longest_from) = {
            let g = lock(&s.gaps);
            (g.longest, g.longest_from)
        };
        let failures = lock(&s.failures).clone();
        Report {
            seconds,
            writes_ok: s.writes_ok.load(Ordering::Relaxed),
            reads_ok: s.reads_ok.load(Ordering::Relaxed),
            failed_ios: s.failed.load(Ordering::Relaxed),
            bytes_written: s.bytes_written.load(Ordering::Relaxed),
            bytes_read: s.bytes_read.load(Ordering::Relaxed),
            longest_gap_s: longest.as_secs_f64(),
            longest_gap_from_s: longest_from.as_secs_f64(),
            files_verified: files,
            bytes_verified: bytes,
            verify_failures: bad,
            failures,
        }
    }
}
