//! Fixture images, built with bramble's own image builder from the static fixture function.

use std::path::{Path, PathBuf};

use bramble_runtime::image::build::{BuiltImage, ImageBuilder};
use bramble_runtime::image::platform::Platform;
use bramble_runtime::image::reference::ImageRef;

use crate::fixture_binary;

/// Where the fixture binary sits in its image.
pub const FIXTURE_PATH: &str = "/usr/local/bin/fixture-fn";

/// Builds an OCI archive of the fixture function named `name` in `dir`.
///
/// The image has the fixture at [`FIXTURE_PATH`] as its entrypoint, exposes 8080, and carries
/// `/etc/passwd` and `/etc/group` with a user `app` (1000:1000, also in group `staff` 50) so
/// tests can run it as a named user.
pub fn fixture_image(dir: &Path, name: &str) -> Result<(PathBuf, BuiltImage), String> {
    build(dir, name, None)
}

/// Like [`fixture_image`], but labelled as built for `platform` (the binary is still this
/// machine's; only for platform-mismatch tests, the image is never meant to run).
pub fn foreign_image(
    dir: &Path,
    name: &str,
    platform: &str,
) -> Result<(PathBuf, BuiltImage), String> {
    let platform = Platform::parse(platform).map_err(|e| e.to_string())?;
    build(dir, name, Some(platform))
}

fn build(
    dir: &Path,
    name: &str,
    platform: Option<Platform>,
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
    let builder = ImageBuilder::new(reference).add_dir(&etc, "/etc");
    let builder = match platform {
        // No binary: the image only has to look foreign, it never runs.
        Some(platform) => builder
            .entrypoint(vec!["/usr/local/bin/nothing".to_owned()])
            .platform(platform),
        None => {
            let binary = fixture_binary().map_err(|e| format!("building the fixture: {e}"))?;
            builder
                .add_file(&binary, FIXTURE_PATH, Some(0o755))
                .entrypoint(vec![FIXTURE_PATH.to_owned()])
                .expose(8080)
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
