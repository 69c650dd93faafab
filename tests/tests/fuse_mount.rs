//! A real FUSE mount of a real cluster: plain std::fs calls on the mount point. Files
//! written and read back by checksum, directories, rename replacing a target, unlink,
//! truncate, symlinks and hard links, close-to-open visibility.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cairn_tests::cluster::{pattern, small_stripes, FileCluster};
use cairn_tests::Process;

/// The mount, unmounted (and its process killed) even when the test fails.
struct Mount {
    path: PathBuf,
    process: Process,
}

impl Mount {
    async fn start(cluster: &FileCluster, path: &Path) -> anyhow::Result<Mount> {
        std::fs::create_dir_all(path)?;
        let config = cluster.client_config()?;
        let process = Process::start(
            "cairn-fuse",
            &[
                "--config".as_ref(),
                config.as_os_str(),
                "--mountpoint".as_ref(),
                path.as_os_str(),
            ],
            &cluster.dir.path().join("fuse.log"),
        )?;
        let mut mount = Mount {
            path: path.to_owned(),
            process,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        // Mounted once the mount point's device differs from its parent's.
        while !is_mounted(path) {
            if let Some(status) = mount.process.exited() {
                anyhow::bail!(
                    "cairn-fuse exited with {status}: {}",
                    std::fs::read_to_string(cluster.dir.path().join("fuse.log")).unwrap_or_default()
                );
            }
            anyhow::ensure!(Instant::now() < deadline, "not mounted after 30 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(mount)
    }
}

fn is_mounted(path: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(&*path.to_string_lossy()))
}

impl Drop for Mount {
    fn drop(&mut self) {
        self.process.kill9();
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn plain_files_through_a_fuse_mount() -> anyhow::Result<()> {
    let cluster = FileCluster::start(2, small_stripes()).await?;
    let mnt_dir = tempfile::tempdir()?;
    let mnt = mnt_dir.path().join("cairn");
    let _mount = Mount::start(&cluster, &mnt).await?;
    let m = mnt.clone();
    // std::fs blocks: run the file calls off the async runtime.
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        std::fs::create_dir_all(m.join("data/deep"))?;
        for (i, len) in [0usize, 1, 4095, 4096, 65_537, (1 << 20) - 1, (1 << 20) + 1, 5 << 20]
            .into_iter()
            .enumerate()
        {
            let p = m.join(format!("data/f{len}"));
            let data = pattern(len, i as u8);
            std::fs::write(&p, &data)?;
            let back = std::fs::read(&p)?;
            assert_eq!(back.len(), len);
            assert_eq!(crc32c::crc32c(&back), crc32c::crc32c(&data), "{len} bytes");
            assert_eq!(std::fs::metadata(&p)?.len(), len as u64);
        }
        let mut names: Vec<String> = std::fs::read_dir(m.join("data"))?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_, _>>()?;
        names.sort();
        assert_eq!(names.len(), 9, "{names:?}");
        // Rename replaces the target atomically; the old name is gone.
        std::fs::rename(m.join("data/f1"), m.join("data/f4095"))?;
        assert_eq!(std::fs::read(m.join("data/f4095"))?.len(), 1);
        assert!(!m.join("data/f1").exists());
        // Truncate, append through an open file, hard link, symlink.
        let f = std::fs::OpenOptions::new().write(true).open(m.join("data/f4096"))?;
        f.set_len(100)?;
        drop(f);
        assert_eq!(std::fs::read(m.join("data/f4096"))?, pattern(4096, 3).slice(..100));
        {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new().append(true).open(m.join("data/f4096"))?;
            f.write_all(b"tail")?;
            f.sync_all()?;
        }
        let mut want = pattern(4096, 3).slice(..100).to_vec();
        want.extend_from_slice(b"tail");
        assert_eq!(std::fs::read(m.join("data/f4096"))?, want);
        std::fs::hard_link(m.join("data/f0"), m.join("data/deep/link"))?;
        assert_eq!(std::fs::metadata(m.join("data/f0"))?.len(), 0);
        std::os::unix::fs::symlink("../f65537", m.join("data/deep/sym"))?;
        assert_eq!(std::fs::read_link(m.join("data/deep/sym"))?, PathBuf::from("../f65537"));
        assert_eq!(std::fs::read(m.join("data/deep/sym"))?.len(), 65_537);
        // Unlink and rmdir; a non-empty directory is refused.
        assert!(std::fs::remove_dir(m.join("data")).is_err());
        std::fs::remove_file(m.join("data/deep/link"))?;
        std::fs::remove_file(m.join("data/deep/sym"))?;
        std::fs::remove_dir(m.join("data/deep"))?;
        assert!(!m.join("data/deep").exists());
        Ok(())
    })
    .await??;
    // What went through the mount is what a client of the cluster sees.
    let c = cluster.client();
    let data = c.lookup(1, b"data").await?;
    let f = c.lookup(data.inode, format!("f{}", 5 << 20).as_bytes()).await?;
    assert_eq!(c.read_file(f.inode).await?, pattern(5 << 20, 7));
    Ok(())
}
