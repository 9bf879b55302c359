//! `bramble deploy`: create or update functions from flags or a faas-cli stack file, like
//! `faas-cli deploy`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use bramble_gateway::types::{FunctionDeployment, FunctionResources};
use reqwest::{Method, StatusCode};

use super::client::{Client, Target};
use super::functions::report;
use super::key_value;
use super::stack::{self, StackFunction};

#[derive(clap::Args, Debug)]
pub(crate) struct DeployArgs {
    /// A faas-cli stack file (stack.yml) with the functions to deploy.
    #[arg(
        long = "yaml",
        short = 'f',
        visible_alias = "file",
        value_name = "STACK_FILE",
        conflicts_with_all = ["name", "image", "fprocess", "memory", "cpu"],
        required_unless_present_all = ["name", "image"]
    )]
    file: Option<PathBuf>,
    /// Function name.
    #[arg(long, requires = "image")]
    name: Option<String>,
    /// Image (present on the board, or pulled from its registry).
    #[arg(long, requires = "name")]
    image: Option<String>,
    /// Namespace (default: the stack file's, or the node's default).
    #[arg(long, short = 'n')]
    namespace: Option<String>,
    /// The function process (`fprocess`) for watchdog-based images.
    #[arg(long)]
    fprocess: Option<String>,
    /// Environment variable KEY=VALUE (repeatable; overrides the stack file's).
    #[arg(long, short = 'e', value_parser = key_value)]
    env: Vec<(String, String)>,
    /// Secret to mount at /var/openfaas/secrets/NAME (repeatable; added to the stack file's).
    #[arg(long)]
    secret: Vec<String>,
    /// Label KEY=VALUE (repeatable; overrides the stack file's).
    #[arg(long, short = 'l', value_parser = key_value)]
    label: Vec<(String, String)>,
    /// Annotation KEY=VALUE (repeatable; overrides the stack file's).
    #[arg(long, value_parser = key_value)]
    annotation: Vec<(String, String)>,
    /// Memory limit, e.g. 64Mi.
    #[arg(long)]
    memory: Option<String>,
    /// CPU limit, e.g. 500m.
    #[arg(long)]
    cpu: Option<String>,
    /// Mount the image read-only (with a writable /tmp).
    #[arg(long)]
    readonly: bool,
    /// Deploy only the stack's functions whose name matches (`*` is a wildcard).
    #[arg(long)]
    filter: Option<String>,
    /// Substitute ${VAR} and ${VAR:-default} in the stack file from the environment.
    #[arg(
        long,
        default_value_t = true,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_name = "BOOL"
    )]
    envsubst: bool,
    /// Suffix image tags from git like faas-cli: latest, sha (TAG-SHA), branch
    /// (TAG-BRANCH-SHA) or describe (TAG-`git describe`), run in the function's handler directory.
    #[arg(long, value_enum, value_name = "FORMAT")]
    tag: Option<TagFormat>,
    /// Print one JSON object per function: {"function","namespace","image","action"} with
    /// action "deployed" (created) or "updated".
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    target: Target,
}

/// faas-cli's `--tag` formats.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TagFormat {
    Latest,
    Sha,
    Branch,
    Describe,
}

pub(crate) async fn run(args: DeployArgs) -> anyhow::Result<()> {
    if let Some(file) = args.file.clone() {
        return deploy_stack(&file, args).await;
    }
    if args.filter.is_some() || args.tag.is_some() || !args.envsubst {
        bail!("--filter, --tag and --envsubst apply to a stack file (-f stack.yml)");
    }
    let (Some(name), Some(image)) = (args.name.clone(), args.image.clone()) else {
        bail!("give --name and --image, or a stack file with -f");
    };
    let client = Client::new(&args.target)?;
    let limits = (args.memory.is_some() || args.cpu.is_some()).then(|| FunctionResources {
        memory: args.memory.clone(),
        cpu: args.cpu.clone(),
    });
    let deployment = FunctionDeployment {
        service: name,
        image,
        namespace: args.namespace,
        env_process: args.fprocess,
        env_vars: args.env.into_iter().collect(),
        secrets: args.secret,
        labels: args.label.into_iter().collect::<BTreeMap<_, _>>(),
        annotations: args.annotation.into_iter().collect(),
        limits,
        read_only_root_filesystem: args.readonly,
        ..FunctionDeployment::default()
    };
    deploy(&client, &deployment, args.json).await
}

