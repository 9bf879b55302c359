//! The `[cluster]` section of a node's configuration, as typed values.
//!
//! Every value is parsed once (from the file, an environment variable or a flag alike: each
//! type is `FromStr` and (de)serialises as the same text), so nothing downstream re-parses a
//! string. The address and ports a board was given when it formed or joined a cluster are kept
//! in its cluster state (`<state_dir>/cluster/node.json`) and win over these afterwards.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::identity::JoinToken;
use crate::names;

/// Default port of the board-to-board listener (TLS under the cluster CA).
pub const DEFAULT_BOARD_PORT: u16 = 7425;

/// The `[cluster]` section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// This board's name in a cluster (default: the host name, made a valid name).
    pub board: Option<String>,
    /// This board's LAN address, as the other boards reach it (default: the address of the
    /// interface with the default route, else the first LAN address).
    pub address: Option<IpAddr>,
    /// Port of the board-to-board listener (TLS).
    pub board_port: u16,
    /// Port nats-server's routes listen on, on the board's address.
    pub route_port: u16,
    /// Labels placement constraints can name (`zone=garage`).
    pub labels: Vec<Label>,
    /// A board silent this long is dead: its functions are placed elsewhere.
    #[serde(with = "bramble_base::duration_text")]
    pub dead_after: Duration,
    /// How many boards carry JetStream (the shared state): 3 or 5.
    pub max_jetstream: u8,
    /// The nats-server executable (a bare name is looked up on `PATH`).
    pub nats_server: PathBuf,
    /// Join this cluster at start when the board is in none: `TOKEN ADDRESS`, as
    /// `bramble cluster init` prints it (the SD image's first boot sets it).
    pub join: Option<JoinCommand>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            board: None,
            address: None,
            board_port: DEFAULT_BOARD_PORT,
            route_port: crate::engine::config::DEFAULT_ROUTE_PORT,
            labels: Vec::new(),
            dead_after: Duration::from_secs(10),
            max_jetstream: 3,
            nats_server: PathBuf::from("nats-server"),
            join: None,
        }
    }
}

/// A configuration problem: the key (below `cluster.`) and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("cluster.{key}: {message}")]
pub struct SettingError {
    /// The key.
    pub key: &'static str,
    /// What is wrong.
    pub message: String,
}

impl ClusterConfig {
    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> Result<(), SettingError> {
        let invalid = |key, message: String| Err(SettingError { key, message });
        if let Some(board) = &self.board
            && let Err(e) = names::validate("board", board)
        {
            return invalid("board", e.to_string());
        }
        if let Some(address) = self.address
            && (address.is_unspecified() || address.is_multicast())
        {
            return invalid(
                "address",
                format!("{address} is not an address other boards can reach"),
            );
        }
        for (key, port) in [
            ("board_port", self.board_port),
            ("route_port", self.route_port),
        ] {
            if port == 0 {
                return invalid(key, "must be a port number, not 0".into());
            }
        }
        if self.board_port == self.route_port {
            return invalid(
                "board_port",
                format!("{} is the route port too", self.board_port),
            );
        }
        if ![3, 5].contains(&self.max_jetstream) {
            return invalid(
                "max_jetstream",
                format!(
                    "{} boards cannot carry JetStream: 3 or 5 (an odd number, for a majority)",
                    self.max_jetstream
                ),
            );
        }
        let heartbeat = crate::membership::MembershipConfig::default().heartbeat;
        if self.dead_after <= heartbeat * 3 {
            return invalid(
                "dead_after",
                format!(
                    "{} is too short: boards heartbeat every {}, give at least 4",
                    humantime::format_duration(self.dead_after),
                    humantime::format_duration(heartbeat)
                ),
            );
        }
        let mut seen = std::collections::BTreeSet::new();
        if let Some(twice) = self.labels.iter().find(|l| !seen.insert(&l.key)) {
            return invalid("labels", format!("label {} is set twice", twice.key));
        }
        Ok(())
    }
}

/// An operator's label on a board: `KEY=VALUE`, both made of `A-Z a-z 0-9 - _ .` (and `/` in
/// the key, as in `topology.kubernetes.io/zone`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Label {
    /// The key.
    pub key: String,
    /// The value.
    pub value: String,
}

impl Label {
    /// Whether `key` can be a label's key: 1-63 characters of `A-Z a-z 0-9 - _ . /`.
    pub fn valid_key(key: &str) -> bool {
        label_text(key, true)
    }

    /// Whether `value` can be a label's value: 1-63 characters of `A-Z a-z 0-9 - _ .`.
    pub fn valid_value(value: &str) -> bool {
        label_text(value, false)
    }
}

fn label_text(s: &str, slash: bool) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.') || (slash && b == b'/')
        })
}

