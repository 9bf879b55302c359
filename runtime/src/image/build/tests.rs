use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::fs::symlink;
use std::process::Command;

use bramble_testkit::harness::cannot_run_here;
use flate2::read::GzDecoder;
use oci_spec::image::{Arch, ImageConfiguration, ImageIndex, ImageManifest, MediaType, Os};
use serde_json::{Value, json};
use tar::EntryType;

use super::*;

const EM_X86_64: u16 = 62;
const EM_ARM: u16 = 40;
const EM_AARCH64: u16 = 183;

/// One entry of a tar archive, read back.
#[derive(Debug)]
struct Entry {
    path: String,
    kind: EntryType,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
    user_name: Vec<u8>,
    link: Option<Vec<u8>>,
    data: Vec<u8>,
}

fn read_tar(reader: impl Read) -> Vec<Entry> {
    let mut archive = tar::Archive::new(reader);
    let mut out = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let header = entry.header().clone();
        let mut data = Vec::new();
        let path = String::from_utf8(entry.path_bytes().into_owned()).unwrap();
        let link = entry.link_name_bytes().map(|l| l.into_owned());
        entry.read_to_end(&mut data).unwrap();
        out.push(Entry {
            path,
            kind: header.entry_type(),
            mode: header.mode().unwrap(),
            uid: header.uid().unwrap(),
            gid: header.gid().unwrap(),
            mtime: header.mtime().unwrap(),
            user_name: header.username_bytes().unwrap_or_default().to_vec(),
            link,
            data,
        });
    }
    out
}

fn find<'a>(entries: &'a [Entry], path: &str) -> &'a Entry {
    entries
        .iter()
        .find(|e| e.path == path)
        .unwrap_or_else(|| panic!("{path} missing from {:?}", paths(entries)))
}

fn paths(entries: &[Entry]) -> Vec<&str> {
    entries.iter().map(|e| e.path.as_str()).collect()
}

fn sha(bytes: &[u8]) -> String {
    sha256_digest(bytes)
}

