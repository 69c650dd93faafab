//! `cairnctl file put|get|ls`: files through the logic nodes of a cluster (the same path a
//! training job's client takes), by path from the root.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use cairn_client::{components, CairnClient};
use cairn_common::config::Config;
use clap::Subcommand;

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
            let parts = components(&path)?;
            let Some((name, dirs)) = parts.split_last() else {
                bail!("{path:?} names no file");
            };
            let dir = client.make_dirs(&dirs.join("/"), 0o755).await?;
            let inode = client.create_in(dir, name.as_bytes(), 0o644, false).await?.inode;
            let attr = client.write_file(inode, Bytes::from(data)).await?;
            println!(
                "stored {path}: {} bytes, layout version {}",
                attr.size, attr.layout_version
            );
        }
        FileCommand::Get { path, local } => {
            let inode = client.resolve(&path).await?.inode;
            let data = client.read_file(inode).await?;
            std::fs::write(&local, &data).with_context(|| format!("writing {}", local.display()))?;
            println!("read {path}: {} bytes", data.len());
        }
        FileCommand::Ls { path } => {
            let dir = client.resolve(&path).await?.inode;
            for e in client.list_dir(dir).await? {
                let a = client.getattr(e.inode).await?;
                println!("{:04o} {:>12} {}", a.mode, a.size, String::from_utf8_lossy(&e.name));
            }
        }
    }
    Ok(())
}
