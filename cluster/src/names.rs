//! Names bramble puts into NATS subjects, server names and file names: boards, clusters,
//! buckets, namespaces, functions.

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} name {name:?} is not valid: {reason}")]
pub struct NameError {
    /// What the name names ("board", "cluster", ...).
    pub what: &'static str,
    /// The refused name (cut to 80 characters).
    pub name: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// Longest name accepted (NATS server names and subject tokens have no small limit, but a
/// board name also ends up in file names and log lines).
pub const MAX_LEN: usize = 63;

/// Checks a name: 1–63 characters of `a-z`, `0-9` and `-`, starting with a letter or digit and
/// not ending with `-`. Such a name is safe as a NATS subject token, a server name, a
/// configuration-file string and a file name.
pub fn validate(what: &'static str, name: &str) -> Result<(), NameError> {
    let refuse = |reason| NameError {
        what,
        name: name.chars().take(80).collect(),
        reason,
    };
    if name.is_empty() {
        return Err(refuse("it is empty"));
    }
    if name.len() > MAX_LEN {
        return Err(refuse("it is longer than 63 characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(refuse(
            "only lowercase letters a-z, digits and '-' are allowed",
        ));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err(refuse("it must not start or end with '-'"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_board_like_names() {
        for name in ["pi1", "garage-pi-5", "a", "0", &"x".repeat(63)] {
            validate("board", name).unwrap();
        }
    }

    #[test]
    fn refuses_what_would_break_a_subject_or_a_config_file() {
        for name in [
            "",
            "Pi1",
            "pi.1",
            "pi*",
            "pi>",
            "pi 1",
            "-pi",
            "pi-",
            "pi\"",
            "pi_1",
            "pï",
            &"x".repeat(64),
        ] {
            let err = validate("board", name).unwrap_err();
            assert!(err.to_string().starts_with("board name "), "{err}");
        }
    }
}