fn write(path: &Path, contents: &[u8], mode: u32) {
    fs::write(path, contents).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn mkdir(path: &Path, mode: u32) {
    fs::create_dir_all(path).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// A little-endian ELF executable with one PT_LOAD and, if asked, a PT_INTERP.
fn fake_elf(machine: u16, interp: Option<&str>) -> Vec<u8> {
    let bits64 = machine != EM_ARM;
    let (ehsize, phentsize) = if bits64 { (64, 56) } else { (52, 32) };
    let phnum = 1 + usize::from(interp.is_some());
    let interp_off = ehsize + phnum * phentsize;
    let mut out = vec![0u8; interp_off];
    let put = |out: &mut Vec<u8>, at: usize, value: u64, width: usize| {
        out[at..at + width].copy_from_slice(&value.to_le_bytes()[..width]);
    };
    out[..4].copy_from_slice(b"\x7fELF");
    out[4] = if bits64 { 2 } else { 1 };
    out[5] = 1;
    out[6] = 1;
    put(&mut out, 16, 2, 2); // ET_EXEC
    put(&mut out, 18, u64::from(machine), 2);
    let word = if bits64 { 8 } else { 4 };
    let (phoff_at, phentsize_at, phnum_at) = if bits64 { (32, 54, 56) } else { (28, 42, 44) };
    put(&mut out, phoff_at, ehsize as u64, word);
    put(&mut out, phentsize_at, phentsize as u64, 2);
    put(&mut out, phnum_at, phnum as u64, 2);
    put(&mut out, ehsize, 1, 4); // PT_LOAD
    if let Some(interp) = interp {
        let at = ehsize + phentsize;
        let (off_at, filesz_at) = if bits64 { (8, 32) } else { (4, 16) };
        put(&mut out, at, 3, 4); // PT_INTERP
        put(&mut out, at + off_at, interp_off as u64, word);
        put(&mut out, at + filesz_at, interp.len() as u64 + 1, word);
        out.extend_from_slice(interp.as_bytes());
        out.push(0);
    }
    out.extend_from_slice(b"...the rest of the program...");
    out
}

/// A source tree with a bit of everything.
fn sample_tree(root: &Path) {
    mkdir(root, 0o755);
    write(&root.join("hello.txt"), b"hello\n", 0o644);
    write(&root.join("run.sh"), b"#!/bin/sh\necho hi\n", 0o755);
    mkdir(&root.join("nested/a/b"), 0o755);
    write(&root.join("nested/a/b/deep.txt"), b"deep", 0o600);
    mkdir(&root.join("empty"), 0o700);
    symlink("hello.txt", root.join("link")).unwrap();
    symlink("/etc/passwd", root.join("abs")).unwrap();
    symlink("does/not/../exist//", root.join("dangling")).unwrap();
    symlink("x/".repeat(80), root.join("longlink")).unwrap();
    fs::hard_link(root.join("hello.txt"), root.join("hard")).unwrap();
    let long_dir = root.join("d".repeat(120));
    mkdir(&long_dir, 0o755);
    write(&long_dir.join("f"), b"long path", 0o644);
}

fn sample_builder(src: &Path, extra: &Path) -> ImageBuilder {
    ImageBuilder::new(ImageRef::parse("hello").unwrap())
        .platform(Platform::parse("linux/arm64").unwrap())
        .add_dir(src, "/app")
        .add_file(extra, "/etc/app/config.json", Some(0o600))
        .add_file(extra, "/etc/app/", None)
        .entrypoint(vec!["/app/run.sh".to_owned()])
        .cmd(vec!["--flag".to_owned()])
        .env("FOO", "bar")
        .env("LANG", "C.UTF-8")
        .env("FOO", "baz")
        .workdir("/app")
        .user("1000:1000")
        .expose(9090)
        .expose(8080)
        .label("org.opencontainers.image.title", "hello")
}

struct Fixture {
    _dir: tempfile::TempDir,
    src: PathBuf,
    extra: PathBuf,
    out_dir: PathBuf,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    sample_tree(&src);
    let extra = dir.path().join("extra.json");
    write(&extra, br#"{"debug":true}"#, 0o640);
    let out_dir = dir.path().join("out");
    fs::create_dir(&out_dir).unwrap();
    Fixture {
        _dir: dir,
        src,
        extra,
        out_dir,
    }
}

#[test]
fn builds_a_valid_oci_archive_from_a_directory() {
    let f = fixture();
    let out = f.out_dir.join("hello.tar");
    let built = sample_builder(&f.src, &f.extra)
        .write_oci_archive(&out)
        .unwrap();

    assert_eq!(built.name.to_string(), "docker.io/library/hello:latest");
    assert_eq!(built.platform.to_string(), "linux/arm64");
    let meta = fs::metadata(&out).unwrap();
    assert_eq!(built.archive_size, meta.len());
    assert_eq!(meta.permissions().mode() & 0o777, 0o644);
    // No temporary files are left behind.
    let left: Vec<_> = fs::read_dir(&f.out_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from("hello.tar")]);

    let entries = read_tar(File::open(&out).unwrap());
    let blob = |digest: &str| blob_path(digest);
    // Metadata first, then the blobs, layer last.
    assert_eq!(
        paths(&entries),
        vec![
            "oci-layout",
            "index.json",
            "blobs/",
            "blobs/sha256/",
            blob(&built.manifest_digest).as_str(),
            blob(&built.config_digest).as_str(),
            blob(&built.layer_digest).as_str(),
        ]
    );
    for e in &entries {
        assert_eq!((e.uid, e.gid, e.mtime), (0, 0, 0), "{}", e.path);
        assert!(e.user_name.is_empty(), "{}", e.path);
        if let Some(hex) = e
            .path
            .strip_prefix("blobs/sha256/")
            .filter(|h| !h.is_empty())
        {
            assert_eq!(
                sha(&e.data),
                format!("sha256:{hex}"),
                "blob content matches its name"
            );
        }
    }
    assert_eq!(
        find(&entries, "oci-layout").data,
        br#"{"imageLayoutVersion":"1.0.0"}"#
    );

    // index.json
    let index_bytes = &find(&entries, "index.json").data;
    let index: ImageIndex = serde_json::from_slice(index_bytes).unwrap();
    assert_eq!(index.schema_version(), 2);
    assert_eq!(index.media_type(), &Some(MediaType::ImageIndex));
    let [descriptor] = index.manifests().as_slice() else {
        panic!("one manifest expected")
    };
    let manifest_bytes = &find(&entries, &blob(&built.manifest_digest)).data;
    assert_eq!(descriptor.digest().to_string(), built.manifest_digest);
    assert_eq!(descriptor.size(), manifest_bytes.len() as u64);
    assert_eq!(descriptor.media_type(), &MediaType::ImageManifest);
    let raw_index: Value = serde_json::from_slice(index_bytes).unwrap();
    assert_eq!(
        raw_index["manifests"][0]["platform"],
        json!({"os": "linux", "architecture": "arm64"})
    );
    assert_eq!(
        raw_index["manifests"][0]["annotations"],
        json!({
            "io.containerd.image.name": "docker.io/library/hello:latest",
            "org.opencontainers.image.ref.name": "latest",
        })
    );

    // The manifest.
    let manifest: ImageManifest = serde_json::from_slice(manifest_bytes).unwrap();
    assert_eq!(manifest.schema_version(), 2);
    assert_eq!(manifest.media_type(), &Some(MediaType::ImageManifest));
    let config_bytes = &find(&entries, &blob(&built.config_digest)).data;
    assert_eq!(manifest.config().digest().to_string(), built.config_digest);
    assert_eq!(manifest.config().size(), config_bytes.len() as u64);
    assert_eq!(manifest.config().media_type(), &MediaType::ImageConfig);
    let [layer] = manifest.layers().as_slice() else {
        panic!("one layer expected")
    };
    let layer_bytes = &find(&entries, &blob(&built.layer_digest)).data;
    assert_eq!(layer.digest().to_string(), built.layer_digest);
    assert_eq!(layer.size(), layer_bytes.len() as u64);
    assert_eq!(layer.media_type(), &MediaType::ImageLayerGzip);

    // The gzip stream has no timestamp and no file name.
    assert_eq!(&layer_bytes[..4], &[0x1f, 0x8b, 8, 0]);
    assert_eq!(&layer_bytes[4..8], &[0, 0, 0, 0]);
    let mut layer_tar = Vec::new();
    GzDecoder::new(layer_bytes.as_slice())
        .read_to_end(&mut layer_tar)
        .unwrap();
    assert_eq!(sha(&layer_tar), built.diff_id);

    // The config.
    let config: ImageConfiguration = serde_json::from_slice(config_bytes).unwrap();
    assert_eq!(config.architecture(), &Arch::ARM64);
    assert_eq!(config.os(), &Os::Linux);
    assert_eq!(config.rootfs().diff_ids(), &[built.diff_id.as_str()]);
    let run = config.config().as_ref().unwrap();
    assert_eq!(run.entrypoint(), &Some(vec!["/app/run.sh".to_owned()]));
    assert_eq!(run.cmd(), &Some(vec!["--flag".to_owned()]));
    assert_eq!(run.working_dir().as_deref(), Some("/app"));
    assert_eq!(run.user().as_deref(), Some("1000:1000"));
    let raw_config: Value = serde_json::from_slice(config_bytes).unwrap();
    assert_eq!(
        raw_config["config"]["Env"],
        json!([format!("PATH={DEFAULT_PATH}"), "FOO=baz", "LANG=C.UTF-8"])
    );
    assert_eq!(
        raw_config["config"]["ExposedPorts"],
        json!({"8080/tcp": {}, "9090/tcp": {}})
    );
    assert_eq!(
        raw_config["config"]["Labels"],
        json!({"org.opencontainers.image.title": "hello"})
    );
    assert_eq!(raw_config["created"], "1970-01-01T00:00:00Z");
    assert_eq!(raw_config["rootfs"]["type"], "layers");
    assert_eq!(raw_config["history"].as_array().unwrap().len(), 1);
    assert!(raw_config.get("variant").is_none());

    // The layer.
    let layer = read_tar(layer_tar.as_slice());
    let layer_paths = paths(&layer);
    let mut sorted = layer_paths.clone();
    sorted.sort_unstable();
    assert_eq!(layer_paths, sorted, "layer entries are sorted");
    let long_dir = "d".repeat(120);
    let mut expected = vec![
        "app/".to_owned(),
        "app/abs".to_owned(),
        "app/dangling".to_owned(),
        format!("app/{long_dir}/"),
        format!("app/{long_dir}/f"),
        "app/empty/".to_owned(),
        "app/hard".to_owned(),
        "app/hello.txt".to_owned(),
        "app/link".to_owned(),
        "app/longlink".to_owned(),
        "app/nested/".to_owned(),
        "app/nested/a/".to_owned(),
        "app/nested/a/b/".to_owned(),
        "app/nested/a/b/deep.txt".to_owned(),
        "app/run.sh".to_owned(),
        "etc/".to_owned(),
        "etc/app/".to_owned(),
        "etc/app/config.json".to_owned(),
        "etc/app/extra.json".to_owned(),
        "tmp/".to_owned(),
    ];
    expected.sort_unstable();
    assert_eq!(layer_paths, expected);
    for e in &layer {
        assert_eq!((e.uid, e.gid, e.mtime), (0, 0, 0), "{}", e.path);
        assert!(e.user_name.is_empty(), "{}", e.path);
    }
    let check = |path: &str, kind: EntryType, mode: u32| {
        let e = find(&layer, path);
        assert_eq!(e.kind, kind, "{path}");
        assert_eq!(e.mode, mode, "{path}: {:o}", e.mode);
        e
    };
    check("tmp/", EntryType::Directory, 0o1777);
    check("etc/", EntryType::Directory, 0o755);
    check("app/", EntryType::Directory, 0o755);
    check("app/empty/", EntryType::Directory, 0o700);
    assert_eq!(
        check("app/hello.txt", EntryType::Regular, 0o644).data,
        b"hello\n"
    );
    assert_eq!(
        check("app/hard", EntryType::Regular, 0o644).data,
        b"hello\n"
    );
    assert_eq!(
        check("app/run.sh", EntryType::Regular, 0o755).data,
        b"#!/bin/sh\necho hi\n"
    );
    assert_eq!(
        check("app/nested/a/b/deep.txt", EntryType::Regular, 0o600).data,
        b"deep"
    );
    assert_eq!(
        check(&format!("app/{long_dir}/f"), EntryType::Regular, 0o644).data,
        b"long path"
    );
    assert_eq!(
        check("etc/app/config.json", EntryType::Regular, 0o600).data,
        br#"{"debug":true}"#
    );
    check("etc/app/extra.json", EntryType::Regular, 0o640);
    let link = |path: &str| check(path, EntryType::Symlink, 0o777).link.clone().unwrap();
    assert_eq!(link("app/link"), b"hello.txt");
    assert_eq!(link("app/abs"), b"/etc/passwd");
    assert_eq!(
        link("app/dangling"),
        b"does/not/../exist//",
        "targets are stored as-is"
    );
    assert_eq!(link("app/longlink"), "x/".repeat(80).as_bytes());
}

#[test]
fn archives_are_reproducible() {
    let f = fixture();
    let builder = sample_builder(&f.src, &f.extra);
    let a = f.out_dir.join("a.tar");
    let b = f.out_dir.join("b.tar");
    let built_a = builder.write_oci_archive(&a).unwrap();
    // Touching the sources changes nothing.
    let hello = File::options()
        .write(true)
        .open(f.src.join("hello.txt"))
        .unwrap();
    hello
        .set_modified(std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_234_567))
        .unwrap();
    let built_b = builder.write_oci_archive(&b).unwrap();
    assert_eq!(fs::read(&a).unwrap(), fs::read(&b).unwrap());
    assert_eq!(built_a, built_b);

    // Overwriting an existing archive works and gives the same bytes again.
    builder.write_oci_archive(&b).unwrap();
    assert_eq!(fs::read(&a).unwrap(), fs::read(&b).unwrap());

    // A different timestamp changes the archive, and is used everywhere.
    let c = f.out_dir.join("c.tar");
    let built_c = builder
        .clone()
        .source_date_epoch(1_700_000_000)
        .write_oci_archive(&c)
        .unwrap();
    assert_ne!(built_c.manifest_digest, built_a.manifest_digest);
    assert_ne!(built_c.diff_id, built_a.diff_id);
    let entries = read_tar(File::open(&c).unwrap());
    assert!(entries.iter().all(|e| e.mtime == 1_700_000_000));
    let config: Value =
        serde_json::from_slice(&find(&entries, &blob_path(&built_c.config_digest)).data).unwrap();
    assert_eq!(config["created"], "2023-11-14T22:13:20Z");
    assert_eq!(config["history"][0]["created"], "2023-11-14T22:13:20Z");
    let layer_bytes = &find(&entries, &blob_path(&built_c.layer_digest)).data;
    let layer = read_tar(GzDecoder::new(layer_bytes.as_slice()));
    assert!(layer.iter().all(|e| e.mtime == 1_700_000_000));

    let err = builder
        .source_date_epoch(MAX_EPOCH + 1)
        .write_oci_archive(&c)
        .unwrap_err();
    assert!(matches!(err, BuildError::SourceDateEpoch { .. }), "{err}");
}

#[test]
fn source_date_epoch_parsing() {
    assert_eq!(parse_source_date_epoch(None).unwrap(), 0);
    assert_eq!(parse_source_date_epoch(Some("")).unwrap(), 0);
    assert_eq!(
        parse_source_date_epoch(Some("1700000000")).unwrap(),
        1_700_000_000
    );
    assert_eq!(parse_source_date_epoch(Some(" 42\n")).unwrap(), 42);
    for bad in ["-1", "1.5", "yesterday", "99999999999999"] {
        let err = parse_source_date_epoch(Some(bad)).unwrap_err();
        assert!(
            err.to_string()
                .starts_with(&format!("invalid SOURCE_DATE_EPOCH {bad:?}")),
            "{err}"
        );
    }
}

#[test]
fn rfc3339_dates() {
    for (seconds, want) in [
        (0, "1970-01-01T00:00:00Z"),
        (951_782_400, "2000-02-29T00:00:00Z"),
        (1_700_000_000, "2023-11-14T22:13:20Z"),
        (1_709_251_199, "2024-02-29T23:59:59Z"),
        (4_107_542_400, "2100-03-01T00:00:00Z"),
        (MAX_EPOCH, "9999-12-31T23:59:59Z"),
    ] {
        assert_eq!(rfc3339(seconds), want);
    }
}

#[test]
fn static_binary_sets_platform_and_entrypoint() {
    let dir = tempfile::tempdir().unwrap();
    for (machine, platform) in [
        (EM_AARCH64, "linux/arm64"),
        (EM_ARM, "linux/arm/v7"),
        (EM_X86_64, "linux/amd64"),
    ] {
        let bin = dir.path().join("hello");
        write(&bin, &fake_elf(machine, None), 0o700);
        let out = dir.path().join("hello.tar");
        let built = ImageBuilder::new(ImageRef::parse("ghcr.io/me/hello:1").unwrap())
            .binary(&bin)
            .expose(8080)
            .write_oci_archive(&out)
            .unwrap();
        assert_eq!(built.platform.to_string(), platform);
        assert_eq!(built.name.to_string(), "ghcr.io/me/hello:1");

        let entries = read_tar(File::open(&out).unwrap());
        let index: Value = serde_json::from_slice(&find(&entries, "index.json").data).unwrap();
        let want_platform = serde_json::to_value(Platform::parse(platform).unwrap()).unwrap();
        assert_eq!(index["manifests"][0]["platform"], want_platform);
        assert_eq!(
            index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
            "1"
        );
        let config: Value =
            serde_json::from_slice(&find(&entries, &blob_path(&built.config_digest)).data).unwrap();
        assert_eq!(
            config["config"]["Entrypoint"],
            json!(["/usr/local/bin/hello"])
        );
        assert!(config["config"].get("Cmd").is_none());
        let layer_bytes = &find(&entries, &blob_path(&built.layer_digest)).data;
        let layer = read_tar(GzDecoder::new(layer_bytes.as_slice()));
        assert_eq!(
            paths(&layer),
            vec![
                "tmp/",
                "usr/",
                "usr/local/",
                "usr/local/bin/",
                "usr/local/bin/hello"
            ]
        );
        let binary = find(&layer, "usr/local/bin/hello");
        assert_eq!(binary.mode, 0o755);
        assert_eq!(binary.data, fake_elf(machine, None));
        assert_eq!(find(&layer, "usr/local/").mode, 0o755);
    }

    // An explicit entrypoint wins; an arm binary fits any arm variant.
    let bin = dir.path().join("tool");
    write(&bin, &fake_elf(EM_ARM, None), 0o755);
    let built = ImageBuilder::new(ImageRef::parse("tool").unwrap())
        .platform(Platform::parse("linux/arm/v6").unwrap())
        .binary(&bin)
        .entrypoint(vec!["/bin/sh".to_owned(), "-c".to_owned()])
        .write_oci_archive(&dir.path().join("tool.tar"))
        .unwrap();
    assert_eq!(built.platform.to_string(), "linux/arm/v6");
}

#[test]
fn refuses_a_binary_for_another_platform() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("hello");
    write(&bin, &fake_elf(EM_X86_64, None), 0o755);
    let out = dir.path().join("out.tar");
    let err = ImageBuilder::new(ImageRef::parse("hello").unwrap())
        .platform(Platform::parse("linux/arm64").unwrap())
        .binary(&bin)
        .write_oci_archive(&out)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "binary {} is linux/amd64 but the image platform is linux/arm64",
            bin.display()
        )
    );
    assert!(!out.exists());

    // Two binaries must agree too.
    let arm = dir.path().join("arm");
    write(&arm, &fake_elf(EM_ARM, None), 0o755);
    let err = ImageBuilder::new(ImageRef::parse("hello").unwrap())
        .binary(&arm)
        .binary(&bin)
        .write_oci_archive(&out)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "binary {} is linux/amd64 but the image platform is linux/arm/v7",
            bin.display()
        )
    );
}

