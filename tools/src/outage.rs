//! Outages staged on a local cluster under a running [`Workload`], measured as a training
//! job feels them: failed I/Os, the longest gap between successful I/Os, and how long
//! until the cluster is whole again. `cairn-bench outage` and `cairn-bench chaos` run
//! them; the tests in `tests/` and `bench/outage.sh` call those.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use cairn_client::CairnClient;
use cairn_common::config::Config;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::local;
use crate::workload::{Report, Workload, WorkloadConfig};

/// How long a client request may retry before it counts as a failed I/O.
const CLIENT_DEADLINE: Duration = Duration::from_secs(60);
/// GPUs idled by a storage gap, for the report's cost line.
const GPUS: f64 = 100_000.0;
const MIB: f64 = (1u64 << 20) as f64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// SIGKILL every process of the hall holding the metadata leader; bring it back.
    HallLoss,
    /// SIGKILL every process of the cluster; start them all again.
    PowerLoss,
    /// Cut the whole site's power (a cluster started with `--power-cut-harness`): every
    /// process frozen, every write not synced dropped, every process killed; start them
    /// all again.
    SitePowerCut,
    /// SIGKILL one logic node; start it again.
    LogicCrash,
    /// `cairnctl rolling-restart`: every node in turn, the outage time unused.
    RollingRestart,
    /// SIGKILL one dataserver and declare it lost (`cairnctl drain`): its shards are
    /// rebuilt elsewhere while the workload runs; it comes back after the rebuild.
    DataserverLoss,
}

/// The dataserver `DataserverLoss` takes: hall 2's first.
const LOST_DATASERVER: u32 = 3;

#[derive(Debug, Clone)]
pub struct Timing {
    /// Workload before the outage.
    pub before: Duration,
    /// How long the failed part stays down.
    pub down: Duration,
    /// Workload after the cluster is whole again.
    pub after: Duration,
}

#[derive(Debug, Serialize)]
pub struct OutageReport {
    pub scenario: Scenario,
    /// The processes SIGKILLed (for a rolling restart: stopped and restarted, in order).
    pub killed: Vec<String>,
    /// Rolling restart: the leader's hand-over before it stopped, and how long it took
    /// (metadata requests waited meanwhile).
    pub handed_over: Vec<String>,
    /// From the kill until the cluster is whole: every node back and every stripe with
    /// all its shards reachable.
    pub full_redundancy_s: f64,
    /// Power loss: from the restarted processes' start to the first read served, and to
    /// every node answering.
    pub first_read_after_start_s: Option<f64>,
    pub full_service_after_start_s: Option<f64>,
    /// The workload's longest gap times 100,000 GPUs, in GPU-minutes.
    pub gpu_minutes_per_100k: f64,
    /// Dataserver loss: the shards rebuilt, how long that took, and the workload's bytes
    /// per second (written plus read) before the loss and while the rebuild ran.
    pub rebuild: Option<RebuildReport>,
    pub workload: Report,
}

#[derive(Debug, Serialize)]
pub struct RebuildReport {
    pub shards: usize,
    pub seconds: f64,
    pub foreground_mib_s_before: f64,
    pub foreground_mib_s_during: f64,
}

#[derive(Debug, Serialize)]
pub struct ChaosReport {
    pub kills: u64,
    pub killed: Vec<String>,
    pub workload: Report,
}

pub fn client_of(dir: &Path) -> anyhow::Result<Arc<CairnClient>> {
    let c = Config::load(&dir.join("cluster.toml")).context("the local cluster's config")?;
    Ok(CairnClient::new(
        c.logic_nodes.iter().map(|l| l.addr).collect(),
        c.erasure,
        CLIENT_DEADLINE,
    ))
}

pub fn workload_config(dir: &str, seed: u64) -> WorkloadConfig {
    WorkloadConfig {
        dir: dir.into(),
        writers: 4,
        readers: 4,
        file_bytes_max: 4 << 20,
        seed,
    }
}

/// The hall of the metadata group's leader (1 if none answers): in a local cluster,
/// voter h runs in hall h.
async fn leader_hall(dir: &Path) -> anyhow::Result<u32> {
    let c = Config::load(&dir.join("cluster.toml"))?;
    let leader = crate::metadata_admin::leader_id(&c.metadata_nodes).await.unwrap_or(1);
    Ok(u32::try_from(leader)?)
}

