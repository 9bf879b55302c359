//! Hostile image archives and layers against a real containerd (private root and socket):
//! layers with `../` paths, absolute paths, symlinks and hardlinks out of the root, archives
//! with missing, linked or absurdly sized blobs, and decompression bombs (a layer and an
//! archive of a few KiB that decompress to a GiB).
//!
//! For each: the import fails with a clear error or what it writes stays inside containerd's
//! snapshots; nothing outside changes; a refused import leaves no image behind.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bramble_runtime::Runtime;
use bramble_runtime::image::no_progress;
use bramble_runtime::image::platform::Platform;
use bramble_testkit::TestEnv;
use bramble_testkit::harness::{self, Need};
use serde_json::json;
use sha2::{Digest as _, Sha256};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const GZIP_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const TAR_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

fn main() {
    let needs = [Need::Root, Need::Binary("containerd")];
    let trials = vec![
        harness::async_trial(
            "layers_cannot_write_outside_their_snapshot",
            layers_cannot_write_outside_their_snapshot,
        ),
        harness::async_trial(
            "archive_tricks_are_refused_clearly_and_change_nothing",
            archive_tricks_are_refused_clearly_and_change_nothing,
        ),
        harness::async_trial(
            "decompression_bombs_are_refused_before_unpacking",
            decompression_bombs_are_refused_before_unpacking,
        ),
    ];
    harness::main(&needs, trials);
}

fn digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// One PAX record, `LEN key=value\n` where LEN counts the whole record.
fn pax_record(key: &str, value: &str) -> Vec<u8> {
    let body = format!(" {key}={value}\n");
    let mut len = body.len();
    loop {
        let total = len.to_string().len() + body.len();
        if total == len {
            break;
        }
        len = total;
    }
    format!("{len}{body}").into_bytes()
}

/// Appends an entry whose name and link target are given in a PAX header, so that nothing
/// (not the tar crate's path checks, not the 100-byte name field) changes them.
fn entry(
    b: &mut tar::Builder<Vec<u8>>,
    kind: tar::EntryType,
    name: &str,
    link: Option<&str>,
    data: &[u8],
) {
    let mut pax = pax_record("path", name);
    if let Some(link) = link {
        pax.extend(pax_record("linkpath", link));
    }
    let mut h = tar::Header::new_ustar();
    h.set_path("PaxHeaders/entry").unwrap();
    h.set_entry_type(tar::EntryType::XHeader);
    h.set_size(pax.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    b.append(&h, &pax[..]).unwrap();

    let mut h = tar::Header::new_ustar();
    h.set_path("placeholder").unwrap();
    h.set_entry_type(kind);
    h.set_size(data.len() as u64);
    h.set_mode(if kind == tar::EntryType::Directory {
        0o755
    } else {
        0o644
    });
    h.set_mtime(0);
    if link.is_some() {
        h.set_link_name("placeholder").unwrap();
    }
    h.set_cksum();
    b.append(&h, data).unwrap();
}

/// One entry of a layer: kind, name, link target, content.
type Entry<'a> = (tar::EntryType, String, Option<String>, &'a [u8]);

