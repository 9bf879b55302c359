//! The fixture function binary: `testkit/fixture/src/main.rs` compiled by plain `rustc` into a
//! statically linked executable that runs in an otherwise empty container image.
//!
//! The binary lands in `<workspace>/target/fixture/fixture-fn-<hash>`, where the hash covers the
//! source, the compiler (`rustc -vV`) and the flags, so it is rebuilt only when one of them
//! changes. Builds hold an exclusive `flock` on `target/fixture/.lock` and rename the finished
//! file into place, so the many test processes nextest starts at once build it once and never
//! see a half-written file.

use std::fs;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use nix::fcntl::{Flock, FlockArg};
use sha2::{Digest, Sha256};

use crate::procfs;

/// File name prefix of the fixture function binary.
pub const FIXTURE_NAME: &str = "fixture-fn";

/// Changes whenever the build recipe below changes, to invalidate old outputs.
const RECIPE: &str = "bramble-testkit static rustc build v1";

/// The workspace root (the parent of the testkit crate).
pub fn workspace_dir() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// The fixture function's source file.
pub fn fixture_source() -> PathBuf {
    workspace_dir().join("testkit/fixture/src/main.rs")
}

/// Where fixture binaries are built.
pub fn fixture_dir() -> PathBuf {
    workspace_dir().join("target/fixture")
}

/// The statically linked fixture function binary, built on first use (once per process; across
/// processes only when the source or compiler changed).
pub fn fixture_binary() -> io::Result<PathBuf> {
    static FIXTURE: OnceLock<Result<PathBuf, (io::ErrorKind, String)>> = OnceLock::new();
    FIXTURE
        .get_or_init(|| {
            build_static_binary(&fixture_source(), FIXTURE_NAME, &fixture_dir())
                .map_err(|e| (e.kind(), e.to_string()))
        })
        .clone()
        .map_err(|(kind, message)| io::Error::new(kind, message))
}

/// Compiles the single-file, std-only Rust program `source` into a static executable
/// `<out_dir>/<name>-<hash>` and returns its path; returns at once when that file exists.
///
/// The compiler is `$RUSTC` or `rustc`; the target is its host triple. Safe to call from many
/// processes at once.
pub fn build_static_binary(source: &Path, name: &str, out_dir: &Path) -> io::Result<PathBuf> {
    let code = fs::read(source)
        .map_err(|e| procfs::context(format!("reading {}", source.display()), &e))?;
    let rustc = std::env::var_os("RUSTC").map_or_else(|| PathBuf::from("rustc"), PathBuf::from);
    let version = run_rustc_version(&rustc)?;
    let host = version
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(str::trim)
        .ok_or_else(|| {
            io::Error::other(format!(
                "no `host:` line in `{} -vV`:\n{version}",
                rustc.display()
            ))
        })?;
    let flags = [
        "--edition",
        "2024",
        "-O",
        "-C",
        "target-feature=+crt-static",
        "-C",
        "strip=debuginfo",
        "--target",
        host,
    ];

    let mut hasher = Sha256::new();
    for part in [
        RECIPE.as_bytes(),
        flags.join(" ").as_bytes(),
        &code,
        version.as_bytes(),
    ] {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    let hash: String = hasher
        .finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect();
    let output = out_dir.join(format!("{name}-{hash}"));
    if output.is_file() {
        return Ok(output);
    }

    fs::create_dir_all(out_dir)
        .map_err(|e| procfs::context(format!("creating {}", out_dir.display()), &e))?;
    let lock_path = out_dir.join(".lock");
    let lock_file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| procfs::context(format!("opening {}", lock_path.display()), &e))?;
    let _lock = Flock::lock(lock_file, FlockArg::LockExclusive).map_err(|(_, errno)| {
        procfs::context(
            format!("flock {}", lock_path.display()),
            &io::Error::from(errno),
        )
    })?;
    // Another process may have built it while we waited for the lock.
    if output.is_file() {
        return Ok(output);
    }
    let scratch = tempfile::Builder::new()
        .prefix(".build-")
        .tempdir_in(out_dir)
        .map_err(|e| {
            procfs::context(
                format!("creating a build directory in {}", out_dir.display()),
                &e,
            )
        })?;
    let built = scratch.path().join(name);
    let result = Command::new(&rustc)
        .args(flags)
        .arg(source)
        .arg("-o")
        .arg(&built)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| procfs::context(format!("running {}", rustc.display()), &e))?;
    if !result.status.success() {
        return Err(io::Error::other(format!(
            "{} {} {} -o {} failed ({}):\n{}",
            rustc.display(),
            flags.join(" "),
            source.display(),
            built.display(),
            result.status,
            String::from_utf8_lossy(&result.stderr).trim()
        )));
    }
    fs::rename(&built, &output).map_err(|e| {
        procfs::context(
            format!("renaming {} to {}", built.display(), output.display()),
            &e,
        )
    })?;
    Ok(output)
}

fn run_rustc_version(rustc: &Path) -> io::Result<String> {
    let output = Command::new(rustc)
        .arg("-vV")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| procfs::context(format!("running {} -vV", rustc.display()), &e))?;
    if !output.status.success() {
        return Err(io::Error::other(format!(
            "{} -vV failed ({}): {}",
            rustc.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// True when `path` is an ELF executable without a program interpreter (`PT_INTERP`), i.e. it
/// runs without a dynamic loader (static or static-pie). 32- and 64-bit, either byte order.
pub fn is_static_elf(path: &Path) -> io::Result<bool> {
    let mut file = fs::File::open(path)
        .map_err(|e| procfs::context(format!("opening {}", path.display()), &e))?;
    let mut header = [0u8; 64];
    // 64 bytes: the 64-bit header; a 32-bit header (52 bytes) is always followed by more.
    file.read_exact(&mut header).map_err(|e| {
        procfs::context(format!("reading the ELF header of {}", path.display()), &e)
    })?;
    if header[..4] != *b"\x7fELF" {
        return Ok(false);
    }
    let wide = header[4] == 2;
    let big_endian = header[5] == 2;
    let field = |bytes: &[u8]| -> u64 {
        let mut value = 0u64;
        for (i, b) in bytes.iter().enumerate() {
            let shift = if big_endian {
                8 * (bytes.len() - 1 - i)
            } else {
                8 * i
            };
            value |= u64::from(*b) << shift;
        }
        value
    };
    let (phoff, phentsize, phnum) = if wide {
        (
            field(&header[32..40]),
            field(&header[54..56]),
            field(&header[56..58]),
        )
    } else {
        (
            field(&header[28..32]),
            field(&header[42..44]),
            field(&header[44..46]),
        )
    };
    let mut entry = vec![0u8; usize::try_from(phentsize).unwrap_or(0).max(4)];
    for i in 0..phnum {
        file.seek(SeekFrom::Start(phoff + i * phentsize))?;
        file.read_exact(&mut entry).map_err(|e| {
            procfs::context(
                format!("reading program header {i} of {}", path.display()),
                &e,
            )
        })?;
        const PT_INTERP: u64 = 3;
        if field(&entry[..4]) == PT_INTERP {
            return Ok(false);
        }
    }
    Ok(true)
}
