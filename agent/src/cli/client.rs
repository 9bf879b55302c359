//! The CLI's connection to a node's gateway.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use reqwest::{Method, StatusCode};

/// Where the CLI finds a node and its credentials.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct Target {
    /// Gateway URL (default: $BRAMBLE_URL, $OPENFAAS_URL, or http://127.0.0.1:8080).
    #[arg(long, short = 'g', global = true)]
    pub(crate) gateway: Option<String>,
    /// State directory of the local node, where the API credentials are read from when
    /// $BRAMBLE_USER and $BRAMBLE_PASSWORD are not set.
    #[arg(
        long,
        global = true,
        env = "BRAMBLE_STATE_DIR",
        default_value = "/var/lib/bramble"
    )]
    pub(crate) state_dir: PathBuf,
}

/// An HTTP client for one gateway.
pub(crate) struct Client {
    http: reqwest::Client,
    base: String,
    auth: Option<(String, String)>,
    credentials_hint: String,
}

impl Client {
    pub(crate) fn new(target: &Target) -> anyhow::Result<Client> {
        let base = gateway_url(target.gateway.as_deref(), &environment)?;
        let (auth, credentials_hint) = credentials(&target.state_dir, &environment);
        bramble_base::tls::install_crypto_provider();
        let http = reqwest::Client::builder()
            .user_agent(concat!("bramble-cli/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(std::time::Duration::from_secs(10))
            .build()
            .context("creating the HTTP client")?;
        Ok(Client {
            http,
            base,
            auth,
            credentials_hint,
        })
    }

    /// A request builder for `path` on the gateway, with credentials for `/system` paths.
    pub(crate) fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let builder = self.http.request(method, format!("{}{path}", self.base));
        match (&self.auth, path.starts_with("/system")) {
            (Some((user, password)), true) => builder.basic_auth(user, Some(password)),
            _ => builder,
        }
    }

    /// Sends a request; a non-2xx answer becomes an error carrying the gateway's message.
    pub(crate) async fn send(
        &self,
        builder: reqwest::RequestBuilder,
    ) -> anyhow::Result<reqwest::Response> {
        let response = builder
            .send()
            .await
            .with_context(|| format!("cannot reach the bramble gateway at {}", self.base))?;
        self.check(response).await
    }

    /// Turns a non-2xx answer into an error carrying the gateway's message.
    pub(crate) async fn check(
        &self,
        response: reqwest::Response,
    ) -> anyhow::Result<reqwest::Response> {
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let text = response.text().await.unwrap_or_default();
        let text = text.trim();
        match status {
            StatusCode::UNAUTHORIZED => bail!(
                "the gateway refused the credentials ({})",
                self.credentials_hint
            ),
            _ if text.is_empty() => bail!("the gateway answered {status}"),
            _ => bail!("{text} ({status})"),
        }
    }

    /// Sends a JSON body.
    pub(crate) async fn send_json<T: serde::Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        body: &T,
    ) -> anyhow::Result<reqwest::Response> {
        self.send(self.request(method, path).json(body)).await
    }

    /// Gets and decodes JSON.
    pub(crate) async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
    ) -> anyhow::Result<T> {
        let response = self.send(self.request(Method::GET, path)).await?;
        response
            .json()
            .await
            .with_context(|| format!("the gateway's answer to {path} is not what bramble expects"))
    }

    /// The gateway's base URL.
    pub(crate) fn base(&self) -> &str {
        &self.base
    }
}

/// The gateway's URL when no flag names one.
pub(crate) const DEFAULT_GATEWAY: &str = "http://127.0.0.1:8080";

