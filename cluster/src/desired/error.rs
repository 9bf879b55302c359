//! [`DesiredError`]: why a change of the desired state was refused or failed, with the HTTP
//! status the API answers, and how the engine's [`KvError`] maps to it.

use crate::identity::SealError;
use crate::kv::KvError;
use bramble_gateway::provider::ProviderError;

/// How many JetStream boards answer, as the board's membership sees them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quorum {
    /// JetStream boards heard from (alive).
    pub answering: usize,
    /// JetStream boards in the cluster.
    pub of: usize,
}

impl Quorum {
    /// Counted from a membership view: the JetStream boards, and those of them alive. `None`
    /// unless the view shows a majority missing — membership notices a silent board ~2-3 s
    /// after its last heartbeat, after the first writes already failed, and "3 of 3 answer"
    /// next to "no quorum" would mislead.
    pub fn of_view(view: &crate::membership::View) -> Option<Quorum> {
        let jetstream: Vec<_> = view
            .boards
            .values()
            .filter(|b| b.info.as_ref().is_some_and(|i| i.jetstream))
            .collect();
        let quorum = Quorum {
            answering: jetstream
                .iter()
                .filter(|b| b.state == crate::membership::BoardState::Alive)
                .count(),
            of: jetstream.len(),
        };
        (quorum.of > 0 && quorum.answering * 2 <= quorum.of).then_some(quorum)
    }
}

/// A refused or failed change (or read) of the desired state.
#[derive(Debug, thiserror::Error)]
pub enum DesiredError {
    /// 400: the request is not valid; `field` is the JSON field at fault.
    #[error("{field}: {message}")]
    Invalid {
        /// The field (`service`, `secrets[0]`).
        field: String,
        /// What is wrong and what would be right.
        message: String,
    },
    /// 404.
    #[error("{0}")]
    NotFound(String),
    /// 409: it exists already, or another board changed it first; nothing was changed.
    #[error("{0}")]
    Conflict(String),
    /// 503: no quorum; nothing was changed.
    #[error("the cluster has no quorum{}; nothing was changed", match quorum { Some(q) => format!(" ({} of {} JetStream boards answer)", q.answering, q.of), None => String::new() })]
    NoQuorum {
        /// The JetStream boards answering, when the board's membership knows them.
        quorum: Option<Quorum>,
    },
    /// 503: the write was sent but not confirmed in time: it may still be applied.
    #[error(
        "{what}: the cluster did not confirm the change in time; it may still be applied — check with list before retrying"
    )]
    Unconfirmed {
        /// What was being changed (`deploying function hello.openfaas-fn`).
        what: String,
    },
    /// 500: a stored record does not parse.
    #[error("{bucket}/{key} holds a record that does not parse ({reason})")]
    Corrupt {
        /// The bucket.
        bucket: &'static str,
        /// The key.
        key: String,
        /// The parser's message.
        reason: String,
    },
    /// 500: a sealed secret does not open with this cluster's key.
    #[error("secret {key} does not open")]
    Sealed {
        /// The secret's KV key.
        key: String,
        /// Why.
        #[source]
        source: SealError,
    },
    /// 500: any other failure of the cluster's store.
    #[error("{what}: the cluster's store failed")]
    Store {
        /// What was being done.
        what: String,
        /// Why.
        #[source]
        source: KvError,
    },
}