/// A layer tar of `entries`.
fn layer(entries: &[Entry<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (kind, name, link, data) in entries {
        entry(&mut b, *kind, name, link.as_deref(), data);
    }
    b.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// One layer of an image to put in an archive.
struct Layer {
    blob: Vec<u8>,
    media_type: &'static str,
    diff_id: String,
    /// The size the manifest claims (default: the blob's).
    declared_size: Option<i64>,
}

impl Layer {
    fn plain(tar: Vec<u8>) -> Layer {
        Layer {
            diff_id: digest(&tar),
            blob: tar,
            media_type: TAR_LAYER,
            declared_size: None,
        }
    }
}

/// How to lay out an OCI archive (normal, or with one of its blobs tampered with).
#[derive(Default)]
struct Tamper {
    /// Leave the manifest blob out of the archive.
    omit_manifest: bool,
    /// Store the layer blob as a symlink to this path instead of a file.
    layer_as_symlink: Option<String>,
    /// Store the layer blob as a hardlink to this path instead of a file.
    layer_as_hardlink: Option<String>,
    /// Give the layer's tar header this size (the data that follows is the real blob).
    layer_header_size: Option<u64>,
    /// Gzip the whole archive.
    gzip: bool,
    /// An extra entry of this many zeros, referenced by nothing.
    padding: usize,
}

/// Writes an OCI image-layout archive naming its image `name`.
fn archive(dir: &Path, file: &str, name: &str, layers: &[Layer], tamper: &Tamper) -> PathBuf {
    let host = Platform::host();
    let config = serde_json::to_vec(&json!({
        "architecture": host.architecture(),
        "os": "linux",
        "variant": host.variant(),
        "config": {"Entrypoint": ["/fixture"]},
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>()},
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(&config), "size": config.len()},
        "layers": layers.iter().map(|l| json!({
            "mediaType": l.media_type,
            "digest": digest(&l.blob),
            "size": l.declared_size.unwrap_or(l.blob.len() as i64),
        })).collect::<Vec<_>>(),
    }))
    .unwrap();
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest(&manifest),
            "size": manifest.len(),
            "annotations": {"io.containerd.image.name": name},
        }],
    }))
    .unwrap();
    let blob_path = |data: &[u8]| format!("blobs/sha256/{}", &digest(data)["sha256:".len()..]);
    let mut b = tar::Builder::new(Vec::new());
    let file_entry = |b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8], size: Option<u64>| {
        let mut h = tar::Header::new_gnu();
        h.set_path(path).unwrap();
        h.set_size(size.unwrap_or(data.len() as u64));
        h.set_mode(0o644);
        h.set_cksum();
        b.append(&h, data).unwrap();
    };
    file_entry(
        &mut b,
        "oci-layout",
        br#"{"imageLayoutVersion":"1.0.0"}"#,
        None,
    );
    file_entry(&mut b, "index.json", &index, None);
    if !tamper.omit_manifest {
        file_entry(&mut b, &blob_path(&manifest), &manifest, None);
    }
    file_entry(&mut b, &blob_path(&config), &config, None);
    for l in layers {
        let path = blob_path(&l.blob);
        let link = match (&tamper.layer_as_symlink, &tamper.layer_as_hardlink) {
            (Some(target), _) => Some((tar::EntryType::Symlink, target)),
            (None, Some(target)) => Some((tar::EntryType::Link, target)),
            (None, None) => None,
        };
        match link {
            Some((kind, target)) => {
                let mut h = tar::Header::new_gnu();
                h.set_path(&path).unwrap();
                h.set_entry_type(kind);
                h.set_link_name(target).unwrap();
                h.set_size(0);
                h.set_cksum();
                b.append(&h, &[][..]).unwrap();
            }
            None => file_entry(&mut b, &path, &l.blob, tamper.layer_header_size),
        }
    }
    if tamper.padding > 0 {
        file_entry(&mut b, "padding", &vec![0u8; tamper.padding], None);
    }
    let mut data = b.into_inner().unwrap();
    if tamper.layer_header_size.is_some() {
        // The claimed size runs past the end: cut the trailing zero blocks too.
        data.truncate(data.len() - 1024);
    }
    if tamper.gzip {
        data = gzip(&data);
    }
    let out = dir.join(file);
    std::fs::write(&out, data).unwrap();
    out
}

/// Every file under `dir`, recursively (not following symlinks).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(t) = e.file_type() else { continue };
            if t.is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

