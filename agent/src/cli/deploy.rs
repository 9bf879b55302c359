//! `bramble deploy`: create or update a function, like `faas-cli deploy`.

use std::collections::BTreeMap;

use bramble_gateway::types::{FunctionDeployment, FunctionResources};
use reqwest::{Method, StatusCode};

use super::client::{Client, Target};
use super::key_value;

#[derive(clap::Args, Debug)]
pub(crate) struct DeployArgs {
    /// Function name.
    #[arg(long)]
    name: String,
    /// Image (present on the board, or pulled from its registry).
    #[arg(long)]
    image: String,
    /// Namespace (default: the node's default).
    #[arg(long, short = 'n')]
    namespace: Option<String>,
    /// The function process (`fprocess`) for watchdog-based images.
    #[arg(long)]
    fprocess: Option<String>,
    /// Environment variable KEY=VALUE (repeatable).
    #[arg(long, short = 'e', value_parser = key_value)]
    env: Vec<(String, String)>,
    /// Secret to mount at /var/openfaas/secrets/NAME (repeatable).
    #[arg(long)]
    secret: Vec<String>,
    /// Label KEY=VALUE (repeatable).
    #[arg(long, short = 'l', value_parser = key_value)]
    label: Vec<(String, String)>,
    /// Annotation KEY=VALUE (repeatable).
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
    #[command(flatten)]
    target: Target,
}

pub(crate) async fn run(args: DeployArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.target)?;
    let limits = (args.memory.is_some() || args.cpu.is_some()).then(|| FunctionResources {
        memory: args.memory.clone(),
        cpu: args.cpu.clone(),
    });
    let deployment = FunctionDeployment {
        service: args.name.clone(),
        image: args.image,
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
    deploy(&client, &deployment).await
}

/// Updates the function, or creates it when it does not exist (faas-cli's behaviour).
pub(crate) async fn deploy(client: &Client, deployment: &FunctionDeployment) -> anyhow::Result<()> {
    let update = client
        .request(Method::PUT, "/system/functions")
        .json(deployment)
        .send()
        .await;
    let update = update.map_err(|e| {
        anyhow::anyhow!("cannot reach the bramble gateway at {}: {e}", client.base())
    })?;
    if update.status() == StatusCode::NOT_FOUND {
        client
            .send_json(Method::POST, "/system/functions", deployment)
            .await?;
        println!("deployed {} ({})", deployment.service, deployment.image);
    } else {
        client.check(update).await?;
        println!("updated {} ({})", deployment.service, deployment.image);
    }
    Ok(())
}