/// Reads `inode` with a fresh client until a read succeeds; returns when it did.
async fn first_read(dir: &Path, inode: u64) -> anyhow::Result<Instant> {
    let client = client_of(dir)?;
    client.read_file(inode).await.context("first read after the restart")?;
    Ok(Instant::now())
}

/// Stages `scenario` under the workload; a rolling restart starts the nodes from
/// `binaries` when given (an upgrade).
pub async fn run(
    dir: &Path,
    scenario: Scenario,
    t: &Timing,
    seed: u64,
    binaries: Option<&Path>,
) -> anyhow::Result<OutageReport> {
    let client = client_of(dir)?;
    let probe = {
        let inode = client.make_dirs("/outage-probe", 0o755).await?;
        let attr = client.create_in(inode, b"probe", 0o644, false).await?;
        client
            .write_file(attr.inode, bytes::Bytes::from_static(b"probe"))
            .await?;
        attr.inode
    };
    let w = Workload::start(client, workload_config(&format!("/outage-{seed}"), seed)).await?;
    tokio::time::sleep(t.before).await;
    let victims = match scenario {
        Scenario::HallLoss => local::hall_members(dir, leader_hall(dir).await?)?,
        Scenario::PowerLoss | Scenario::SitePowerCut => local::members(dir)?.into_iter().map(|m| m.0).collect(),
        Scenario::LogicCrash => vec!["logic-1".to_owned()],
        Scenario::RollingRestart => Vec::new(),
        Scenario::DataserverLoss => vec![format!("dataserver-{LOST_DATASERVER}")],
    };
    let before_mib_s = w.bytes_ok() as f64 / w.elapsed().as_secs_f64() / MIB;
    let killed_at = Instant::now();
    let mut rebuild = None;
    let mut handed_over = Vec::new();
    let (killed, started_at) = match scenario {
        // Every node goes down and comes back inside the roll.
        Scenario::RollingRestart => (
            crate::rolling::rolling_restart(dir, binaries, None, |step| {
                if let crate::rolling::Step::HandedOver { from, to, took } = step {
                    handed_over.push(format!(
                        "metadata-{from} to metadata-{to} in {:.2} s",
                        took.as_secs_f64()
                    ));
                }
            })
            .await?,
            Instant::now(),
        ),
        Scenario::DataserverLoss => {
            let killed = local::kill(dir, &victims)?;
            let config = Config::load(&dir.join("cluster.toml"))?;
            let (bytes_at, at) = (w.bytes_ok(), Instant::now());
            let shards = crate::drain::drain(&config, LOST_DATASERVER, true, false).await?;
            let took = at.elapsed().as_secs_f64();
            rebuild = Some(RebuildReport {
                shards,
                seconds: took,
                foreground_mib_s_before: before_mib_s,
                foreground_mib_s_during: (w.bytes_ok() - bytes_at) as f64 / took / MIB,
            });
            let started_at = Instant::now();
            local::start_stopped(dir, Some(&victims), None).await?;
            crate::drain::undrain(&config, LOST_DATASERVER).await?;
            (killed, started_at)
        }
        _ => {
            let killed = match scenario {
                Scenario::SitePowerCut => power_cut(dir, None).await?.0,
                _ => local::kill(dir, &victims)?,
            };
            tokio::time::sleep(t.down).await;
            let started_at = Instant::now();
            local::start_stopped(dir, Some(&victims), None).await?;
            (killed, started_at)
        }
    };
    let first = match scenario {
        Scenario::PowerLoss | Scenario::SitePowerCut => Some(first_read(dir, probe).await?),
        _ => None,
    };
    local::wait_healthy_in(dir).await?;
    let whole_at = Instant::now();
    tokio::time::sleep(t.after).await;
    let workload = w.finish().await;
    Ok(OutageReport {
        scenario,
        killed,
        handed_over,
        full_redundancy_s: whole_at.duration_since(killed_at).as_secs_f64(),
        first_read_after_start_s: first.map(|f| f.duration_since(started_at).as_secs_f64()),
        full_service_after_start_s: first.map(|_| whole_at.duration_since(started_at).as_secs_f64()),
        gpu_minutes_per_100k: workload.longest_gap_s * GPUS / 60.0,
        rebuild,
        workload,
    })
}

