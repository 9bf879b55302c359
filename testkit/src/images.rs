//! Fixture images, built with bramble's own image builder from the static fixture function.

use std::path::{Path, PathBuf};

use bramble_runtime::image::build::{BuiltImage, ImageBuilder};
use bramble_runtime::image::platform::Platform;
use bramble_runtime::image::reference::ImageRef;

use crate::fixture::{build_static_binary, fixture_dir, workspace_dir};
use crate::fixture_binary;

/// Where the fixture binary sits in its image.
pub const FIXTURE_PATH: &str = "/usr/local/bin/fixture-fn";

/// Builds an OCI archive of the fixture function named `name` in `dir`.
///
/// The image has the fixture at [`FIXTURE_PATH`] as its entrypoint, exposes 8080, and carries
/// `/etc/passwd` and `/etc/group` with a user `app` (1000:1000, also in group `staff` 50) so
/// tests can run it as a named user.
pub fn fixture_image(dir: &Path, name: &str) -> Result<(PathBuf, BuiltImage), String> {
    build_image(dir, name, None, false, &[])
}

/// A second, distinct image of the fixture function: like [`fixture_image`] (labelled as built
/// for `platform` when given, see [`fixture_image_labelled`]) with `env` set in the image's
/// configuration, e.g. a `BODY` its `/` answers, and written to `/etc/fixture-env` (so its
/// layer differs from the plain fixture's).
pub fn fixture_image_with_env(
    dir: &Path,
    name: &str,
    platform: Option<Platform>,
    env: &[(&str, &str)],
) -> Result<(PathBuf, BuiltImage), String> {
    build_image(dir, name, platform, true, env)
}

/// Like [`fixture_image`], but labelled as built for `platform` (the binary is still this
/// machine's; only for platform-mismatch tests, the image is never meant to run).
pub fn foreign_image(
    dir: &Path,
    name: &str,
    platform: &str,
) -> Result<(PathBuf, BuiltImage), String> {
    let platform = Platform::parse(platform).map_err(|e| e.to_string())?;
    build_image(dir, name, Some(platform), false, &[])
}

/// The fixture function (this machine's binary, which runs) in an image labelled as built for
/// `platform`: for a node binary of another architecture run under qemu-user against this
/// machine's containerd, whose platform check must accept the image (see [`crate::node`]).
pub fn fixture_image_labelled(
    dir: &Path,
    name: &str,
    platform: Platform,
) -> Result<(PathBuf, BuiltImage), String> {
    build_image(dir, name, Some(platform), true, &[])
}

/// The example function `examples/<example>` (a single std-only source file) compiled
/// statically for this machine and packaged by bramble's image builder as `name`, the way its
/// README tells users to: the binary at `/usr/local/bin/<example>` as the entrypoint, port
/// 8080 exposed.
pub fn example_image(
    dir: &Path,
    example: &str,
    name: &str,
) -> Result<(PathBuf, BuiltImage), String> {
    let source = workspace_dir()
        .join("examples")
        .join(example)
        .join("src/main.rs");
    let binary = build_static_binary(&source, example, &fixture_dir())
        .map_err(|e| format!("building the example {example}: {e}"))?;
    let reference = ImageRef::parse(name).map_err(|e| e.to_string())?;
    let path = format!("/usr/local/bin/{example}");
    let out = dir.join(format!("{}.oci.tar", sanitize(name)));
    let built = ImageBuilder::new(reference)
        .add_file(&binary, &path, Some(0o755))
        .entrypoint(vec![path])
        .expose(8080)
        .write_oci_archive(&out)
        .map_err(|e| format!("building image {name}: {e}"))?;
    Ok((out, built))
}

