//! `cairnctl file put|get|ls`: files through the logic nodes of a cluster (the same path a
//! training job's client takes), by path from the root.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use cairn_client::{CairnClient, ClientError};
use cairn_common::config::Config;
use cairn_common::proto::metadata::{meta_reply, meta_request::Op, Errno, ReadDir};
use clap::Subcommand;

const ROOT: u64 = 1;

#[derive(Subcommand, Debug)]
pub enum FileCommand {
    /// Store a local file at PATH (parent directories are made as needed).
    Put { local: PathBuf, path: String },
    /// Write the file at PATH to a local file.
    Get { path: String, local: PathBuf },
    /// List the directory at PATH.
    Ls {
        #[arg(default_value = "/")]
        path: String,
    },
}

fn parts(path: &str) -> Vec<&str> {
    path.split('/').filter(|p| !p.is_empty()).collect()
}

async fn resolve(c: &CairnClient, parts: &[&str], make: bool) -> anyhow::Result<u64> {
    let mut dir = ROOT;
    for part in parts {
        dir = match c.lookup(dir, part.as_bytes()).await {
            Ok(a) => a.inode,
            Err(e) if make && e.errno() == Some(Errno::Enoent) => c.mkdir(dir, part.as_bytes(), 0o755).await?.inode,
            Err(e) => return Err(e).with_context(|| format!("looking up {part:?}")),
        };
    }
    Ok(dir)
}

pub async fn run(config: &Path, command: FileCommand) -> anyhow::Result<()> {
    let c = Config::load(config)?;
    let client = CairnClient::new(
        c.logic_nodes.iter().map(|l| l.addr).collect(),
        c.erasure.clone(),
        Duration::from_secs(60),
    );
    match command {
        FileCommand::Put { local, path } => {
            let data = std::fs::read(&local).with_context(|| format!("reading {}", local.display()))?;
            let p = parts(&path);
            let Some((name, dirs)) = p.split_last() else {
                bail!("{path:?} names no file");
            };
            let dir = resolve(&client, dirs, true).await?;
            let inode = match client.create(dir, name.as_bytes(), 0o644).await {
                Ok(a) => a.inode,
                Err(ClientError::Refused {
                    errno: Errno::Eexist, ..
                }) => client.lookup(dir, name.as_bytes()).await?.inode,
                Err(e) => return Err(e.into()),
            };
            let attr = client.write_file(inode, Bytes::from(data)).await?;
            println!(
                "stored {path}: {} bytes, layout version {}",
                attr.size, attr.layout_version
            );
        }
        FileCommand::Get { path, local } => {
            let inode = resolve(&client, &parts(&path), false).await?;
            let data = client.read_file(inode).await?;
            std::fs::write(&local, &data).with_context(|| format!("writing {}", local.display()))?;
            println!("read {path}: {} bytes", data.len());
        }
        FileCommand::Ls { path } => {
            let dir = resolve(&client, &parts(&path), false).await?;
            let mut after = Vec::new();
            loop {
                let page = match client
                    .meta(Op::Readdir(ReadDir {
                        dir,
                        after: after.clone(),
                        limit: 0,
                    }))
                    .await?
                {
                    meta_reply::Result::Entries(e) => e,
                    other => bail!("unexpected reply {other:?}"),
                };
                for e in &page.entries {
                    let a = client.getattr(e.inode).await?;
                    println!("{:04o} {:>12} {}", a.mode, a.size, String::from_utf8_lossy(&e.name));
                }
                match page.entries.last() {
                    Some(last) if !page.done => after = last.name.clone(),
                    _ => break,
                }
            }
        }
    }
    Ok(())
}