/// A variable of the process environment (an empty one counts as unset).
fn environment(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The gateway's base URL: `--gateway`, else `$BRAMBLE_URL`, else `$OPENFAAS_URL`, else
/// [`DEFAULT_GATEWAY`]; without a trailing slash.
fn gateway_url(flag: Option<&str>, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<String> {
    let base = flag
        .map(str::to_owned)
        .or_else(|| env("BRAMBLE_URL"))
        .or_else(|| env("OPENFAAS_URL"))
        .unwrap_or_else(|| DEFAULT_GATEWAY.into())
        .trim_end_matches('/')
        .to_owned();
    if !base.starts_with("http://") && !base.starts_with("https://") {
        bail!("gateway {base:?} is not an http:// or https:// URL");
    }
    Ok(base)
}

/// Credentials from the environment, or from the local node's files (root only), and a hint
/// saying where they came from (never the values).
fn credentials(
    state_dir: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> (Option<(String, String)>, String) {
    if let (Some(user), Some(password)) = (env("BRAMBLE_USER"), env("BRAMBLE_PASSWORD")) {
        return (
            Some((user, password)),
            "from $BRAMBLE_USER and $BRAMBLE_PASSWORD".into(),
        );
    }
    let secrets = state_dir.join("secrets");
    let read =
        |name: &str| std::fs::read_to_string(secrets.join(name)).map(|s| s.trim().to_owned());
    match (read("basic-auth-user"), read("basic-auth-password")) {
        (Ok(user), Ok(password)) => (
            Some((user, password)),
            format!("read from {}", secrets.display()),
        ),
        (Err(e), _) | (_, Err(e)) => (
            None,
            format!(
                "none found: set $BRAMBLE_USER and $BRAMBLE_PASSWORD, or run as root on the board ({}: {e})",
                secrets.join("basic-auth-password").display()
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn the_gateway_flag_beats_bramble_url_beats_openfaas_url_beats_the_default() {
        let both = [
            ("BRAMBLE_URL", "http://bramble:1/"),
            ("OPENFAAS_URL", "http://openfaas:2"),
        ];
        assert_eq!(
            gateway_url(Some("http://flag:3/"), &env(&both)).unwrap(),
            "http://flag:3"
        );
        assert_eq!(gateway_url(None, &env(&both)).unwrap(), "http://bramble:1");
        assert_eq!(
            gateway_url(None, &env(&[("OPENFAAS_URL", "https://openfaas:2")])).unwrap(),
            "https://openfaas:2"
        );
        assert_eq!(gateway_url(None, &env(&[])).unwrap(), DEFAULT_GATEWAY);
        assert_eq!(DEFAULT_GATEWAY, "http://127.0.0.1:8080");
        let e = gateway_url(Some("pi.local:8080"), &env(&both)).unwrap_err();
        assert!(
            e.to_string().contains("\"pi.local:8080\" is not an http"),
            "{e}"
        );
    }

    #[test]
    fn credentials_come_from_the_environment_or_the_local_state_dir() {
        let dir = tempfile::tempdir().unwrap();
        let secrets = dir.path().join("secrets");
        std::fs::create_dir(&secrets).unwrap();
        std::fs::write(secrets.join("basic-auth-user"), "admin\n").unwrap();
        std::fs::write(secrets.join("basic-auth-password"), "file-pass\n").unwrap();

        let (auth, hint) = credentials(dir.path(), &env(&[]));
        assert_eq!(auth, Some(("admin".into(), "file-pass".into())));
        assert_eq!(hint, format!("read from {}", secrets.display()));

        let vars = [("BRAMBLE_USER", "ops"), ("BRAMBLE_PASSWORD", "env-pass")];
        let (auth, hint) = credentials(dir.path(), &env(&vars));
        assert_eq!(auth, Some(("ops".into(), "env-pass".into())));
        assert_eq!(hint, "from $BRAMBLE_USER and $BRAMBLE_PASSWORD");
        // Only one of the two variables: the files count.
        let (auth, _) = credentials(dir.path(), &env(&vars[..1]));
        assert_eq!(auth, Some(("admin".into(), "file-pass".into())));

        // No password file: no credentials, and the hint says which file and what to do.
        std::fs::remove_file(secrets.join("basic-auth-password")).unwrap();
        let (auth, hint) = credentials(dir.path(), &env(&[]));
        assert_eq!(auth, None);
        assert!(
            hint.contains("set $BRAMBLE_USER and $BRAMBLE_PASSWORD")
                && hint.contains(&secrets.join("basic-auth-password").display().to_string()),
            "{hint}"
        );
    }
}