/// `deploy -f`: every selected function of the stack, checked before the first is sent.
async fn deploy_stack(file: &Path, args: DeployArgs) -> anyhow::Result<()> {
    let lookup = |name: &str| std::env::var(name).ok();
    let options = stack::Options {
        envsubst: args.envsubst,
        lookup: &lookup,
        filter: args.filter.as_deref(),
    };
    let stack = stack::load(file, &options)?;
    let mut deployments = Vec::with_capacity(stack.functions.len());
    for function in &stack.functions {
        let mut deployment = apply_flags(function, &args);
        if let Some(format) = args.tag {
            let dir = function
                .handler
                .clone()
                .unwrap_or_else(|| file.parent().unwrap_or(Path::new(".")).to_path_buf());
            deployment.image = tagged_image(&deployment.image, format, &dir)
                .with_context(|| format!("--tag for {}", deployment.service))?;
        }
        deployments.push(deployment);
    }

    // The stack's gateway counts when neither --gateway nor the environment names one.
    let mut target = args.target.clone();
    if target.gateway.is_none()
        && std::env::var_os("BRAMBLE_URL").is_none()
        && std::env::var_os("OPENFAAS_URL").is_none()
    {
        target.gateway = stack.gateway.clone();
    }
    let client = Client::new(&target)?;

    if let [only] = deployments.as_slice() {
        return deploy(&client, only, args.json)
            .await
            .with_context(|| format!("deploying {}", only.service));
    }
    let mut failed = Vec::new();
    for deployment in &deployments {
        if let Err(e) = deploy(&client, deployment, args.json).await {
            // No gateway there: the next ones would fail the same way.
            let unreachable = e.chain().any(|c| {
                c.downcast_ref::<reqwest::Error>()
                    .is_some_and(reqwest::Error::is_connect)
            });
            if unreachable {
                return Err(e);
            }
            eprintln!("bramble: deploying {}: {e:#}", deployment.service);
            failed.push(deployment.service.as_str());
        }
    }
    if !failed.is_empty() {
        bail!(
            "{} of {} functions failed to deploy: {}",
            failed.len(),
            deployments.len(),
            failed.join(", ")
        );
    }
    Ok(())
}

/// A stack function with the command line's additions, merged as faas-cli merges them.
fn apply_flags(function: &StackFunction, args: &DeployArgs) -> FunctionDeployment {
    let mut d = function.deployment.clone();
    d.env_vars.extend(args.env.iter().cloned());
    for secret in &args.secret {
        if !d.secrets.contains(secret) {
            d.secrets.push(secret.clone());
        }
    }
    d.labels.extend(args.label.iter().cloned());
    d.annotations.extend(args.annotation.iter().cloned());
    if let Some(ns) = &args.namespace {
        d.namespace = Some(ns.clone());
    }
    d.read_only_root_filesystem |= args.readonly;
    d
}

/// faas-cli's `BuildImageName`: `:latest` when the image has no tag, then the git suffix.
fn tagged_image(image: &str, format: TagFormat, dir: &Path) -> anyhow::Result<String> {
    let last = image.rsplit('/').next().unwrap_or(image);
    let mut tagged = image.to_owned();
    if !last.contains(':') && !last.contains('@') {
        tagged.push_str(":latest");
    }
    let suffix = match format {
        TagFormat::Latest => return Ok(tagged),
        TagFormat::Sha => git(dir, &["rev-parse", "--short", "HEAD"])?,
        TagFormat::Branch => format!(
            "{}-{}",
            git(dir, &["rev-parse", "--abbrev-ref", "HEAD"])?,
            git(dir, &["rev-parse", "--short", "HEAD"])?
        ),
        TagFormat::Describe => git(dir, &["describe", "--tags", "--always"])?,
    };
    Ok(format!("{tagged}-{suffix}"))
}