/// For `seconds`: SIGKILL a random set of one hall's processes, keep them down 1 to 5 s,
/// start them again and wait until the cluster is healthy, pause 1 to 3 s; so at most
/// one hall is ever down.
pub async fn chaos(dir: &Path, seconds: u64, seed: u64) -> anyhow::Result<ChaosReport> {
    let client = client_of(dir)?;
    let halls = local::members(dir)?.iter().map(|m| m.1).max().unwrap_or(0);
    let mut rng = StdRng::seed_from_u64(seed);
    let w = Workload::start(client, workload_config(&format!("/chaos-{seed}"), seed)).await?;
    let end = Instant::now() + Duration::from_secs(seconds);
    let mut killed = Vec::new();
    while Instant::now() < end {
        let hall = rng.random_range(1..=halls);
        let members = local::hall_members(dir, hall)?;
        let victims: Vec<String> = members.iter().filter(|_| rng.random_bool(0.5)).cloned().collect();
        let victims = if victims.is_empty() {
            vec![members[rng.random_range(0..members.len())].clone()]
        } else {
            victims
        };
        killed.extend(local::kill(dir, &victims)?);
        tokio::time::sleep(Duration::from_millis(rng.random_range(1000..5000))).await;
        local::start_stopped(dir, Some(&victims), None).await?;
        local::wait_healthy_in(dir).await?;
        tokio::time::sleep(Duration::from_millis(rng.random_range(1000..3000))).await;
    }
    Ok(ChaosReport {
        kills: killed.len() as u64,
        killed,
        workload: w.finish().await,
    })
}

#[derive(Debug, Serialize)]
pub struct PowerCutsReport {
    pub hall_cuts: u64,
    pub site_cuts: u64,
    /// What the power-cut disks dropped over all cuts: bytes written and not synced,
    /// directory entries changed and not synced.
    pub dropped_bytes: u64,
    pub dropped_entries: u64,
    /// The longest time from restarting the cut processes until every node answered.
    pub longest_restart_s: f64,
    pub workload: Report,
}

/// [`local::power_cut`] off the runtime's threads (it waits for the processes to die).
async fn power_cut(dir: &Path, hall: Option<u32>) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || local::power_cut(&dir, hall)).await?
}

/// The sum of `key=N` over the disks' reports.
fn dropped(reports: &[String], key: &str) -> u64 {
    reports
        .iter()
        .flat_map(|r| r.split_whitespace())
        .filter_map(|w| w.strip_prefix(key)?.parse::<u64>().ok())
        .sum()
}

/// Power cuts of a random hall (`hall_cuts` of them) and of the whole site (`site_cuts`),
/// in random order, under the checked workload; each followed by a restart of what lost
/// power and a wait until the cluster is healthy. Needs `local up --power-cut-harness`.
pub async fn power_cuts(dir: &Path, hall_cuts: u64, site_cuts: u64, seed: u64) -> anyhow::Result<PowerCutsReport> {
    let client = client_of(dir)?;
    let halls = local::members(dir)?.iter().map(|m| m.1).max().unwrap_or(0);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut cuts: Vec<Option<u32>> = (0..hall_cuts).map(|_| Some(rng.random_range(1..=halls))).collect();
    for _ in 0..site_cuts {
        let at = rng.random_range(0..=cuts.len());
        cuts.insert(at, None);
    }
    let w = Workload::start(client, workload_config(&format!("/power-cuts-{seed}"), seed)).await?;
    let (mut bytes, mut entries, mut longest) = (0, 0, Duration::ZERO);
    for hall in cuts {
        tokio::time::sleep(Duration::from_millis(rng.random_range(500..2000))).await;
        let (killed, reports) = power_cut(dir, hall).await?;
        bytes += dropped(&reports, "bytes=");
        entries += dropped(&reports, "entries=");
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..1500))).await;
        let started = Instant::now();
        local::start_stopped(dir, Some(&killed), None).await?;
        local::wait_healthy_in(dir).await?;
        longest = longest.max(started.elapsed());
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(PowerCutsReport {
        hall_cuts,
        site_cuts,
        dropped_bytes: bytes,
        dropped_entries: entries,
        longest_restart_s: longest.as_secs_f64(),
        workload: w.finish().await,
    })
}