async fn layers_cannot_write_outside_their_snapshot() -> TestResult {
    use std::os::unix::fs::MetadataExt as _;
    let env = TestEnv::new("hostile-layers")?;
    let runtime = Runtime::new(env.config.clone())?;
    // A directory outside containerd's root, with one file the layers aim at.
    let outside = env.scratch().join("outside");
    std::fs::create_dir_all(&outside)?;
    let target = outside.join("target");
    std::fs::write(&target, "untouched")?;
    let outside_text = outside.display().to_string();
    let up = "../".repeat(40);
    let rel_outside = format!("{up}{}", outside_text.trim_start_matches('/'));
    let file = tar::EntryType::Regular;
    let symlink = tar::EntryType::Symlink;
    let hardlink = tar::EntryType::Link;

    let cases: Vec<(&str, Vec<Entry<'_>>)> = vec![
        (
            "dotdot",
            vec![(file, format!("{rel_outside}/dotdot"), None, b"x")],
        ),
        (
            "absolute",
            vec![(file, format!("{outside_text}/absolute"), None, b"x")],
        ),
        (
            "symlink-absolute",
            vec![
                (symlink, "escape".into(), Some(outside_text.clone()), b""),
                (file, "escape/through-symlink".into(), None, b"x"),
            ],
        ),
        (
            "symlink-relative",
            vec![
                (symlink, "rel".into(), Some(rel_outside.clone()), b""),
                (file, "rel/through-relative-symlink".into(), None, b"x"),
            ],
        ),
        (
            "symlink-then-overwrite",
            vec![
                (
                    symlink,
                    "t".into(),
                    Some(format!("{outside_text}/target")),
                    b"",
                ),
                (file, "t".into(), None, b"overwritten"),
            ],
        ),
        (
            "hardlink-absolute",
            vec![(
                hardlink,
                "hard".into(),
                Some(format!("{outside_text}/target")),
                b"",
            )],
        ),
        (
            "hardlink-relative",
            vec![(
                hardlink,
                "hard".into(),
                Some(format!("{rel_outside}/target")),
                b"",
            )],
        ),
        (
            "directory-dotdot",
            vec![
                (
                    tar::EntryType::Directory,
                    format!("{rel_outside}/made-dir"),
                    None,
                    b"",
                ),
                (file, format!("a/../../{rel_outside}/via-dir"), None, b"x"),
            ],
        ),
    ];
    let mut report = Vec::new();
    for (name, entries) in &cases {
        let archive_path = archive(
            env.scratch(),
            &format!("{name}.tar"),
            &format!("docker.io/library/hostile-{name}:1"),
            &[Layer::plain(layer(entries))],
            &Tamper::default(),
        );
        let outcome = runtime
            .images()
            .import(&archive_path, None, &no_progress)
            .await;
        // Whatever happened, nothing outside changed.
        let mut outside_now: Vec<String> = std::fs::read_dir(&outside)?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_, _>>()?;
        outside_now.sort();
        assert_eq!(outside_now, ["target"], "{name} wrote outside its snapshot");
        assert_eq!(std::fs::read_to_string(&target)?, "untouched", "{name}");
        assert_eq!(
            std::fs::metadata(&target)?.nlink(),
            1,
            "{name} linked the outside file"
        );
        match outcome {
            Ok(images) => {
                assert_eq!(images.len(), 1, "{name}");
                report.push(format!("{name}: imported, contained"));
            }
            Err(e) => {
                let text = e.to_string();
                assert!(
                    text.contains(&format!("hostile-{name}")) || text.contains("layer"),
                    "{name}: unclear error: {text}"
                );
                report.push(format!("{name}: refused: {text}"));
            }
        }
    }
    // What was written landed inside containerd's snapshot directories.
    let root = env.containerd.dir();
    for f in files_under(root) {
        let n = f
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        if [
            "dotdot",
            "absolute",
            "through-symlink",
            "through-relative-symlink",
            "via-dir",
            "hard",
        ]
        .contains(&n.as_str())
        {
            assert!(
                f.components().any(|c| c.as_os_str() == "snapshots"),
                "{} is outside the snapshots",
                f.display()
            );
            assert!(!f.starts_with(&outside), "{}", f.display());
        }
    }
    eprintln!("hostile layers:\n  {}", report.join("\n  "));
    Ok(())
}

async fn archive_tricks_are_refused_clearly_and_change_nothing() -> TestResult {
    let env = TestEnv::new("hostile-archives")?;
    let mut config = env.config.clone();
    config.max_unpacked = 16 << 20;
    let runtime = Runtime::new(config)?;
    let ok_layer = || {
        Layer::plain(layer(&[(
            tar::EntryType::Regular,
            "hello".into(),
            None,
            b"hi",
        )]))
    };
    let passwd = env.scratch().join("passwd-copy");
    std::fs::write(&passwd, "root:x:0:0::/root:/bin/sh\n")?;
    // The last case: a gzipped archive of a small image plus 64 MiB of zeros (a ~64 KiB
    // file), beyond the 16 MiB bound.
    let cases: Vec<(&str, Vec<Layer>, Tamper, &str)> = vec![
        (
            "missing-manifest",
            vec![ok_layer()],
            Tamper {
                omit_manifest: true,
                ..Tamper::default()
            },
            "not in the archive",
        ),
        (
            "layer-symlink",
            vec![ok_layer()],
            Tamper {
                layer_as_symlink: Some(passwd.display().to_string()),
                ..Tamper::default()
            },
            "not in the archive",
        ),
        (
            "layer-hardlink",
            vec![ok_layer()],
            Tamper {
                layer_as_hardlink: Some("../../../../etc/passwd".into()),
                ..Tamper::default()
            },
            "not in the archive",
        ),
        (
            "declared-size-absurd",
            vec![Layer {
                declared_size: Some(1 << 50),
                ..ok_layer()
            }],
            Tamper::default(),
            "but its manifest says 1125899906842624",
        ),
        (
            "declared-size-negative",
            vec![Layer {
                declared_size: Some(-1),
                ..ok_layer()
            }],
            Tamper::default(),
            "negative size",
        ),
        (
            "tar-header-size-absurd",
            vec![ok_layer()],
            Tamper {
                layer_header_size: Some(1 << 40),
                ..Tamper::default()
            },
            "archive",
        ),
        (
            "gzip-bomb-archive",
            vec![ok_layer()],
            Tamper {
                gzip: true,
                padding: 64 << 20,
                ..Tamper::default()
            },
            "unpacks to more than",
        ),
    ];
    for (name, layers, tamper, needle) in cases {
        let path = archive(
            env.scratch(),
            &format!("{name}.tar"),
            &format!("docker.io/library/{name}:1"),
            &layers,
            &tamper,
        );
        let started = Instant::now();
        let e = match runtime.images().import(&path, None, &no_progress).await {
            Ok(_) => panic!("{name}: imported"),
            Err(e) => e.to_string(),
        };
        assert!(e.contains(needle), "{name}: {e}");
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{name} took {:?}",
            started.elapsed()
        );
        eprintln!("{name}: {e}");
        assert!(
            runtime.images().list().await?.is_empty(),
            "{name} left an image"
        );
    }
    Ok(())
}