fn git(dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let output = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .context("cannot run git")?;
    if !output.status.success() {
        bail!(
            "git {} in {}: {}",
            args.join(" "),
            dir.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    // A tag allows [A-Za-z0-9_.-]; branch names may hold '/'.
    Ok(text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect())
}

/// Updates the function, or creates it when it does not exist (faas-cli's behaviour), and
/// says which it did.
pub(crate) async fn deploy(
    client: &Client,
    deployment: &FunctionDeployment,
    json: bool,
) -> anyhow::Result<()> {
    let update = client
        .request(Method::PUT, "/system/functions")
        .json(deployment)
        .send()
        .await;
    let update =
        update.with_context(|| format!("cannot reach the bramble gateway at {}", client.base()))?;
    let action = if update.status() == StatusCode::NOT_FOUND {
        client
            .send_json(Method::POST, "/system/functions", deployment)
            .await?;
        "deployed"
    } else {
        client.check(update).await?;
        "updated"
    };
    let value = serde_json::json!({
        "function": deployment.service,
        "namespace": deployment.namespace,
        "image": deployment.image,
        "action": action,
    });
    report(
        json,
        &format!("{action} {} ({})\n", deployment.service, deployment.image),
        &value,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[derive(clap::Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        deploy: DeployArgs,
    }

    fn args(argv: &[&str]) -> Result<DeployArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("deploy").chain(argv.iter().copied())).map(|c| c.deploy)
    }

    #[test]
    fn flags_or_a_stack_file_but_not_both() {
        assert!(args(&["--name", "f", "--image", "x"]).is_ok());
        assert!(args(&["-f", "stack.yml"]).is_ok());
        assert!(args(&["-f", "stack.yml", "--name", "f"]).is_err());
        assert!(args(&["-f", "stack.yml", "--memory", "1Mi"]).is_err());
        assert!(args(&["--name", "f"]).is_err());
        assert!(args(&[]).is_err());
        let a = args(&["-f", "s.yml", "--envsubst=false", "--tag", "sha"]).unwrap();
        assert!(!a.envsubst);
        assert_eq!(a.tag, Some(TagFormat::Sha));
        assert!(args(&["-f", "s.yml"]).unwrap().envsubst);
        assert!(args(&["-f", "s.yml", "--envsubst"]).unwrap().envsubst);
    }

    #[test]
    fn command_line_additions_merge_like_faas_cli() {
        let a = args(&[
            "-f",
            "s.yml",
            "-e",
            "A=flag",
            "--secret",
            "s2",
            "--secret",
            "s1",
            "-l",
            "l=flag",
            "-n",
            "other",
            "--readonly",
        ])
        .unwrap();
        let function = StackFunction {
            deployment: FunctionDeployment {
                service: "f".into(),
                image: "x".into(),
                namespace: Some("openfaas-fn".into()),
                env_vars: [("A".into(), "stack".into()), ("B".into(), "stack".into())].into(),
                secrets: vec!["s1".into()],
                labels: [("l".into(), "stack".into())].into(),
                ..FunctionDeployment::default()
            },
            handler: None,
        };
        let d = apply_flags(&function, &a);
        assert_eq!(
            (d.env_vars["A"].as_str(), d.env_vars["B"].as_str()),
            ("flag", "stack")
        );
        assert_eq!(d.secrets, ["s1", "s2"]);
        assert_eq!(d.labels["l"], "flag");
        assert_eq!(d.namespace.as_deref(), Some("other"));
        assert!(d.read_only_root_filesystem);
    }

    #[test]
    fn tags_like_faas_cli() {
        let dir = Path::new(".");
        assert_eq!(
            tagged_image("hello", TagFormat::Latest, dir).unwrap(),
            "hello:latest"
        );
        assert_eq!(
            tagged_image("localhost:5000/hello", TagFormat::Latest, dir).unwrap(),
            "localhost:5000/hello:latest"
        );
        assert_eq!(
            tagged_image("hello:1.0", TagFormat::Latest, dir).unwrap(),
            "hello:1.0"
        );
        let missing = tempfile::tempdir().unwrap();
        let e = tagged_image("hello", TagFormat::Sha, missing.path()).unwrap_err();
        assert!(format!("{e:#}").contains("git"), "{e:#}");
    }
}
