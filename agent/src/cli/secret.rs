//! `bramble secret create|list|rm`. A secret's value goes to the gateway and nowhere else: it is
//! never printed, not even in an error.

use std::io::{IsTerminal as _, Read as _};
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use bramble_gateway::types::Secret;
use reqwest::Method;

use super::client::{Client, Target};
use super::functions::{out, report, table};

#[derive(clap::Subcommand, Debug)]
pub(crate) enum SecretCommand {
    /// Create or replace a secret (the value from --from-literal, --from-file, or stdin).
    #[command(visible_alias = "update")]
    Create(Box<CreateArgs>),
    /// List the secrets (names only; values are never shown).
    #[command(visible_alias = "ls")]
    List(Box<ListArgs>),
    /// Remove a secret.
    #[command(visible_alias = "remove")]
    Rm(Box<RmArgs>),
}

#[derive(clap::Args, Debug)]
pub(crate) struct CreateArgs {
    /// Secret name (the file name under /var/openfaas/secrets/).
    name: String,
    /// The value, as text.
    #[arg(long, conflicts_with = "from_file")]
    from_literal: Option<String>,
    /// A file whose bytes are the value (sent as they are, binary included).
    #[arg(long)]
    from_file: Option<PathBuf>,
    /// Namespace (default: the node's default).
    #[arg(long, short = 'n')]
    namespace: Option<String>,
    /// Print the result as JSON: {"secret","namespace","action":"created"} (never the value).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    target: Target,
}

#[derive(clap::Args, Debug)]
pub(crate) struct ListArgs {
    /// Namespace (default: the node's default).
    #[arg(long, short = 'n')]
    namespace: Option<String>,
    /// Print the gateway's JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    target: Target,
}

#[derive(clap::Args, Debug)]
pub(crate) struct RmArgs {
    /// Secret name.
    name: String,
    /// Namespace (default: the node's default).
    #[arg(long, short = 'n')]
    namespace: Option<String>,
    /// Print the result as JSON: {"secret","namespace","action":"removed"}.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    target: Target,
}

pub(crate) async fn run(command: SecretCommand) -> anyhow::Result<()> {
    match command {
        SecretCommand::Create(args) => create(*args).await,
        SecretCommand::List(args) => list(&args).await,
        SecretCommand::Rm(args) => remove(&args).await,
    }
}

/// Where the value comes from.
enum Value {
    Text(String),
    Bytes(Vec<u8>),
}

/// Text from stdin loses one trailing newline (`echo s3cret | bramble secret create k`);
/// anything that is not UTF-8 is sent as bytes.
fn from_stdin(bytes: Vec<u8>) -> Value {
    match String::from_utf8(bytes) {
        Ok(mut text) => {
            if text.ends_with('\n') {
                text.pop();
                if text.ends_with('\r') {
                    text.pop();
                }
            }
            Value::Text(text)
        }
        Err(e) => Value::Bytes(e.into_bytes()),
    }
}

fn secret(name: String, namespace: Option<String>, value: Value) -> anyhow::Result<Secret> {
    let (value, raw_value) = match value {
        Value::Text(t) if t.is_empty() => bail!("the value of secret {name} is empty"),
        Value::Bytes(b) if b.is_empty() => bail!("the value of secret {name} is empty"),
        Value::Text(t) => (Some(t), None),
        Value::Bytes(b) => (None, Some(b)),
    };
    Ok(Secret {
        name,
        namespace,
        value,
        raw_value,
    })
}

async fn create(args: CreateArgs) -> anyhow::Result<()> {
    bramble_gateway::validate::secret_name(&args.name).map_err(anyhow::Error::msg)?;
    let value = if let Some(text) = args.from_literal {
        Value::Text(text)
    } else if let Some(path) = &args.from_file {
        Value::Bytes(
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?,
        )
    } else {
        let mut stdin = std::io::stdin();
        if stdin.is_terminal() {
            bail!("give the value with --from-literal VALUE, --from-file PATH, or on stdin");
        }
        let mut bytes = Vec::new();
        stdin.read_to_end(&mut bytes).context("reading stdin")?;
        from_stdin(bytes)
    };
    let client = Client::new(&args.target)?;
    let body = secret(args.name.clone(), args.namespace.clone(), value)?;
    client
        .send_json(Method::POST, "/system/secrets", &body)
        .await?;
    let result = serde_json::json!({
        "secret": args.name,
        "namespace": args.namespace,
        "action": "created",
    });
    report(
        args.json,
        &format!("created secret {}\n", args.name),
        &result,
    )
}

