//! Registry credentials from a Docker `config.json` (what `docker login`, `faas-cli
//! registry-login` and `skopeo login` write).
//!
//! Supported entry forms under `auths`: `{"auth": base64("user:password")}` and
//! `{"username": .., "password": ..}`. Keys may be a bare host (`ghcr.io`), a host with port,
//! or a URL (`https://index.docker.io/v1/`, Docker Hub's historical key). Credential helpers
//! (`credsStore`, `credHelpers`) are external programs bramble does not run; an entry that only
//! names a helper is reported as missing credentials with that explanation.

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine as _;
use serde::Deserialize;

use crate::error::{Error, Result};

/// Credentials for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print a password, not even in debug logs.
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

#[derive(Debug, Default, Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
}

#[derive(Debug, Default, Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

/// The credentials a Docker config file holds, keyed by normalised registry host.
#[derive(Clone, Debug, Default)]
pub struct CredentialStore {
    by_host: BTreeMap<String, Credentials>,
}

impl CredentialStore {
    /// Reads a Docker `config.json`. A missing file is an empty store.
    pub fn load(path: &Path) -> Result<Self> {
        let text = match std::fs::read(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => {
                return Err(Error::io(
                    format!("reading registry credentials {}", path.display()),
                    e,
                ));
            }
        };
        Self::parse(&text).map_err(|reason| {
            Error::Invalid(format!("registry credentials {}: {reason}", path.display()))
        })
    }

    /// Parses the contents of a Docker `config.json`.
    pub fn parse(text: &[u8]) -> std::result::Result<Self, String> {
        let config: DockerConfig = serde_json::from_slice(text).map_err(|e| {
            // A type error quotes the value it met, which may be a password: say where instead.
            if e.classify() == serde_json::error::Category::Data {
                format!(
                    "not a Docker config file: unexpected value at line {} column {} (expected {{\"auths\": {{HOST: {{\"auth\": BASE64}}}}}})",
                    e.line(),
                    e.column()
                )
            } else {
                format!("not a Docker config file: {e}")
            }
        })?;
        let mut by_host = BTreeMap::new();
        for (key, entry) in config.auths {
            let host = normalise_host(&key);
            let credentials = match (entry.auth, entry.username, entry.password) {
                (Some(auth), _, _) if !auth.is_empty() => {
                    decode_auth(&auth).map_err(|e| format!("entry {key:?}: {e}"))?
                }
                (_, Some(username), Some(password)) => Credentials { username, password },
                // An entry without secrets (only a credential helper knows them).
                _ => continue,
            };
            by_host.insert(host, credentials);
        }
        Ok(Self { by_host })
    }

    /// Credentials for a registry host as it appears in an image reference (`docker.io`,
    /// `ghcr.io`, `127.0.0.1:5000`).
    pub fn lookup(&self, registry: &str) -> Option<&Credentials> {
        self.by_host.get(&normalise_host(registry))
    }
}

fn decode_auth(auth: &str) -> std::result::Result<Credentials, String> {
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(auth.trim())
        .map_err(|_| "\"auth\" is not base64".to_owned())?;
    let decoded = String::from_utf8(decoded).map_err(|_| "\"auth\" is not UTF-8".to_owned())?;
    let (username, password) = decoded
        .split_once(':')
        .ok_or("\"auth\" is not base64(\"user:password\")")?;
    Ok(Credentials {
        username: username.to_owned(),
        password: password.to_owned(),
    })
}

/// `https://index.docker.io/v1/` → `docker.io`; `http://host:5000/` → `host:5000`.
fn normalise_host(key: &str) -> String {
    let without_scheme = key.split_once("://").map_or(key, |(_, rest)| rest);
    let host = without_scheme
        .split('/')
        .next()
        .unwrap_or(without_scheme)
        .to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".to_owned()
        }
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_supported_form() {
        let auth = base64::engine::general_purpose::STANDARD.encode("alice:s3cr:et");
        let text = format!(
            r#"{{"auths": {{
                "https://index.docker.io/v1/": {{"auth": "{auth}"}},
                "127.0.0.1:5000": {{"username": "bob", "password": "pw"}},
                "ghcr.io": {{}}
            }}, "credsStore": "desktop"}}"#
        );
        let store = CredentialStore::parse(text.as_bytes()).unwrap();
        let hub = store.lookup("docker.io").unwrap();
        assert_eq!(
            (hub.username.as_str(), hub.password.as_str()),
            ("alice", "s3cr:et")
        );
        assert_eq!(store.lookup("127.0.0.1:5000").unwrap().username, "bob");
        assert!(store.lookup("ghcr.io").is_none());
    }

    #[test]
    fn bad_files_are_explained() {
        assert!(
            CredentialStore::parse(b"nope")
                .unwrap_err()
                .contains("not a Docker config")
        );
        let e = CredentialStore::parse(br#"{"auths":{"x":{"auth":"%%%"}}}"#).unwrap_err();
        assert!(e.contains("not base64"), "{e}");
    }

    #[test]
    fn passwords_never_reach_debug_output() {
        let c = Credentials {
            username: "u".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn missing_file_is_an_empty_store() {
        let store = CredentialStore::load(Path::new("/nonexistent/config.json")).unwrap();
        assert!(store.lookup("docker.io").is_none());
    }
}