#[test]
fn refuses_dynamic_and_non_elf_binaries() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.tar");
    let bin = dir.path().join("dyn");
    write(
        &bin,
        &fake_elf(EM_AARCH64, Some("/lib/ld-linux-aarch64.so.1")),
        0o755,
    );
    let err = ImageBuilder::new(ImageRef::parse("x").unwrap())
        .binary(&bin)
        .write_oci_archive(&out)
        .unwrap_err();
    let message = err.to_string();
    assert!(
        matches!(&err, BuildError::DynamicBinary { interpreter, .. } if interpreter == "/lib/ld-linux-aarch64.so.1")
    );
    for words in [
        &format!("binary {} is dynamically linked", bin.display()),
        "/lib/ld-linux-aarch64.so.1",
        "+crt-static",
        "musl",
        "add_dir",
    ] {
        assert!(message.contains(words), "{message}");
    }

    // A real dynamic executable.
    if Path::new("/bin/ls").exists() {
        let err = ImageBuilder::new(ImageRef::parse("x").unwrap())
            .binary("/bin/ls")
            .write_oci_archive(&out)
            .unwrap_err();
        assert!(matches!(err, BuildError::DynamicBinary { .. }), "{err}");
    } else {
        println!("note: /bin/ls absent, skipped the real dynamic binary check");
    }

    let script = dir.path().join("script.sh");
    write(&script, b"#!/bin/sh\necho hi\n", 0o755);
    let err = ImageBuilder::new(ImageRef::parse("x").unwrap())
        .binary(&script)
        .write_oci_archive(&out)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("binary {} is not a usable executable", script.display())
    );
    assert_eq!(
        std::error::Error::source(&err).unwrap().to_string(),
        "not an ELF executable"
    );

    let truncated = dir.path().join("truncated");
    write(&truncated, &fake_elf(EM_AARCH64, None)[..40], 0o755);
    let err = ImageBuilder::new(ImageRef::parse("x").unwrap())
        .binary(&truncated)
        .write_oci_archive(&out)
        .unwrap_err();
    assert!(matches!(
        err,
        BuildError::BinaryNotExecutable {
            source: PlatformError::TruncatedElf { .. },
            ..
        }
    ));

    let err = ImageBuilder::new(ImageRef::parse("x").unwrap())
        .binary(dir.path())
        .write_oci_archive(&out)
        .unwrap_err();
    assert!(matches!(err, BuildError::NotAFile { .. }), "{err}");
    assert!(!out.exists());
}

