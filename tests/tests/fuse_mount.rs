//! A real FUSE mount of a real cluster (3 voters, 8 dataservers in 4 halls, 2 logic
//! nodes): plain file calls on the mount point, `tar`, `diff` and real PyTorch.

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{ensure, Context};
use cairn_tests::cluster::{pattern, small_stripes, FileCluster};
use cairn_tests::mount::Mount;

struct Mounted {
    cluster: FileCluster,
    _mount: Mount,
    dir: PathBuf,
    tmp: tempfile::TempDir,
}

async fn mounted() -> anyhow::Result<Mounted> {
    let cluster = FileCluster::start(2, small_stripes()).await?;
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("cairn");
    let mount = Mount::start(
        &cluster.client_config()?,
        &dir,
        "/",
        &cluster.dir.path().join("fuse.log"),
    )
    .await?;
    Ok(Mounted {
        cluster,
        _mount: mount,
        dir,
        tmp,
    })
}

/// renameat2(2), which std does not offer, with `flags`.
fn renameat2(from: &Path, to: &Path, flags: libc::c_uint) -> std::io::Result<()> {
    let from = std::ffi::CString::new(from.as_os_str().as_bytes())?;
    let to = std::ffi::CString::new(to.as_os_str().as_bytes())?;
    // SAFETY: two NUL-terminated paths that live across the call.
    let r = unsafe { libc::renameat2(libc::AT_FDCWD, from.as_ptr(), libc::AT_FDCWD, to.as_ptr(), flags) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn crc(path: &Path) -> anyhow::Result<(usize, u32)> {
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok((data.len(), crc32c::crc32c(&data)))
}

/// Runs a command as user and group 65534 (nobody), returning whether it succeeded.
fn as_nobody(script: &str) -> anyhow::Result<bool> {
    Ok(Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "sh", "-c", script])
        .stderr(std::process::Stdio::null())
        .status()?
        .success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn files_of_every_size_and_the_posix_programs_rely_on() -> anyhow::Result<()> {
    let m = mounted().await?;
    let root = m.dir.clone();
    // std::fs blocks: run the file calls off the async runtime.
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        std::fs::create_dir_all(root.join("data/deep"))?;
        let sizes = [0usize, 1, 4095, 4096, (1 << 20) - 1, 1 << 20, (1 << 20) + 1, 100 << 20];
        for (i, len) in sizes.into_iter().enumerate() {
            let p = root.join(format!("data/f{len}"));
            let data = pattern(len, i as u8);
            std::fs::write(&p, &data)?;
            assert_eq!(crc(&p)?, (len, crc32c::crc32c(&data)), "{len} bytes");
            assert_eq!(std::fs::metadata(&p)?.len(), len as u64);
        }
        assert_eq!(std::fs::read_dir(root.join("data"))?.count(), sizes.len() + 1);

        // A partial overwrite in the middle of a multi-stripe file, through an open file.
        let p = root.join(format!("data/f{}", (1 << 20) + 1));
        let mut want = pattern((1 << 20) + 1, 6).to_vec();
        {
            let mut f = std::fs::OpenOptions::new().write(true).open(&p)?;
            f.seek(SeekFrom::Start(300_000))?;
            f.write_all(&[b'x'; 1000])?;
            f.seek(SeekFrom::Start(700_000))?;
            f.write_all(&[b'y'; 300_000])?;
        }
        want[300_000..301_000].fill(b'x');
        want[700_000..1_000_000].fill(b'y');
        assert_eq!(crc(&p)?, (want.len(), crc32c::crc32c(&want)));

        // A sparse file: what was never written reads as zeros.
        let sparse = root.join("data/sparse");
        {
            let mut f = std::fs::File::create(&sparse)?;
            f.seek(SeekFrom::Start(5 << 20))?;
            f.write_all(b"end")?;
        }
        let back = std::fs::read(&sparse)?;
        assert_eq!(back.len(), (5 << 20) + 3);
        assert!(back[..5 << 20].iter().all(|b| *b == 0));
        assert_eq!(&back[5 << 20..], b"end");

        // Rename replaces its target; the old name is gone.
        std::fs::rename(root.join("data/f1"), root.join("data/f4095"))?;
        assert_eq!(std::fs::read(root.join("data/f4095"))?.len(), 1);
        assert!(!root.join("data/f1").exists());

        // Truncate, then append through an open file with fsync.
        let f = std::fs::OpenOptions::new().write(true).open(root.join("data/f4096"))?;
        f.set_len(100)?;
        drop(f);
        assert_eq!(std::fs::read(root.join("data/f4096"))?, pattern(4096, 3).slice(..100));
        {
            let mut f = std::fs::OpenOptions::new().append(true).open(root.join("data/f4096"))?;
            f.write_all(b"tail")?;
            f.sync_all()?;
        }
        let mut want = pattern(4096, 3).slice(..100).to_vec();
        want.extend_from_slice(b"tail");
        assert_eq!(std::fs::read(root.join("data/f4096"))?, want);

        // Unlinked while open: still readable (and writable) through the open file.
        let doomed = root.join("data/doomed");
        std::fs::write(&doomed, pattern(300_000, 9))?;
        let mut f = std::fs::OpenOptions::new().read(true).write(true).open(&doomed)?;
        std::fs::remove_file(&doomed)?;
        assert!(!doomed.exists());
        let mut back = Vec::new();
        f.read_to_end(&mut back)?;
        assert_eq!(back, pattern(300_000, 9));
        f.write_all(b"more")?;
        f.seek(SeekFrom::Start(300_000))?;
        let mut tail = Vec::new();
        f.read_to_end(&mut tail)?;
        assert_eq!(tail, b"more");
        drop(f);

        // Hard links and symlinks.
        std::fs::hard_link(root.join("data/f0"), root.join("data/deep/link"))?;
        assert_eq!(std::fs::metadata(root.join("data/f0"))?.len(), 0);
        std::os::unix::fs::symlink("../f4096", root.join("data/deep/sym"))?;
        assert_eq!(
            std::fs::read_link(root.join("data/deep/sym"))?,
            PathBuf::from("../f4096")
        );
        assert_eq!(std::fs::read(root.join("data/deep/sym"))?, want);

        // renameat2: RENAME_NOREPLACE refuses an existing name and changes nothing;
        // RENAME_EXCHANGE swaps two names, of two files or of a file and a directory.
        let (a, b) = (root.join("data/swap-a"), root.join("data/swap-b"));
        std::fs::write(&a, b"first")?;
        std::fs::write(&b, b"second")?;
        let refused = renameat2(&a, &b, libc::RENAME_NOREPLACE).expect_err("an existing name");
        assert_eq!(refused.raw_os_error(), Some(libc::EEXIST));
        assert_eq!(
            (std::fs::read(&a)?, std::fs::read(&b)?),
            (b"first".to_vec(), b"second".to_vec())
        );
        renameat2(&a, &b, libc::RENAME_EXCHANGE)?;
        assert_eq!(
            (std::fs::read(&a)?, std::fs::read(&b)?),
            (b"second".to_vec(), b"first".to_vec())
        );
        let c = root.join("data/swap-c");
        renameat2(&a, &c, libc::RENAME_NOREPLACE)?;
        assert!(!a.exists() && std::fs::read(&c)? == b"second");
        let missing = renameat2(&c, &a, libc::RENAME_EXCHANGE).expect_err("no name to swap with");
        assert_eq!(missing.raw_os_error(), Some(libc::ENOENT));
        renameat2(&c, &root.join("data/deep"), libc::RENAME_EXCHANGE)?;
        assert!(std::fs::metadata(&c)?.is_dir() && std::fs::read(root.join("data/deep"))? == b"second");
        renameat2(&c, &root.join("data/deep"), libc::RENAME_EXCHANGE)?;
        assert!(root.join("data/deep/link").exists());
        std::fs::remove_file(&b)?;
        std::fs::remove_file(&c)?;

        // Extended attributes: set, get, list, the create and replace flags, remove; ACLs
        // are refused rather than stored unenforced; only who may write the file may set
        // them.
        let tagged = root.join("data/tagged");
        std::fs::write(&tagged, b"content")?;
        let script = r#"
import errno, os, sys
p = sys.argv[1]
big = bytes(range(256)) * 128
os.setxattr(p, "user.checksum", b"crc32c:1234")
os.setxattr(p, "user.empty", b"")
os.setxattr(p, "user.big", big, os.XATTR_CREATE)
assert os.getxattr(p, "user.checksum") == b"crc32c:1234"
assert os.getxattr(p, "user.empty") == b""
assert os.getxattr(p, "user.big") == big
assert sorted(os.listxattr(p)) == ["user.big", "user.checksum", "user.empty"], os.listxattr(p)
def fails(code, f, *a):
    try:
        f(*a)
    except OSError as e:
        assert e.errno == code, (e, code)
        return
    raise AssertionError("no error %d" % code)
fails(errno.EEXIST, os.setxattr, p, "user.empty", b"1", os.XATTR_CREATE)
fails(errno.ENODATA, os.setxattr, p, "user.none", b"1", os.XATTR_REPLACE)
fails(errno.ENODATA, os.getxattr, p, "user.none")
fails(errno.EOPNOTSUPP, os.setxattr, p, "system.posix_acl_access", b"\x02\x00\x00\x00")
os.removexattr(p, "user.big")
fails(errno.ENODATA, os.removexattr, p, "user.big")
assert sorted(os.listxattr(p)) == ["user.checksum", "user.empty"], os.listxattr(p)
assert open(p, "rb").read() == b"content"
# An absence the mount was told of is not served once the mount has set the attribute.
fails(errno.ENODATA, os.getxattr, p, "user.late")
os.setxattr(p, "user.late", b"1")
assert os.getxattr(p, "user.late") == b"1"
os.removexattr(p, "user.late")
fails(errno.ENODATA, os.getxattr, p, "user.late")
# A write drops the file's capabilities (the kernel asks for them before every write).
import struct
os.setxattr(p, "security.capability", struct.pack("<5I", 0x02000000, 1 << 10, 0, 0, 0))
assert len(os.getxattr(p, "security.capability")) == 20
with open(p, "r+b") as f:
    f.write(b"C")
fails(errno.ENODATA, os.getxattr, p, "security.capability")
assert open(p, "rb").read() == b"Content"
"#;
        let out = Command::new("python3").arg("-c").arg(script).arg(&tagged).output()?;
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        std::fs::set_permissions(&tagged, std::fs::Permissions::from_mode(0o644))?;
        let set_by = |who: &str| {
            format!(
                "python3 -c \"import os; os.setxattr('{}', 'user.by', b'{who}')\"",
                tagged.display()
            )
        };
        std::fs::set_permissions(root.join("data"), std::fs::Permissions::from_mode(0o755))?;
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755))?;
        assert!(!as_nobody(&set_by("nobody"))?, "nobody set an attribute of root's file");
        std::fs::remove_file(&tagged)?;

        // Permissions are checked against the caller.
        let private = root.join("data/private");
        std::fs::write(&private, b"secret")?;
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o600))?;
        std::fs::set_permissions(root.join("data"), std::fs::Permissions::from_mode(0o755))?;
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755))?;
        let q = |p: &Path| p.to_string_lossy().into_owned();
        assert!(!as_nobody(&format!("cat {} >/dev/null", q(&private)))?);
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o644))?;
        assert!(as_nobody(&format!("cat {} >/dev/null", q(&private)))?);
        assert!(!as_nobody(&format!("echo x >> {}", q(&private)))?);
        assert!(!as_nobody(&format!("touch {}/data/new", q(&root)))?);
        assert_eq!(std::fs::read(&private)?, b"secret");

        // A directory this mount just changed shows the change at once: its mtime moved
        // with the create in it, and a chmod right after holds.
        let fresh = root.join("data/fresh");
        std::fs::create_dir(&fresh)?;
        let ns = |m: &std::fs::Metadata| i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec());
        let before = std::fs::metadata(&fresh)?;
        std::fs::write(fresh.join("a"), b"a")?;
        let after = std::fs::metadata(&fresh)?;
        ensure!(
            ns(&after) > ns(&before),
            "directory mtime {} not after {}",
            ns(&after),
            ns(&before)
        );
        std::fs::set_permissions(&fresh, std::fs::Permissions::from_mode(0o700))?;
        std::fs::write(fresh.join("b"), b"b")?;
        assert_eq!(std::fs::metadata(&fresh)?.mode() & 0o7777, 0o700);
        assert!(!as_nobody(&format!("ls {} >/dev/null", q(&fresh)))?);
        std::fs::set_permissions(&fresh, std::fs::Permissions::from_mode(0o755))?;
        assert!(as_nobody(&format!("ls {} >/dev/null", q(&fresh)))?);
        std::fs::remove_dir_all(&fresh)?;

        // statfs reports the dataservers' space.
        let out = Command::new("stat")
            .args(["-f", "-c", "%b %a %S"])
            .arg(&root)
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let v: Vec<u64> = text.split_whitespace().filter_map(|s| s.parse().ok()).collect();
        ensure!(v.len() == 3 && v[0] > 0 && v[1] > 0 && v[1] <= v[0], "statfs: {text}");

        // Unlink and rmdir; a non-empty directory is refused.
        assert!(std::fs::remove_dir(root.join("data")).is_err());
        std::fs::remove_file(root.join("data/deep/link"))?;
        std::fs::remove_file(root.join("data/deep/sym"))?;
        std::fs::remove_dir(root.join("data/deep"))?;
        assert!(!root.join("data/deep").exists());
        Ok(())
    })
    .await??;
    // What went through the mount is what a client of the cluster sees.
    let c = m.cluster.client();
    let data = c.lookup(1, b"data").await?;
    let f = c.lookup(data.inode, format!("f{}", 100 << 20).as_bytes()).await?;
    assert_eq!(c.read_file(f.inode).await?, pattern(100 << 20, 7));

    // A subtree mount: /data is its root; nothing above it shows, and what is written
    // through it lands under /data.
    let sub = m.tmp.path().join("sub");
    let config = m.cluster.client_config()?;
    let log = m.cluster.dir.path().join("fuse-sub.log");
    let _sub = Mount::start(&config, &sub, "/data", &log).await?;
    let sub2 = sub.clone();
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let sub = sub2;
        assert_eq!(std::fs::read(sub.join("f4096"))?.len(), 104);
        assert!(!sub.join("data").exists());
        std::fs::create_dir(sub.join("made-in-sub"))?;
        std::fs::write(sub.join("made-in-sub/x"), b"through the subtree")?;
        let names: Vec<String> = std::fs::read_dir(&sub)?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_, _>>()?;
        ensure!(names.contains(&"made-in-sub".to_owned()), "{names:?}");
        // The root of the mount is its own parent.
        assert_eq!(
            std::fs::canonicalize(sub.join("made-in-sub/.."))?,
            std::fs::canonicalize(&sub)?
        );
        Ok(())
    })
    .await??;
    let made = c.lookup(data.inode, b"made-in-sub").await?;
    assert_eq!(
        c.read_file(c.lookup(made.inode, b"x").await?.inode).await?,
        &b"through the subtree"[..]
    );
    for (subtree, why) in [("/nope", "subtree \"/nope\""), ("/data/f4096", "not a directory")] {
        let refused = Mount::start(&config, &m.tmp.path().join("bad"), subtree, &log).await;
        let e = refused.expect_err("a subtree that is not a directory");
        ensure!(e.to_string().contains(why), "{subtree}: {e}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_small_files_and_an_unpacked_source_tree() -> anyhow::Result<()> {
    let m = mounted().await?;
    let root = m.dir.clone();
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        const FILES: usize = 10_000;
        std::fs::create_dir(root.join("many"))?;
        let write = |t: usize| -> anyhow::Result<()> {
            for i in (t..FILES).step_by(8) {
                std::fs::write(root.join(format!("many/{i:05}")), pattern(100 + i % 3000, i as u8))?;
            }
            Ok(())
        };
        std::thread::scope(|s| {
            let workers: Vec<_> = (0..8).map(|t| s.spawn(move || write(t))).collect();
            workers
                .into_iter()
                .try_for_each(|w| w.join().unwrap_or_else(|_| Err(anyhow::anyhow!("panicked"))))
        })?;
        let mut names: Vec<String> = std::fs::read_dir(root.join("many"))?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_, _>>()?;
        names.sort();
        assert_eq!(names.len(), FILES);
        for (i, name) in names.iter().enumerate() {
            assert_eq!(name, &format!("{i:05}"));
            let data = pattern(100 + i % 3000, i as u8);
            assert_eq!(crc(&root.join("many").join(name))?, (data.len(), crc32c::crc32c(&data)));
        }

        // A source tree (this repository's) unpacked with tar, compared with diff -r.
        // Read at run time: a test binary reused from another checkout through a shared
        // target directory carries that checkout's path in `env!`.
        let src = std::env::var_os("CARGO_MANIFEST_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
            .join("..");
        let tarball = root.parent().context("mount has a parent")?.join("src.tar");
        let dirs = ["common", "metadata", "dataserver"];
        let ok = Command::new("tar")
            .arg("-C")
            .arg(&src)
            .arg("-cf")
            .arg(&tarball)
            .args(dirs)
            .status()?
            .success();
        ensure!(ok, "tar -c failed");
        std::fs::create_dir(root.join("src"))?;
        let ok = Command::new("tar")
            .arg("-C")
            .arg(root.join("src"))
            .arg("-xf")
            .arg(&tarball)
            .status()?
            .success();
        ensure!(ok, "tar -x into the mount failed");
        for d in dirs {
            let out = Command::new("diff")
                .arg("-r")
                .arg(src.join(d))
                .arg(root.join("src").join(d))
                .output()?;
            ensure!(
                out.status.success(),
                "diff -r {d}: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        Ok(())
    })
    .await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reader_never_sees_a_half_renamed_file() -> anyhow::Result<()> {
    let m = mounted().await?;
    let root = m.dir.clone();
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        const LEN: usize = 600_000;
        let target = root.join("current");
        std::fs::write(&target, pattern(LEN, 0))?;
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let (target, stop) = (target.clone(), stop.clone());
            std::thread::spawn(move || -> anyhow::Result<usize> {
                let mut reads = 0;
                while !stop.load(Ordering::Acquire) {
                    let data = std::fs::read(&target)?;
                    // Every version is pattern(LEN, seed), and its first byte is the seed.
                    let seed = *data.first().context("empty read")?;
                    ensure!(
                        data == pattern(LEN, seed),
                        "read {} bytes of a mixed or partial version",
                        data.len()
                    );
                    reads += 1;
                }
                Ok(reads)
            })
        };
        for seed in 1..=40u8 {
            let tmp = root.join(format!("tmp{seed}"));
            std::fs::write(&tmp, pattern(LEN, seed))?;
            std::fs::rename(&tmp, &target)?;
        }
        stop.store(true, Ordering::Release);
        let reads = reader.join().map_err(|_| anyhow::anyhow!("reader panicked"))??;
        ensure!(reads > 0, "the reader read nothing");
        assert_eq!(std::fs::read(&target)?, pattern(LEN, 40));
        Ok(())
    })
    .await??;
    Ok(())
}

/// The Python of the cached virtual environment with torch (`scripts/test.sh` makes it).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn torch_save_and_load_a_models_state_dict() -> anyhow::Result<()> {
    let python = cairn_tests::venv_python()?;
    let m = mounted().await?;
    let script = r#"
import sys, torch
torch.manual_seed(0)
model = torch.nn.Transformer(d_model=256, nhead=8, num_encoder_layers=3, num_decoder_layers=3,
                             dim_feedforward=1024)
state = model.state_dict()
path = sys.argv[1] + "/ckpt/model.pt"
import os; os.makedirs(os.path.dirname(path), exist_ok=True)
torch.save(state, path)
back = torch.load(path, weights_only=True)
assert back.keys() == state.keys(), "keys differ"
for k in state:
    assert torch.equal(back[k], state[k]), k
n = sum(t.numel() * t.element_size() for t in state.values())
print(f"ok {len(state)} tensors {n} bytes {os.path.getsize(path)} on disk")
"#;
    let dir = m.dir.clone();
    let out =
        tokio::task::spawn_blocking(move || Command::new(&python).arg("-c").arg(script).arg(&dir).output()).await??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && stdout.starts_with("ok "),
        "torch through the mount failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
