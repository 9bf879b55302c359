//! OpenFaaS `constraints` (a deployment's `constraints`, faas-cli stack files' `constraints:`)
//! as typed values, and whether a board satisfies them.
//!
//! An entry is `KEY=VALUE`, `KEY==VALUE` or `KEY!=VALUE`, spaces around the operator allowed
//! (`node == pi1`). Keys:
//!
//! | key | means | also written |
//! |---|---|---|
//! | `node` | the board's name | `kubernetes.io/hostname`, `node.hostname` (Docker Swarm) |
//! | `arch` | the board's architecture: `arm64`, `arm` or `amd64` (also `aarch64`, `armhf`, `armv7`, `x86_64`) | `kubernetes.io/arch`, `beta.kubernetes.io/arch`, `node.platform.arch` |
//! | anything else | an operator label of the board (`zone=garage`, from `cluster.labels`) | `node.labels.KEY` |
//!
//! `!=` is satisfied by a board without that label. A function's constraints must all hold.

use std::fmt;

use super::input::Board;
use crate::names;
use crate::settings::Label;

/// What a constraint looks at.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Attribute {
    /// The board's name.
    Board,
    /// The board's architecture, normalised (`arm64`, `arm`, `amd64`).
    Arch,
    /// An operator label of the board.
    Label(String),
}

/// Equal or not equal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Op {
    /// `=` or `==`.
    Eq,
    /// `!=`.
    Ne,
}

/// One parsed constraint.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Constraint {
    /// What it looks at.
    pub attribute: Attribute,
    /// Equal or not.
    pub op: Op,
    /// The value (an architecture normalised).
    pub value: String,
}

/// An entry of `constraints` that parses to nothing: the entry as written and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("constraint {entry:?}: {reason}")]
pub struct ConstraintError {
    /// The entry as written.
    pub entry: String,
    /// What is wrong with it.
    pub reason: String,
}

/// Parses a deployment's `constraints`; the first entry that parses to nothing is the error.
pub fn parse_constraints(entries: &[String]) -> Result<Vec<Constraint>, ConstraintError> {
    entries.iter().map(|e| e.parse()).collect()
}

/// The architecture as constraints and boards name it (`arm64`, `arm`, `amd64`), from what
/// people write (`aarch64`, `armhf`, `armv7`, `x86_64`, case ignored); `None` if unknown.
pub fn normalise_arch(text: &str) -> Option<&'static str> {
    match text.trim().to_ascii_lowercase().as_str() {
        "arm64" | "aarch64" | "arm64/v8" | "armv8" => Some("arm64"),
        "arm" | "armhf" | "armv7" | "armv7l" | "arm/v7" | "armv6" | "armv6l" | "arm/v6" => {
            Some("arm")
        }
        "amd64" | "x86_64" | "x86-64" => Some("amd64"),
        _ => None,
    }
}

const HELP: &str = "write KEY=VALUE or KEY!=VALUE, e.g. node=pi1, arch=arm64, zone=garage";

impl std::str::FromStr for Constraint {
    type Err = ConstraintError;

    fn from_str(entry: &str) -> Result<Self, ConstraintError> {
        let refuse = |reason: String| ConstraintError {
            entry: entry.chars().take(200).collect(),
            reason,
        };
        let text = entry.trim();
        if text.is_empty() {
            return Err(refuse(format!("it is empty: {HELP}")));
        }
        let (key, op, value) = if let Some((k, v)) = text.split_once("!=") {
            (k, Op::Ne, v)
        } else if let Some((k, v)) = text.split_once("==") {
            (k, Op::Eq, v)
        } else if let Some((k, v)) = text.split_once('=') {
            (k, Op::Eq, v)
        } else {
            return Err(refuse(format!("it has no = or !=: {HELP}")));
        };
        let (key, value) = (key.trim(), value.trim());
        if key.is_empty() {
            return Err(refuse(format!("the key is empty: {HELP}")));
        }
        if value.is_empty() {
            return Err(refuse(format!("the value is empty: {HELP}")));
        }
        let attribute = match key {
            "node" | "kubernetes.io/hostname" | "node.hostname" => Attribute::Board,
            "arch" | "kubernetes.io/arch" | "beta.kubernetes.io/arch" | "node.platform.arch" => {
                Attribute::Arch
            }
            other => {
                let label = other.strip_prefix("node.labels.").unwrap_or(other);
                if !Label::valid_key(label) {
                    return Err(refuse(format!(
                        "{label:?} is not a label key: 1-63 characters of A-Z a-z 0-9 - _ . /"
                    )));
                }
                Attribute::Label(label.to_owned())
            }
        };
        let value = match &attribute {
            Attribute::Board => {
                names::validate("board", value).map_err(|e| refuse(e.to_string()))?;
                value.to_owned()
            }
            Attribute::Arch => normalise_arch(value)
                .ok_or_else(|| {
                    refuse(format!(
                        "{value:?} is not an architecture: arm64 (aarch64), arm (armhf, armv7) or amd64 (x86_64)"
                    ))
                })?
                .to_owned(),
            Attribute::Label(_) => {
                if !Label::valid_value(value) {
                    return Err(refuse(format!(
                        "{value:?} is not a label value: 1-63 characters of A-Z a-z 0-9 - _ ."
                    )));
                }
                value.to_owned()
            }
        };
        Ok(Constraint {
            attribute,
            op,
            value,
        })
    }
}

impl Constraint {
    /// Whether `board` satisfies it.
    pub fn matches(&self, board: &Board) -> bool {
        let actual = match &self.attribute {
            Attribute::Board => Some(board.name.as_str()),
            Attribute::Arch => Some(board.arch.as_str()),
            Attribute::Label(key) => board.labels.get(key).map(String::as_str),
        };
        let equal = actual == Some(self.value.as_str());
        match self.op {
            Op::Eq => equal,
            Op::Ne => !equal,
        }
    }
}

impl fmt::Display for Constraint {
    /// The normalised form: `node=pi1`, `arch!=arm`, `zone=garage`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = match &self.attribute {
            Attribute::Board => "node",
            Attribute::Arch => "arch",
            Attribute::Label(key) => key,
        };
        let op = match self.op {
            Op::Eq => "=",
            Op::Ne => "!=",
        };
        write!(f, "{key}{op}{}", self.value)
    }
}