#[test]
fn real_static_binary() -> Result<(), String> {
    // Debian's ldconfig is static-pie.
    let ldconfig = Path::new("/sbin/ldconfig");
    let is_static = fs::read(ldconfig)
        .ok()
        .and_then(|b| Platform::from_elf(&b).ok())
        .is_some_and(|info| info.is_static());
    if !is_static {
        return cannot_run_here(
            "real_static_binary",
            "/sbin/ldconfig is missing or not a static executable (Debian's is)",
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let built = ImageBuilder::new(ImageRef::parse("ldconfig").unwrap())
        .binary(ldconfig)
        .write_oci_archive(&dir.path().join("ldconfig.tar"))
        .unwrap();
    assert_eq!(built.platform, Platform::host());
    Ok(())
}

#[test]
fn refuses_bad_destinations() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f");
    write(&file, b"x", 0o644);
    let out = dir.path().join("out.tar");
    let cases = [
        ("relative/path", "it must be an absolute path"),
        ("/a/../etc/passwd", "'..' is not allowed"),
        ("/..", "'..' is not allowed"),
        ("/etc/.wh.passwd", "reserved for layer whiteouts"),
        ("/.", "a file cannot replace the root directory"),
        ("//.", "a file cannot replace the root directory"),
        ("/a\0b", "NUL"),
    ];
    for (dest, reason) in cases {
        let err = ImageBuilder::new(ImageRef::parse("x").unwrap())
            .add_file(&file, dest, None)
            .write_oci_archive(&out)
            .unwrap_err();
        let message = err.to_string();
        assert!(
            message.starts_with(&format!("invalid destination {dest:?} in the image: ")),
            "{message}"
        );
        assert!(message.contains(reason), "{message}");
    }
    let err = ImageBuilder::new(ImageRef::parse("x").unwrap())
        .add_dir(dir.path(), "../up")
        .write_oci_archive(&out)
        .unwrap_err();
    assert!(
        matches!(err, BuildError::InvalidDestination { .. }),
        "{err}"
    );
    // "." and repeated slashes are fine; a trailing '/' means "into this directory".
    let built = ImageBuilder::new(ImageRef::parse("x").unwrap())
        .add_file(&file, "//opt/./x//f", None)
        .add_file(&file, "/", None)
        .write_oci_archive(&out)
        .unwrap();
    let entries = read_tar(File::open(&out).unwrap());
    let layer = read_tar(GzDecoder::new(
        find(&entries, &blob_path(&built.layer_digest))
            .data
            .as_slice(),
    ));
    assert_eq!(
        paths(&layer),
        vec!["f", "opt/", "opt/x/", "opt/x/f", "tmp/"]
    );
}

#[test]
fn refuses_special_files_and_whiteouts() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    mkdir(&src.join("sub"), 0o755);
    let socket = src.join("sub/control.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let out = dir.path().join("out.tar");
    let err = ImageBuilder::new(ImageRef::parse("x").unwrap())
        .add_dir(&src, "/")
        .write_oci_archive(&out)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "cannot add {} to the image: it is a socket, and only regular files, directories and symlinks are supported",
            socket.display()
        )
    );
    if Path::new("/dev/null").exists() {
        let err = ImageBuilder::new(ImageRef::parse("x").unwrap())
            .add_file("/dev/null", "/null", None)
            .write_oci_archive(&out)
            .unwrap_err();
        assert!(matches!(err, BuildError::NotAFile { .. }), "{err}");
    }

    let src2 = dir.path().join("src2");
    mkdir(&src2, 0o755);
    write(&src2.join(".wh.secret"), b"", 0o644);
    let err = ImageBuilder::new(ImageRef::parse("x").unwrap())
        .add_dir(&src2, "/")
        .write_oci_archive(&out)
        .unwrap_err();
    assert!(matches!(err, BuildError::Whiteout { .. }), "{err}");
    assert!(!out.exists());
}

