//! Reading async-nats JetStream errors: the server's error code, "no responders" and timeouts,
//! wherever in an error's chain they sit. One place, so every module classifies alike.

use async_nats::jetstream::context::{
    CreateStreamError, CreateStreamErrorKind, GetStreamError, GetStreamErrorKind, RequestError,
    RequestErrorKind,
};
use async_nats::jetstream::stream::{
    ConsumerError, ConsumerErrorKind, LastRawMessageError, LastRawMessageErrorKind,
};

/// Stream not found.
pub(crate) const STREAM_NOT_FOUND: u64 = 10059;
/// No message at that sequence (removed, or never written).
pub(crate) const NO_MESSAGE_FOUND: u64 = 10037;
/// JetStream cluster not available (no meta leader / no quorum).
pub(crate) const CLUSTER_NOT_AVAILABLE: u64 = 10008;
/// Insufficient resources (for example more replicas than JetStream servers).
pub(crate) const INSUFFICIENT_RESOURCES: u64 = 10023;
/// No suitable peers for placement.
pub(crate) const NO_SUITABLE_PEERS: u64 = 10005;

/// How an error ended, as far as JetStream tells.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cause {
    /// The server answered with this JetStream error code.
    Code(u64),
    /// Nobody answered the request (no responders): no leader for the asset, or no JetStream.
    NoResponders,
    /// No answer in time.
    TimedOut,
    /// Something else.
    Other,
}

/// The cause of an async-nats error, searched along its `source()` chain.
pub(crate) fn cause(error: &(dyn std::error::Error + 'static)) -> Cause {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = next {
        if let Some(js) = e.downcast_ref::<async_nats::jetstream::Error>() {
            return Cause::Code(js.error_code().0);
        }
        if let Some(e) = e.downcast_ref::<GetStreamError>()
            && let GetStreamErrorKind::JetStream(js) = e.kind()
        {
            return Cause::Code(js.error_code().0);
        }
        if let Some(e) = e.downcast_ref::<CreateStreamError>() {
            match e.kind() {
                CreateStreamErrorKind::JetStream(js) => return Cause::Code(js.error_code().0),
                CreateStreamErrorKind::TimedOut => return Cause::TimedOut,
                CreateStreamErrorKind::JetStreamUnavailable => return Cause::NoResponders,
                _ => {}
            }
        }
        if let Some(e) = e.downcast_ref::<LastRawMessageError>() {
            match e.kind() {
                LastRawMessageErrorKind::JetStream(js) => return Cause::Code(js.error_code().0),
                // The client turns this code into a kind of its own.
                LastRawMessageErrorKind::NoMessageFound => {
                    return Cause::Code(NO_MESSAGE_FOUND);
                }
                _ => {}
            }
        }
        if let Some(e) = e.downcast_ref::<ConsumerError>() {
            match e.kind() {
                ConsumerErrorKind::JetStream(js) => return Cause::Code(js.error_code().0),
                ConsumerErrorKind::TimedOut => return Cause::TimedOut,
                _ => {}
            }
        }
        if let Some(e) = e.downcast_ref::<RequestError>() {
            match e.kind() {
                RequestErrorKind::NoResponders => return Cause::NoResponders,
                RequestErrorKind::TimedOut => return Cause::TimedOut,
                _ => {}
            }
        }
        if let Some(e) = e.downcast_ref::<async_nats::RequestError>() {
            match e.kind() {
                async_nats::RequestErrorKind::NoResponders => return Cause::NoResponders,
                async_nats::RequestErrorKind::TimedOut => return Cause::TimedOut,
                _ => {}
            }
        }
        next = e.source();
    }
    Cause::Other
}

/// True when the cause means "the cluster cannot answer now" (no quorum, no leader).
pub(crate) fn is_unavailable(cause: Cause) -> bool {
    matches!(
        cause,
        Cause::NoResponders | Cause::TimedOut | Cause::Code(CLUSTER_NOT_AVAILABLE)
    )
}