async fn list(args: &ListArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.target)?;
    let mut request = client.request(Method::GET, "/system/secrets");
    if let Some(ns) = &args.namespace {
        request = request.query(&[("namespace", ns)]);
    }
    let value: serde_json::Value = client
        .send(request)
        .await?
        .json()
        .await
        .context("the gateway's list of secrets is not JSON")?;
    let secrets: Vec<Secret> = serde_json::from_value(value)
        .context("the gateway's list of secrets is not what bramble expects")?;
    if args.json {
        // Re-encoded from names and namespaces only: a value is never printed, even if a
        // gateway sent one.
        let names: Vec<serde_json::Value> = secrets
            .iter()
            .map(|s| serde_json::json!({"name": s.name, "namespace": s.namespace}))
            .collect();
        let mut text = serde_json::to_string_pretty(&names).context("printing JSON")?;
        text.push('\n');
        return out(&text);
    }
    out(&format_secrets(&secrets))
}

/// The table of `bramble secret list`.
pub(crate) fn format_secrets(secrets: &[Secret]) -> String {
    if secrets.is_empty() {
        return "no secrets\n".into();
    }
    let mut rows: Vec<Vec<String>> = secrets
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                s.namespace.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    rows.sort();
    table(&["NAME", "NAMESPACE"], rows)
}

async fn remove(args: &RmArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.target)?;
    let body = Secret {
        name: args.name.clone(),
        namespace: args.namespace.clone(),
        ..Secret::default()
    };
    // The namespace in the body (faas-cli) and the query (faasd reads it there).
    let mut request = client
        .request(Method::DELETE, "/system/secrets")
        .json(&body);
    if let Some(ns) = &args.namespace {
        request = request.query(&[("namespace", ns)]);
    }
    client.send(request).await?;
    let result = serde_json::json!({
        "secret": args.name,
        "namespace": args.namespace,
        "action": "removed",
    });
    report(
        args.json,
        &format!("removed secret {}\n", args.name),
        &result,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_become_value_or_raw_value() {
        let s = secret("k".into(), None, Value::Text("s3cret".into())).unwrap();
        assert_eq!(
            (s.value.as_deref(), s.raw_value.is_none()),
            (Some("s3cret"), true)
        );
        let s = secret("k".into(), None, Value::Bytes(vec![0, 0xff])).unwrap();
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            r#"{"name":"k","rawValue":"AP8="}"#
        );
        assert!(secret("k".into(), None, Value::Text(String::new())).is_err());
        assert!(secret("k".into(), None, Value::Bytes(Vec::new())).is_err());
        match from_stdin(b"s3cret\r\n".to_vec()) {
            Value::Text(t) => assert_eq!(t, "s3cret"),
            Value::Bytes(_) => panic!("text expected"),
        }
        match from_stdin(b"line\n\n".to_vec()) {
            Value::Text(t) => assert_eq!(t, "line\n"),
            Value::Bytes(_) => panic!("text expected"),
        }
        assert!(matches!(from_stdin(vec![0xff, b'\n']), Value::Bytes(b) if b == [0xff, b'\n']));
    }

    #[test]
    fn list_shows_names_only() {
        let secrets = [
            Secret {
                name: "zz".into(),
                namespace: Some("openfaas-fn".into()),
                value: Some("hunter2".into()),
                ..Secret::default()
            },
            Secret {
                name: "api-key".into(),
                namespace: Some("openfaas-fn".into()),
                ..Secret::default()
            },
        ];
        let text = format_secrets(&secrets);
        assert_eq!(
            text,
            "NAME     NAMESPACE\napi-key  openfaas-fn\nzz       openfaas-fn\n"
        );
        assert_eq!(format_secrets(&[]), "no secrets\n");
    }
}