#[test]
fn path_conflicts_and_overrides() {
    let dir = tempfile::tempdir().unwrap();
    let one = dir.path().join("one");
    let two = dir.path().join("two");
    write(&one, b"1", 0o644);
    write(&two, b"2", 0o644);
    let out = dir.path().join("out.tar");
    let name = ImageRef::parse("x").unwrap();

    let err = ImageBuilder::new(name.clone())
        .add_file(&one, "/a/b", None)
        .add_file(&two, "/a/b/c", None)
        .write_oci_archive(&out)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot add /a/b/c to the image: /a/b is already there and is not a directory"
    );
    let err = ImageBuilder::new(name.clone())
        .add_file(&one, "/a/b/c", None)
        .add_file(&two, "/a", None)
        .write_oci_archive(&out)
        .unwrap_err();
    assert!(
        matches!(err, BuildError::ReplacesDirectory { ref path } if path == "/a"),
        "{err}"
    );

    // A later file at the same path wins; a user-provided /tmp is kept.
    let src = dir.path().join("src");
    mkdir(&src.join("tmp"), 0o700);
    let built = ImageBuilder::new(name)
        .add_file(&one, "/a", None)
        .add_file(&two, "/a", Some(0o4755))
        .add_dir(&src, "/")
        .write_oci_archive(&out)
        .unwrap();
    let entries = read_tar(File::open(&out).unwrap());
    let layer = read_tar(GzDecoder::new(
        find(&entries, &blob_path(&built.layer_digest))
            .data
            .as_slice(),
    ));
    assert_eq!(paths(&layer), vec!["a", "tmp/"]);
    assert_eq!(find(&layer, "a").data, b"2");
    assert_eq!(find(&layer, "a").mode, 0o4755);
    assert_eq!(find(&layer, "tmp/").mode, 0o700);
}