/// An OCI image-layout directory `dir/<name>.oci` holding one multi-platform image: an image
/// index listing the manifest of each of `images` (OCI archives written by bramble's builder,
/// such as [`fixture_image`] and [`foreign_image`] make) with its platform, and every blob.
/// `index.json` names that index `tag`. Push it with
/// [`Registry::push_oci_layout`](crate::Registry::push_oci_layout).
///
/// Returns the layout's path and the `sha256:` digest of the image index.
pub fn multi_platform_layout(
    dir: &Path,
    tag: &str,
    images: &[(PathBuf, BuiltImage)],
) -> Result<(PathBuf, String), String> {
    use sha2::{Digest, Sha256};

    const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    let layout = dir.join(format!("{}.oci", sanitize(tag)));
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).map_err(|e| format!("creating {}: {e}", blobs.display()))?;
    let write = |path: &Path, data: &[u8]| {
        std::fs::write(path, data).map_err(|e| format!("writing {}: {e}", path.display()))
    };
    let mut manifests = Vec::new();
    for (archive, built) in images {
        let unpack = |e: std::io::Error| format!("unpacking {}: {e}", archive.display());
        let file = std::fs::File::open(archive).map_err(unpack)?;
        let mut descriptor = None;
        for entry in tar::Archive::new(file).entries().map_err(unpack)? {
            let mut entry = entry.map_err(unpack)?;
            let path = entry.path().map_err(unpack)?.into_owned();
            if let Ok(blob) = path.strip_prefix("blobs/sha256")
                && entry.header().entry_type().is_file()
            {
                entry.unpack(blobs.join(blob)).map_err(unpack)?;
            } else if path == Path::new("index.json") {
                let index: serde_json::Value =
                    serde_json::from_reader(&mut entry).map_err(|e| unpack(e.into()))?;
                descriptor = index["manifests"].get(0).cloned();
            }
        }
        let mut descriptor = descriptor
            .ok_or_else(|| format!("{} has no manifest in index.json", archive.display()))?;
        if let Some(fields) = descriptor.as_object_mut() {
            fields.remove("annotations");
        }
        let platform = &built.platform;
        let mut fields = serde_json::json!({
            "os": platform.os(),
            "architecture": platform.architecture(),
        });
        if let Some(variant) = platform.variant() {
            fields["variant"] = variant.into();
        }
        descriptor["platform"] = fields;
        manifests.push(descriptor);
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": manifests,
    });
    let index_bytes = index.to_string().into_bytes();
    let hex: String = Sha256::digest(&index_bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    write(&blobs.join(&hex), &index_bytes)?;
    let digest = format!("sha256:{hex}");
    let top = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": OCI_INDEX,
            "digest": digest,
            "size": index_bytes.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }],
    });
    write(&layout.join("index.json"), top.to_string().as_bytes())?;
    write(
        &layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    Ok((layout, digest))
}

fn build_image(
    dir: &Path,
    name: &str,
    platform: Option<Platform>,
    with_fixture: bool,
    env: &[(&str, &str)],
) -> Result<(PathBuf, BuiltImage), String> {
    let reference = ImageRef::parse(name).map_err(|e| e.to_string())?;
    let etc = dir.join(format!("etc-{}", sanitize(name)));
    std::fs::create_dir_all(&etc).map_err(|e| format!("creating {}: {e}", etc.display()))?;
    std::fs::write(
        etc.join("passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
    )
    .map_err(|e| format!("writing passwd: {e}"))?;
    std::fs::write(
        etc.join("group"),
        "root:x:0:\napp:x:1000:\nstaff:x:50:app\n",
    )
    .map_err(|e| format!("writing group: {e}"))?;
    if !env.is_empty() {
        // The environment in a file as well: a variant's layer is its own, not the plain
        // fixture's (an image fetched from elsewhere then has a layer to move).
        let lines: String = env.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        std::fs::write(etc.join("fixture-env"), lines)
            .map_err(|e| format!("writing fixture-env: {e}"))?;
    }
    let builder = env.iter().fold(
        ImageBuilder::new(reference).add_dir(&etc, "/etc"),
        |builder, (key, value)| builder.env(*key, *value),
    );
    let builder = match platform {
        // No binary: the image only has to look foreign, it never runs.
        Some(platform) if !with_fixture => builder
            .entrypoint(vec!["/usr/local/bin/nothing".to_owned()])
            .platform(platform),
        platform => {
            let binary = fixture_binary().map_err(|e| format!("building the fixture: {e}"))?;
            let builder = builder
                .add_file(&binary, FIXTURE_PATH, Some(0o755))
                .entrypoint(vec![FIXTURE_PATH.to_owned()])
                .expose(8080);
            match platform {
                Some(platform) => builder.platform(platform),
                None => builder,
            }
        }
    };
    let out = dir.join(format!("{}.oci.tar", sanitize(name)));
    let built = builder
        .write_oci_archive(&out)
        .map_err(|e| format!("building image {name}: {e}"))?;
    Ok((out, built))
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}
