//! Rolling restart (and upgrade) of a local cluster: logic nodes, then dataservers, then
//! metadata voters, one at a time, each only once the whole cluster answers again. A
//! logic node drains on SIGTERM (it finishes what it took; clients move to another); a
//! restarted voter is waited for until it has caught up. The leader goes last, so
//! leadership moves once: before it stops, it hands over to a voter already restarted
//! (`cairn_metadata::handover`). A leader whose build cannot hand over is restarted in
//! place, and leads again if it is back before the others' election timeout. With new
//! binaries, the roll starts only if each of them reads what every running process
//! writes and the other way round, and reads the metadata group's entry format
//! (DESIGN.md, "Versions and rolling upgrades").

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use cairn_common::config::Config;
use cairn_common::versions::Versions;

use crate::local;
use crate::metadata_admin::{leader_id, leader_status, status, transfer_leader};

const CATCH_UP_WAIT: Duration = Duration::from_secs(60);
const BINARIES: [&str; 3] = ["cairn-logic", "cairn-dataserver", "cairn-metadata"];

/// One kind of node, in the order of a roll.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Tier {
    Logic,
    Dataservers,
    Metadata,
}

impl Tier {
    const ALL: [Tier; 3] = [Tier::Logic, Tier::Dataservers, Tier::Metadata];

    fn prefix(self) -> &'static str {
        match self {
            Tier::Logic => "logic-",
            Tier::Dataservers => "dataserver-",
            Tier::Metadata => "metadata-",
        }
    }
}

/// The order of the roll over `tiers`: logic nodes, dataservers, then voters with the
/// leader last.
async fn order(dir: &Path, c: &Config, tiers: &[Tier]) -> anyhow::Result<Vec<String>> {
    let names: Vec<String> = local::members(dir)?.into_iter().map(|m| m.0).collect();
    let leader = leader_id(&c.metadata_nodes).await.map(|id| format!("metadata-{id}"));
    let mut out = Vec::new();
    for tier in Tier::ALL.into_iter().filter(|t| tiers.contains(t)) {
        out.extend(
            names
                .iter()
                .filter(|n| n.starts_with(tier.prefix()) && Some(*n) != leader.as_ref())
                .cloned(),
        );
    }
    if tiers.contains(&Tier::Metadata) {
        out.extend(leader);
    }
    Ok(out)
}

/// Waits until voter `node` follows and has applied what the leader had applied when it
/// came back.
async fn caught_up(c: &Config, node: u64) -> anyhow::Result<()> {
    let addr = |id: u64| {
        c.metadata_nodes
            .iter()
            .find(|n| n.node_id == id)
            .map(|n| n.addr.to_string())
    };
    let me = addr(node).context("no such voter")?;
    let deadline = Instant::now() + CATCH_UP_WAIT;
    let mut target = None;
    loop {
        if let Ok(s) = status(&me).await {
            if target.is_none() {
                if let Some(leader) = addr(s.leader_id) {
                    target = status(&leader).await.ok().map(|l| l.applied_index);
                }
            }
            if target.is_some_and(|t| s.applied_index >= t) && (s.role == "follower" || s.role == "leader") {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("metadata-{node} has not caught up after {CATCH_UP_WAIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What the binary at `path` reads and writes (`<binary> versions`).
fn versions_of(path: &Path) -> anyhow::Result<Versions> {
    let out = std::process::Command::new(path)
        .arg("versions")
        .output()
        .with_context(|| format!("running {} versions", path.display()))?;
    if !out.status.success() {
        bail!(
            "{} versions: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Versions::parse(&String::from_utf8_lossy(&out.stdout))
        .with_context(|| format!("{} versions printed no version line", path.display()))
}

/// Refuses an upgrade (or a roll back) that could not run beside every running node:
/// each new binary against each running process, and against the entry format the
/// metadata group writes. Nothing is stopped when it refuses.
async fn check_versions(dir: &Path, c: &Config, binaries: &Path) -> anyhow::Result<()> {
    let addrs: Vec<String> = c.metadata_nodes.iter().map(|n| n.addr.to_string()).collect();
    let entry_format = leader_status(&addrs).await?.1.entry_format;
    let mut running = Vec::new();
    for (name, _) in local::members(dir)? {
        if let Some(exe) = local::running_binary(dir, &name) {
            running.push((
                name.clone(),
                versions_of(&exe).with_context(|| format!("the build {name} runs"))?,
            ));
        }
    }
    for b in BINARIES {
        let new = versions_of(&binaries.join(b))?;
        for (name, old) in &running {
            if let Some(why) = new.cannot_replace(old, entry_format) {
                bail!(
                    "refusing to roll: {} cannot run beside {name}: {why}",
                    binaries.join(b).display()
                );
            }
        }
    }
    Ok(())
}

/// A step of a roll, as it is done.
#[derive(Debug)]
pub enum Step<'a> {
    /// Voter `from` led and handed leadership to voter `to` before it stopped.
    HandedOver { from: u64, to: u64, took: Duration },
    /// `name` was restarted and the cluster is healthy again.
    Restarted { name: &'a str, took: Duration },
}

/// Restarts every node of the cluster in `dir` in turn (only those of tier `only` when
/// given), with the binaries in `binaries` (an upgrade) or those beside cairnctl; `each`
/// hears of every step done. Stops at the first node that does not come back healthy.
pub async fn rolling_restart(
    dir: &Path,
    binaries: Option<&Path>,
    only: Option<Tier>,
    mut each: impl FnMut(Step<'_>),
) -> anyhow::Result<Vec<String>> {
    if let Some(d) = binaries {
        for b in BINARIES {
            if !d.join(b).is_file() {
                bail!(
                    "{} not found: --binary names a directory holding {BINARIES:?}",
                    d.join(b).display()
                );
            }
        }
    }
    let c = Config::load(&dir.join("cluster.toml")).context("the local cluster's config")?;
    local::wait_healthy_in(dir)
        .await
        .context("the cluster is not healthy: nothing restarted")?;
    if let Some(d) = binaries {
        check_versions(dir, &c, d).await?;
    }
    let tiers = only.map_or(Tier::ALL.to_vec(), |t| vec![t]);
    let order = order(dir, &c, &tiers).await?;
    let addrs: Vec<String> = c.metadata_nodes.iter().map(|n| n.addr.to_string()).collect();
    for name in &order {
        let started = Instant::now();
        let voter = name.strip_prefix("metadata-").and_then(|id| id.parse::<u64>().ok());
        if let Some(from) = voter {
            if leader_id(&c.metadata_nodes).await == Some(from) {
                let handed = transfer_leader(&addrs, 0)
                    .await
                    .with_context(|| format!("{name} leads and did not hand over: nothing stopped"))?;
                if let Some(to) = handed {
                    each(Step::HandedOver {
                        from,
                        to,
                        took: started.elapsed(),
                    });
                }
            }
        }
        local::stop(dir, name);
        local::start_stopped(dir, Some(std::slice::from_ref(name)), binaries).await?;
        local::wait_healthy_in(dir)
            .await
            .with_context(|| format!("{name} restarted but the cluster is not healthy"))?;
        if let Some(id) = voter {
            caught_up(&c, id).await?;
        }
        each(Step::Restarted {
            name,
            took: started.elapsed(),
        });
    }
    Ok(order)
}