impl FromStr for Label {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let Some((key, value)) = text.split_once('=') else {
            return Err(format!(
                "{text:?} is not a label: write KEY=VALUE, e.g. zone=garage"
            ));
        };
        let (key, value) = (key.trim(), value.trim());
        if !Label::valid_key(key) || !Label::valid_value(value) {
            return Err(format!(
                "{text:?} is not a label: KEY and VALUE are 1-63 characters of A-Z a-z 0-9 - _ . (and / in the key)"
            ));
        }
        Ok(Label {
            key: key.to_owned(),
            value: value.to_owned(),
        })
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.key, self.value)
    }
}

/// `TOKEN ADDRESS`: what `bramble cluster init` prints for other boards to join with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinCommand {
    /// The join token.
    pub token: JoinToken,
    /// The API address of a board of the cluster: `HOST:PORT` or `http://HOST:PORT`.
    pub address: String,
}

impl FromStr for JoinCommand {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let mut words = text.split_whitespace();
        let (Some(token), Some(address), None) = (words.next(), words.next(), words.next()) else {
            return Err(format!(
                "{text:?} is not a join command: write \"TOKEN ADDRESS\" as `bramble cluster init` printed it"
            ));
        };
        let token = token.parse::<JoinToken>().map_err(|e| e.to_string())?;
        crate::node::join::api_url(address)?;
        Ok(JoinCommand {
            token,
            address: address.to_owned(),
        })
    }
}

impl fmt::Display for JoinCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.token, self.address)
    }
}

/// Serialises through `Display`, deserialises through `FromStr`.
macro_rules! text_serde {
    ($($type:ty),+) => {$(
        impl Serialize for $type {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $type {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    )+};
}

text_serde!(Label, JoinCommand);

/// A board name from a host name: lowercase, characters other than `a-z 0-9 -` become `-`,
/// cut to 63 characters; `board` when nothing usable is left.
pub fn board_name_from_host(host: &str) -> String {
    let first = host.split('.').next().unwrap_or_default();
    let mut name: String = first
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .take(names::MAX_LEN)
        .collect();
    name = name.trim_matches('-').to_owned();
    if names::validate("board", &name).is_ok() {
        name
    } else {
        "board".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_name_their_key() {
        ClusterConfig::default().validate().unwrap();
        let bad = |c: ClusterConfig, key: &str| {
            let e = c.validate().unwrap_err();
            assert_eq!(e.key, key, "{e}");
            assert!(
                e.to_string().starts_with(&format!("cluster.{key}: ")),
                "{e}"
            );
        };
        bad(
            ClusterConfig {
                max_jetstream: 4,
                ..Default::default()
            },
            "max_jetstream",
        );
        bad(
            ClusterConfig {
                dead_after: Duration::from_secs(2),
                ..Default::default()
            },
            "dead_after",
        );
        bad(
            ClusterConfig {
                board: Some("Pi_1".into()),
                ..Default::default()
            },
            "board",
        );
        bad(
            ClusterConfig {
                board_port: 7424,
                ..Default::default()
            },
            "board_port",
        );
        bad(
            ClusterConfig {
                address: Some("0.0.0.0".parse().unwrap()),
                ..Default::default()
            },
            "address",
        );
        bad(
            ClusterConfig {
                labels: vec!["zone=a".parse().unwrap(), "zone=b".parse().unwrap()],
                ..Default::default()
            },
            "labels",
        );
    }

    #[test]
    fn labels_and_join_commands_read_and_print_back() {
        let label: Label = "zone=garage".parse().unwrap();
        assert_eq!(
            (label.key.as_str(), label.value.as_str()),
            ("zone", "garage")
        );
        assert_eq!(label.to_string(), "zone=garage");
        for bad in ["zone", "=x", "zone=", "zone=a b", "a=b=c"] {
            assert!(bad.parse::<Label>().is_err(), "{bad}");
        }
        let identity = crate::identity::ClusterIdentity::init("shelf").unwrap();
        let token = identity.join_token().unwrap();
        let text = format!("{token} 10.0.0.1:8080");
        let join: JoinCommand = text.parse().unwrap();
        assert_eq!(join.to_string(), text);
        assert_eq!(join.address, "10.0.0.1:8080");
        let e = "justatoken".parse::<JoinCommand>().unwrap_err();
        assert!(e.contains("TOKEN ADDRESS"), "{e}");
        let e = format!("{token} ftp://x")
            .parse::<JoinCommand>()
            .unwrap_err();
        assert!(e.contains("ftp://x"), "{e}");
        let e = "bramble1.x.AAAA 10.0.0.1:8080"
            .parse::<JoinCommand>()
            .unwrap_err();
        assert!(e.contains("join token"), "{e}");
    }

    #[test]
    fn board_names_come_from_host_names() {
        assert_eq!(board_name_from_host("Pi-Kitchen.local"), "pi-kitchen");
        assert_eq!(board_name_from_host("raspberrypi"), "raspberrypi");
        assert_eq!(board_name_from_host("my_pi"), "my-pi");
        assert_eq!(board_name_from_host("---"), "board");
        assert_eq!(board_name_from_host(""), "board");
    }
}