impl DesiredError {
    /// A 400 about `field`.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> DesiredError {
        DesiredError::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The HTTP status the API answers with.
    pub fn status(&self) -> http::StatusCode {
        use http::StatusCode;
        match self {
            DesiredError::Invalid { .. } => StatusCode::BAD_REQUEST,
            DesiredError::NotFound(_) => StatusCode::NOT_FOUND,
            DesiredError::Conflict(_) => StatusCode::CONFLICT,
            DesiredError::NoQuorum { .. } | DesiredError::Unconfirmed { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            DesiredError::Corrupt { .. }
            | DesiredError::Sealed { .. }
            | DesiredError::Store { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// True for the 503s: the cluster could not take the change now.
    pub fn is_unavailable(&self) -> bool {
        self.status() == http::StatusCode::SERVICE_UNAVAILABLE
    }

    /// Maps a KV failure of `what` (`deploying function hello.openfaas-fn`):
    /// - a lost compare-and-set → 409 with `conflict` as the message;
    /// - no quorum → 503, nothing changed (with `quorum` when known);
    /// - a timeout → 503 "may still be applied" when `write` (the write may have been sent),
    ///   else 503 no quorum (a read timed out: nothing was changed);
    /// - a name KV refuses → 400 (the keys are checked before, so this is a bug's net);
    /// - anything else → 500 with the KV error as its source.
    pub fn from_kv(
        e: KvError,
        what: impl Into<String>,
        write: bool,
        conflict: impl FnOnce() -> String,
        quorum: Option<Quorum>,
    ) -> DesiredError {
        match e {
            KvError::Conflict { .. } => DesiredError::Conflict(conflict()),
            KvError::NoQuorum { .. } => DesiredError::NoQuorum { quorum },
            KvError::Timeout { .. } if write => DesiredError::Unconfirmed { what: what.into() },
            KvError::Timeout { .. } => DesiredError::NoQuorum { quorum },
            KvError::InvalidName { ref name, .. } => {
                DesiredError::invalid("name", format!("{name:?} cannot be stored: {e}"))
            }
            other => DesiredError::Store {
                what: what.into(),
                source: other,
            },
        }
    }
}

impl From<DesiredError> for ProviderError {
    fn from(e: DesiredError) -> ProviderError {
        match e {
            DesiredError::Invalid { field, message } => ProviderError::invalid(field, message),
            DesiredError::NotFound(m) => ProviderError::NotFound(m),
            DesiredError::Conflict(m) => ProviderError::Conflict(m),
            e @ (DesiredError::NoQuorum { .. } | DesiredError::Unconfirmed { .. }) => {
                ProviderError::Unavailable(e.to_string())
            }
            e @ (DesiredError::Corrupt { .. }
            | DesiredError::Sealed { .. }
            | DesiredError::Store { .. }) => ProviderError::Internal(bramble_base::error_chain(&e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn map(e: KvError, write: bool) -> DesiredError {
        DesiredError::from_kv(
            e,
            "deploying function hello.openfaas-fn",
            write,
            || "function hello.openfaas-fn already exists".to_owned(),
            Some(Quorum {
                answering: 1,
                of: 3,
            }),
        )
    }

    #[test]
    fn kv_errors_map_to_statuses_and_clear_messages() {
        let conflict = map(
            KvError::Conflict {
                bucket: "functions".into(),
                key: "openfaas-fn.hello".into(),
                expected: None,
            },
            true,
        );
        assert_eq!(conflict.status(), http::StatusCode::CONFLICT);
        assert_eq!(
            conflict.to_string(),
            "function hello.openfaas-fn already exists"
        );

        let no_quorum = map(
            KvError::NoQuorum {
                bucket: "functions".into(),
            },
            true,
        );
        assert_eq!(no_quorum.status(), http::StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            no_quorum.to_string(),
            "the cluster has no quorum (1 of 3 JetStream boards answer); nothing was changed"
        );
        let unknown = DesiredError::NoQuorum { quorum: None };
        assert_eq!(
            unknown.to_string(),
            "the cluster has no quorum; nothing was changed"
        );

        let timeout = || KvError::Timeout {
            bucket: "functions".into(),
            waited: Duration::from_secs(2),
        };
        let maybe = map(timeout(), true);
        assert!(matches!(maybe, DesiredError::Unconfirmed { .. }));
        assert_eq!(maybe.status(), http::StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            maybe.to_string(),
            "deploying function hello.openfaas-fn: the cluster did not confirm the change in time; it may still be applied — check with list before retrying"
        );
        assert!(matches!(
            map(timeout(), false),
            DesiredError::NoQuorum { .. }
        ));

        let other = map(
            KvError::NoBucket {
                bucket: "functions".into(),
            },
            true,
        );
        assert_eq!(other.status(), http::StatusCode::INTERNAL_SERVER_ERROR);
        // The message does not repeat its source's; the provider error carries both.
        assert_eq!(
            other.to_string(),
            "deploying function hello.openfaas-fn: the cluster's store failed"
        );
        let provider = ProviderError::from(other);
        assert_eq!(
            provider.to_string(),
            "deploying function hello.openfaas-fn: the cluster's store failed: bucket functions does not exist"
        );
    }

    #[test]
    fn quorum_is_told_only_when_membership_shows_a_majority_missing() {
        use crate::membership::{BoardInfo, BoardState, BoardView, View};
        let board = |name: &str, jetstream: bool, state: BoardState| {
            let info: BoardInfo = serde_json::from_value(serde_json::json!({
                "name": name, "address": "10.0.0.1", "arch": "arm64", "version": "0",
                "nats_version": "2.9.10", "memory": {"total": 1, "used": 0}, "functions": 0,
                "hardware": {"i2c_buses": [], "one_wire": []}, "labels": {},
                "started_at_ms": 1, "jetstream": jetstream, "platform": "linux/arm64",
                "api_port": 8080, "board_port": 7425, "route_port": 7424, "leaving": false
            }))
            .unwrap();
            let view = BoardView {
                info: Some(info),
                state,
                last_seen: None,
            };
            (name.to_owned(), view)
        };
        let view = |boards: Vec<(String, BoardView)>| View {
            boards: boards.into_iter().collect(),
            records_loaded: true,
        };
        let all_alive = view(vec![
            board("pi1", true, BoardState::Alive),
            board("pi2", true, BoardState::Alive),
            board("pi3", true, BoardState::Alive),
        ]);
        assert_eq!(Quorum::of_view(&all_alive), None);
        let cut_off = view(vec![
            board("pi1", true, BoardState::Alive),
            board("pi2", true, BoardState::Suspect),
            board("pi3", true, BoardState::Dead),
            board("zero", false, BoardState::Alive),
        ]);
        assert_eq!(
            Quorum::of_view(&cut_off),
            Some(Quorum {
                answering: 1,
                of: 3
            })
        );
        let two = view(vec![
            board("pi1", true, BoardState::Alive),
            board("pi2", true, BoardState::Dead),
        ]);
        assert_eq!(
            Quorum::of_view(&two),
            Some(Quorum {
                answering: 1,
                of: 2
            })
        );
        assert_eq!(Quorum::of_view(&View::default()), None);
    }

    #[test]
    fn provider_errors_keep_the_status() {
        let cases = [
            DesiredError::invalid("service", "bad"),
            DesiredError::NotFound("function x.y not found".into()),
            DesiredError::Conflict("x".into()),
            DesiredError::NoQuorum { quorum: None },
            DesiredError::Unconfirmed { what: "x".into() },
            DesiredError::Corrupt {
                bucket: "functions",
                key: "k".into(),
                reason: "r".into(),
            },
        ];
        for e in cases {
            let status = e.status();
            let message = e.to_string();
            let provider = ProviderError::from(e);
            assert_eq!(provider.status(), status);
            assert_eq!(provider.to_string(), message);
        }
    }
}
