//! Readiness of a function replica: it is ready when `GET /_/health` answers 2xx — or, for a
//! function without that endpoint (404), when `GET /` answers anything but a server error.
//! A running task is not enough: of-watchdog accepts connections before its upstream listens
//! (openfaas/of-watchdog#92), which is how faasd serves 500s right after a cold start.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Time allowed for one probe request.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Polling interval: 1 ms during the first [`FAST_POLLING`], then doubling up to this.
const MAX_INTERVAL: Duration = Duration::from_millis(100);
/// How long readiness is polled every millisecond.
const FAST_POLLING: Duration = Duration::from_millis(50);

/// Outcome of one probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    Ready,
    /// The function answered, but not healthy (status code) — or did not answer (`None`).
    NotReady(Option<u16>),
}

/// Probes once.
pub async fn probe(addr: SocketAddr) -> Probe {
    match status_of(addr, "/_/health").await {
        Some(code) if (200..300).contains(&code) => Probe::Ready,
        Some(404) => match status_of(addr, "/").await {
            Some(code) if code < 500 => Probe::Ready,
            other => Probe::NotReady(other),
        },
        other => Probe::NotReady(other),
    }
}

/// Probes until ready or `deadline`; returns the last failure on timeout.
pub async fn wait_ready(addr: SocketAddr, deadline: Instant) -> Result<Duration, Probe> {
    let started = Instant::now();
    let mut interval = Duration::from_millis(1);
    loop {
        match probe(addr).await {
            Probe::Ready => return Ok(started.elapsed()),
            failure if Instant::now() + interval > deadline => return Err(failure),
            _ => {}
        }
        tokio::time::sleep(interval).await;
        // Most functions are up within tens of milliseconds: poll every millisecond while a
        // cold request is likely waiting, then back off for slow starters.
        if started.elapsed() > FAST_POLLING {
            interval = (interval * 2).min(MAX_INTERVAL);
        }
    }
}

/// The status code of `GET path`, or `None` when nothing answered.
async fn status_of(addr: SocketAddr, path: &str) -> Option<u16> {
    tokio::time::timeout(PROBE_TIMEOUT, async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: bramble-probe\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut head = [0u8; 32];
        let mut len = 0;
        while len < 12 {
            let n = stream.read(&mut head[len..]).await.ok()?;
            if n == 0 {
                break;
            }
            len += n;
        }
        // "HTTP/1.1 200 OK"
        let line = std::str::from_utf8(&head[..len]).ok()?;
        line.strip_prefix("HTTP/1.")?.get(2..5)?.parse().ok()
    })
    .await
    .ok()
    .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A server answering each path with a fixed status.
    async fn server(health: u16, root: u16) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 1024];
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    let req = String::from_utf8_lossy(&buf[..n]);
                    let code = if req.starts_with("GET /_/health") {
                        health
                    } else {
                        root
                    };
                    let _ = s
                        .write_all(
                            format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\n\r\n").as_bytes(),
                        )
                        .await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn health_endpoint_decides_and_root_is_the_fallback() {
        assert_eq!(probe(server(200, 500).await).await, Probe::Ready);
        assert_eq!(
            probe(server(503, 200).await).await,
            Probe::NotReady(Some(503))
        );
        assert_eq!(probe(server(404, 200).await).await, Probe::Ready);
        assert_eq!(probe(server(404, 302).await).await, Probe::Ready);
        assert_eq!(
            probe(server(404, 502).await).await,
            Probe::NotReady(Some(502))
        );
    }

    #[tokio::test]
    async fn nothing_listening_is_not_ready_and_waiting_times_out() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        assert_eq!(probe(addr).await, Probe::NotReady(None));
        let started = Instant::now();
        let r = wait_ready(addr, Instant::now() + Duration::from_millis(200)).await;
        assert_eq!(r, Err(Probe::NotReady(None)));
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
