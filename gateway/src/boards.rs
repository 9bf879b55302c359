//! Board-to-board traffic of a cluster: a second listener, TLS under the cluster's CA.
//!
//! [`crate::Gateway::serve_boards`] serves the routes a cluster adds (the join handshake) and
//! the gateway's own internal invocation path on a listener of their own, with TLS: the board's
//! certificate as server certificate, and a client certificate the cluster CA signed asked of
//! every peer. A peer without one (a board that is joining and has no certificate yet) may
//! connect; the routes that only boards may use check [`BoardPeer::authenticated`].

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;

use crate::gateway::{Gateway, Shortcut, serve_connections};
use crate::provider::Provider;

/// How long a peer has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What every request of the board listener carries as an extension: whether the peer showed a
/// certificate the cluster CA signed (rustls checked it during the handshake).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BoardPeer {
    /// True when the peer is a board of the cluster.
    pub authenticated: bool,
}

impl<P: Provider> Gateway<P> {
    /// Serves `routes` (and later the internal invocation path) on `listener` with TLS
    /// (`tls` must verify client certificates against the cluster CA, and may allow peers
    /// without one) until `shutdown` resolves; drains like [`Gateway::serve`].
    pub async fn serve_boards(
        self: &Arc<Self>,
        listener: TcpListener,
        tls: Arc<rustls::ServerConfig>,
        routes: axum::Router,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let acceptor = TlsAcceptor::from(tls);
        let router = routes.layer(axum::middleware::from_fn(crate::api::log_request));
        serve_connections(
            &self.shared,
            listener,
            router,
            Shortcut::None,
            shutdown,
            move |stream| {
                let accept = acceptor.accept(stream);
                async move {
                    let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, accept)
                        .await
                        .map_err(|_| std::io::Error::other("TLS handshake timed out"))??;
                    let authenticated = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .is_some_and(|certs| !certs.is_empty());
                    Ok((stream, BoardPeer { authenticated }))
                }
            },
        )
        .await;
        Ok(())
    }
}
