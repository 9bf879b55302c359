//! `bramble image ...`: build image archives without Docker, and move them onto a board.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use bramble_gateway::types::{ImageSummary, ImportedImages};
use bramble_runtime::image::build::ImageBuilder;
use bramble_runtime::image::platform::Platform;
use bramble_runtime::image::reference::ImageRef;
use reqwest::Method;

use super::client::{Client, Target};
use super::functions::report;
use super::key_value;

#[derive(clap::Subcommand, Debug)]
pub(crate) enum ImageCommand {
    /// Build an OCI image archive from a static binary or a directory (no Docker needed).
    Build(Box<BuildArgs>),
    /// Upload an image archive (OCI layout or docker save, .tar or .tar.gz) to the board.
    Import {
        /// The archive.
        file: PathBuf,
        /// Name the image (when the archive holds exactly one).
        #[arg(long)]
        name: Option<String>,
        /// Print the result as JSON: {"images":[...],"action":"imported"}.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: Target,
    },
    /// List the images on the board.
    List {
        #[command(flatten)]
        target: Target,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove an image from the board (refused while a function uses it).
    Rm {
        name: String,
        /// Print the result as JSON: {"image","action":"removed"}.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(clap::Args, Debug)]
pub(crate) struct BuildArgs {
    /// Image name, e.g. hello:latest.
    #[arg(long)]
    name: String,
    /// A statically linked executable: the image's only content and its entrypoint.
    #[arg(long, conflicts_with = "dir", required_unless_present = "dir")]
    binary: Option<PathBuf>,
    /// A directory copied to the image's root.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Target platform, e.g. linux/arm64 or linux/arm/v7 (default: the binary's, or this machine's).
    #[arg(long)]
    platform: Option<String>,
    /// Entrypoint (repeat for each argument).
    #[arg(long)]
    entrypoint: Vec<String>,
    /// Command (repeat for each argument).
    #[arg(long)]
    cmd: Vec<String>,
    /// Environment variable KEY=VALUE (repeatable).
    #[arg(long, value_parser = key_value)]
    env: Vec<(String, String)>,
    /// Label KEY=VALUE (repeatable).
    #[arg(long, value_parser = key_value)]
    label: Vec<(String, String)>,
    /// Port the function listens on.
    #[arg(long, default_value_t = 8080)]
    expose: u16,
    /// User to run as (name or uid[:gid]).
    #[arg(long)]
    user: Option<String>,
    /// Working directory.
    #[arg(long)]
    workdir: Option<String>,
    /// Where to write the archive.
    #[arg(long, short = 'o')]
    output: PathBuf,
    /// Print the result as JSON: {"image","platform","archive","size","manifest"}.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn run(command: ImageCommand) -> anyhow::Result<()> {
    match command {
        ImageCommand::Build(args) => build(*args),
        ImageCommand::Import {
            file,
            name,
            json,
            target,
        } => import(&Client::new(&target)?, file, name, json).await,
        ImageCommand::List { target, json } => list(&Client::new(&target)?, json).await,
        ImageCommand::Rm { name, json, target } => {
            let client = Client::new(&target)?;
            client
                .send_json(
                    Method::DELETE,
                    "/system/images",
                    &serde_json::json!({"name": name}),
                )
                .await?;
            let value = serde_json::json!({"image": name, "action": "removed"});
            report(json, &format!("removed {name}\n"), &value)
        }
    }
}

fn build(args: BuildArgs) -> anyhow::Result<()> {
    let reference = ImageRef::parse(&args.name)?;
    let mut builder = ImageBuilder::new(reference);
    if let Some(p) = &args.platform {
        builder = builder.platform(Platform::parse(p)?);
    }
    if let Some(binary) = &args.binary {
        builder = builder.binary(binary);
    }
    if let Some(dir) = &args.dir {
        builder = builder.add_dir(dir, "/");
    }
    if !args.entrypoint.is_empty() {
        builder = builder.entrypoint(args.entrypoint);
    }
    if !args.cmd.is_empty() {
        builder = builder.cmd(args.cmd);
    }
    for (k, v) in args.env {
        builder = builder.env(k, v);
    }
    for (k, v) in args.label {
        builder = builder.label(k, v);
    }
    if let Some(user) = args.user {
        builder = builder.user(user);
    }
    if let Some(workdir) = args.workdir {
        builder = builder.workdir(workdir);
    }
    let built = builder
        .expose(args.expose)
        .write_oci_archive(&args.output)
        .context("building the image")?;
    let value = serde_json::json!({
        "image": built.name.to_string(),
        "platform": built.platform.to_string(),
        "archive": args.output.display().to_string(),
        "size": built.archive_size,
        "manifest": built.manifest_digest,
    });
    let text = format!(
        "built {} for {}: {} ({} bytes, manifest {})\n",
        built.name,
        built.platform,
        args.output.display(),
        built.archive_size,
        built.manifest_digest
    );
    report(args.json, &text, &value)
}

async fn import(
    client: &Client,
    file: PathBuf,
    name: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    let handle = tokio::fs::File::open(&file)
        .await
        .with_context(|| format!("opening {}", file.display()))?;
    let size = handle.metadata().await.map(|m| m.len()).unwrap_or(0);
    if size == 0 {
        bail!("{} is empty", file.display());
    }
    eprintln!(
        "uploading {} ({size} bytes) to {} ...",
        file.display(),
        client.base()
    );
    let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(handle));
    let mut request = client
        .request(Method::POST, "/system/images")
        .body(body)
        .header("Content-Length", size);
    if let Some(name) = &name {
        request = request.query(&[("name", name)]);
    }
    let imported: ImportedImages = client
        .send(request)
        .await?
        .json()
        .await
        .context("reading the gateway's answer")?;
    let text: String = imported
        .images
        .iter()
        .map(|image| format!("imported {image}\n"))
        .collect();
    let value = serde_json::json!({"images": imported.images, "action": "imported"});
    report(json, &text, &value)
}

async fn list(client: &Client, json: bool) -> anyhow::Result<()> {
    let images: Vec<ImageSummary> = client.get_json("/system/images").await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&images)?);
        return Ok(());
    }
    println!("{:<60} {:>12}  DIGEST", "IMAGE", "SIZE");
    for i in images {
        println!("{:<60} {:>12}  {}", i.name, i.size, i.digest);
    }
    Ok(())
}
