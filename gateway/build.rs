//! Embeds the dashboard (`ui/`) into the gateway: every file is hashed (its strong `ETag`) and
//! gzipped here, once, so that a request never compresses anything and the binary carries
//! both copies as read-only data (file-backed pages: nothing is decompressed at start).
//!
//! Writes `$OUT_DIR/ui_assets.rs`, a table of [`Asset`]s included by `src/ui/assets.rs`.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use sha2::Digest as _;

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default());
    let root = manifest.join("ui");
    // A directory: cargo reruns this when anything under it changes.
    println!("cargo:rerun-if-changed=ui");
    println!("cargo:rerun-if-changed=build.rs");
    let mut files = Vec::new();
    collect(&root, &root, &mut files);
    files.sort();
    let gz_dir = out.join("ui-gz");
    if let Err(e) = std::fs::create_dir_all(&gz_dir) {
        fail(&format!("cannot create {}: {e}", gz_dir.display()));
    }
    let mut table = String::from("&[\n");
    for relative in &files {
        let path = root.join(relative);
        let bytes = std::fs::read(&path)
            .unwrap_or_else(|e| fail(&format!("cannot read {}: {e}", path.display())));
        let digest = sha2::Sha256::digest(&bytes);
        let etag: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
        let gzipped = gzip(&bytes);
        // Only worth it when it saves a tenth (images are compressed already).
        let gzip = if gzipped.len() * 10 < bytes.len() * 9 {
            let gz_path = gz_dir.join(format!("{}.gz", relative.replace('/', "__")));
            std::fs::write(&gz_path, &gzipped)
                .unwrap_or_else(|e| fail(&format!("cannot write {}: {e}", gz_path.display())));
            format!("Some(include_bytes!({:?}))", gz_path.display().to_string())
        } else {
            "None".to_owned()
        };
        let _ = writeln!(
            table,
            "    Asset {{ path: {relative:?}, content_type: {:?}, etag: {etag:?}, raw: include_bytes!({:?}), gzip: {gzip} }},",
            content_type(relative),
            path.display().to_string(),
        );
    }
    table.push(']');
    let target = out.join("ui_assets.rs");
    std::fs::write(&target, table)
        .unwrap_or_else(|e| fail(&format!("cannot write {}: {e}", target.display())));
}

/// Every file under `dir` (recursively), as a `/`-separated path relative to `root`; hidden
/// files (editor leftovers) are left out.
fn collect(root: &Path, dir: &Path, files: &mut Vec<String>) {
    let entries = std::fs::read_dir(dir)
        .unwrap_or_else(|e| fail(&format!("cannot list {}: {e}", dir.display())));
    for entry in entries {
        let entry = entry.unwrap_or_else(|e| fail(&format!("cannot list {}: {e}", dir.display())));
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        if path.is_dir() {
            collect(root, &path, files);
        } else if let Ok(relative) = path.strip_prefix(root) {
            let parts: Vec<String> = relative
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            files.push(parts.join("/"));
        }
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder
        .write_all(bytes)
        .and_then(|()| encoder.finish())
        .unwrap_or_else(|e| fail(&format!("gzip: {e}")))
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("json") => "application/json",
        Some("webmanifest") => "application/manifest+json",
        Some("woff2") => "font/woff2",
        Some("txt") | Some("md") => "text/plain; charset=utf-8",
        _ => fail(&format!(
            "ui/{path}: no content type known for this file: add its extension to build.rs"
        )),
    }
}

fn fail(message: &str) -> ! {
    // A build script reports errors by failing; cargo shows this line.
    eprintln!("error: bramble-gateway build: {message}");
    std::process::exit(1)
}