#[test]
fn io_errors_name_the_path_and_operation() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    let out = dir.path().join("out.tar");
    let err = ImageBuilder::new(ImageRef::parse("x").unwrap())
        .add_dir(&missing, "/")
        .write_oci_archive(&out)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("failed to inspect {}", missing.display())
    );
    assert!(std::error::Error::source(&err).is_some());

    let err = ImageBuilder::new(ImageRef::parse("x").unwrap())
        .binary(&missing)
        .write_oci_archive(&out)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("failed to open {}", missing.display())
    );

    let no_dir = dir.path().join("no/such/dir/out.tar");
    let err = ImageBuilder::new(ImageRef::parse("x").unwrap())
        .write_oci_archive(&no_dir)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "failed to create a temporary file in {}",
            dir.path().join("no/such/dir").display()
        )
    );

    // The output path is a directory: the rename fails, nothing is left over.
    let out_dir = dir.path().join("taken");
    mkdir(&out_dir.join("content"), 0o755);
    let err = ImageBuilder::new(ImageRef::parse("x").unwrap())
        .write_oci_archive(&out_dir)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "failed to move the finished archive to {}",
            out_dir.display()
        )
    );
    let left: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with(".bramble"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn config_validation() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.tar");
    let base = || ImageBuilder::new(ImageRef::parse("x").unwrap());
    let cases: [(ImageBuilder, &str); 5] = [
        (
            base().env("", "x"),
            "invalid environment variable name \"\"",
        ),
        (
            base().env("A=B", "x"),
            "invalid environment variable name \"A=B\"",
        ),
        (
            base().workdir("app"),
            "invalid working directory \"app\": it must be an absolute path",
        ),
        (base().expose(0), "cannot expose port 0"),
        (
            ImageBuilder::new(ImageRef::parse(&format!("x@sha256:{}", "a".repeat(64))).unwrap()),
            "the name must have a tag, not a digest",
        ),
    ];
    for (builder, message) in cases {
        let err = builder.write_oci_archive(&out).unwrap_err();
        assert!(err.to_string().contains(message), "{err}");
    }

    // Defaults: host platform, PATH, no entrypoint; an explicit PATH is kept.
    let built = base().env("PATH", "/bin").write_oci_archive(&out).unwrap();
    assert_eq!(built.platform, Platform::host());
    let entries = read_tar(File::open(&out).unwrap());
    let config: Value =
        serde_json::from_slice(&find(&entries, &blob_path(&built.config_digest)).data).unwrap();
    assert_eq!(config["config"], json!({"Env": ["PATH=/bin"]}));
}