/// `mib` MiB of zeros in a small layer blob (about 4.7 KiB per MiB): gzip members of 1 MiB of zeros, repeated
/// (containerd, like every gzip reader, decodes all members).
fn bomb_layer(mib: u64) -> Layer {
    let size = mib << 20;
    let mut header = tar::Header::new_gnu();
    header.set_path("zeros").unwrap();
    header.set_size(size);
    header.set_mode(0o644);
    header.set_cksum();
    let mut blob = gzip(header.as_bytes());
    let member = gzip(&vec![0u8; 1 << 20]);
    for _ in 0..(size >> 20) {
        blob.extend_from_slice(&member);
    }
    blob.extend(gzip(&[0u8; 1024]));
    Layer {
        blob,
        media_type: GZIP_LAYER,
        // Not the real one (that would take hashing a GiB): the bound must refuse the layer
        // before containerd ever compares it.
        diff_id: digest(b"a bomb"),
        declared_size: None,
    }
}

async fn decompression_bombs_are_refused_before_unpacking() -> TestResult {
    let env = TestEnv::new("hostile-bomb")?;
    let mut config = env.config.clone();
    config.max_unpacked = 64 << 20;
    let runtime = Runtime::new(config)?;
    // Small enough to be kept in memory by the importer (512 MiB in 2.4 MB), and large
    // enough to be streamed (1 GiB in 4.9 MB, then a stored member): both paths are bounded.
    let layer = bomb_layer(512);
    let mut streamed = bomb_layer(1024);
    let mut stored = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::none());
    stored.write_all(&vec![0u8; 1 << 20])?;
    streamed.blob.extend(stored.finish()?);
    eprintln!(
        "bomb layers: {} bytes for 512 MiB, {} bytes for 1 GiB",
        layer.blob.len(),
        streamed.blob.len()
    );
    for (name, layer) in [("kept", layer), ("streamed", streamed)] {
        let path = archive(
            env.scratch(),
            &format!("bomb-{name}.tar"),
            &format!("docker.io/library/bomb-{name}:1"),
            &[layer],
            &Tamper::default(),
        );
        let started = Instant::now();
        let e = match runtime.images().import(&path, None, &no_progress).await {
            Ok(_) => panic!("a decompression bomb ({name}) was imported"),
            Err(e) => e.to_string(),
        };
        let took = started.elapsed();
        eprintln!("bomb ({name}) refused in {took:?}: {e}");
        assert!(
            e.contains("unpacks to more than 67108864 bytes"),
            "{name}: {e}"
        );
        // Refused while reading the archive, not after containerd unpacked it.
        assert!(e.starts_with("image archive "), "{name}: {e}");
        assert!(took < Duration::from_secs(20), "{name} took {took:?}");
        assert!(
            runtime.images().list().await?.is_empty(),
            "{name} left an image"
        );
    }
    // Nothing large was written anywhere in containerd's root.
    let written: u64 = files_under(env.containerd.dir())
        .iter()
        .filter_map(|f| std::fs::symlink_metadata(f).ok())
        .map(|m| m.len())
        .sum();
    assert!(
        written < 64 << 20,
        "containerd's root holds {written} bytes"
    );
    Ok(())
}