#[test]
fn exact_reader_guards_against_changing_files() {
    let mut grown = ExactReader::new(&b"0123456789"[..], 4);
    let mut out = Vec::new();
    grown.read_to_end(&mut out).unwrap();
    assert_eq!(out, b"0123");
    assert!(!grown.failed);

    let mut shrunk = ExactReader::new(&b"01"[..], 4);
    let err = shrunk.read_to_end(&mut Vec::new()).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    assert!(shrunk.failed);
}

#[test]
fn hashing_writer_counts_and_hashes() {
    let mut writer = HashingWriter::new(Vec::new());
    writer.write_all(b"hello ").unwrap();
    writer.write_all(b"world").unwrap();
    let (inner, digest, count) = writer.finish();
    assert_eq!(inner, b"hello world");
    assert_eq!(count, 11);
    assert_eq!(digest, sha(b"hello world"));
    assert_eq!(
        digest,
        "sha256:b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"
    );
}

fn tool(name: &str) -> bool {
    Command::new(name)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Cross-checks with skopeo and umoci (in CI they must be installed).
#[test]
fn external_tools_accept_the_archive() -> Result<(), String> {
    let f = fixture();
    let out = f.out_dir.join("hello.tar");
    let built = sample_builder(&f.src, &f.extra)
        .platform(Platform::host())
        .write_oci_archive(&out)
        .unwrap();

    if tool("skopeo") {
        let raw = Command::new("skopeo")
            .args(["inspect", "--raw"])
            .arg(format!("oci-archive:{}", out.display()))
            .output()
            .unwrap();
        assert!(
            raw.status.success(),
            "{}",
            String::from_utf8_lossy(&raw.stderr)
        );
        assert_eq!(sha(&raw.stdout), built.manifest_digest);

        let inspect = Command::new("skopeo")
            .arg("inspect")
            .arg(format!("oci-archive:{}:latest", out.display()))
            .output()
            .unwrap();
        assert!(
            inspect.status.success(),
            "{}",
            String::from_utf8_lossy(&inspect.stderr)
        );
        let info: Value = serde_json::from_slice(&inspect.stdout).unwrap();
        assert_eq!(info["Digest"], built.manifest_digest);
        assert_eq!(info["Architecture"], built.platform.architecture());
        assert_eq!(info["Layers"], json!([built.layer_digest]));

        // A copy verifies every blob's digest.
        let copy = f.out_dir.join("copy");
        let status = Command::new("skopeo")
            .args(["--insecure-policy", "copy", "--quiet"])
            .arg(format!("oci-archive:{}", out.display()))
            .arg(format!("dir:{}", copy.display()))
            .status()
            .unwrap();
        assert!(status.success());
    } else {
        cannot_run_here(
            "the skopeo cross-check",
            "skopeo is not installed (scripts/setup --test)",
        )?;
    }

    if tool("umoci") {
        let layout = f.out_dir.join("layout");
        fs::create_dir(&layout).unwrap();
        tar::Archive::new(File::open(&out).unwrap())
            .unpack(&layout)
            .unwrap();
        let bundle = f.out_dir.join("bundle");
        let unpack = Command::new("umoci")
            .args(["unpack", "--rootless", "--image"])
            .arg(format!("{}:latest", layout.display()))
            .arg(&bundle)
            .output()
            .unwrap();
        assert!(
            unpack.status.success(),
            "{}",
            String::from_utf8_lossy(&unpack.stderr)
        );
        let rootfs = bundle.join("rootfs");
        assert_eq!(fs::read(rootfs.join("app/hello.txt")).unwrap(), b"hello\n");
        assert_eq!(
            fs::read_link(rootfs.join("app/link")).unwrap(),
            Path::new("hello.txt")
        );
        let mode = |p: &str| {
            fs::symlink_metadata(rootfs.join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777
        };
        assert_eq!(mode("app/run.sh"), 0o755);
        assert_eq!(mode("tmp"), 0o1777);
        let config: Value =
            serde_json::from_slice(&fs::read(bundle.join("config.json")).unwrap()).unwrap();
        assert_eq!(config["process"]["cwd"], "/app");
        assert_eq!(config["process"]["args"], json!(["/app/run.sh", "--flag"]));
    } else {
        cannot_run_here(
            "the umoci cross-check",
            "umoci is not installed (scripts/setup --test)",
        )?;
    }
    Ok(())
}
