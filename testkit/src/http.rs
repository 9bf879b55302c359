//! A minimal HTTP/1.1 client for tests: one request per connection, whole body read.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use std::path::Path;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

/// A response, with header names lowercased.
#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as (lossy) text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// `Ok` when the status is `status`; otherwise an error naming `what`, the status and the
    /// body.
    pub fn expect(&self, status: u16, what: &str) -> Result<(), String> {
        if self.status == status {
            Ok(())
        } else {
            Err(format!(
                "{what}: expected {status}, got {} {}",
                self.status,
                self.text()
            ))
        }
    }
}

/// Sends one request and reads the whole response, within `timeout`.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> std::io::Result<Response> {
    let target = format!("http://{addr}{path}");
    exchange(
        TcpStream::connect(addr),
        &addr.to_string(),
        &target,
        (method, path, headers, body),
        timeout,
    )
    .await
}

/// [`request`] over a Unix socket (the hardware broker's, the containerd-less way to test
/// what a function sees).
pub async fn request_unix(
    socket: &Path,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> std::io::Result<Response> {
    let target = format!("unix:{}{path}", socket.display());
    exchange(
        UnixStream::connect(socket),
        "localhost",
        &target,
        (method, path, headers, body),
        timeout,
    )
    .await
}

type Parts<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], &'a [u8]);

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    connect: impl Future<Output = std::io::Result<S>>,
    host: &str,
    target: &str,
    (method, path, headers, body): Parts<'_>,
    timeout: Duration,
) -> std::io::Result<Response> {
    tokio::time::timeout(timeout, async {
        let mut stream = connect.await?;
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).await?;
        // A server may answer before the body is all sent (413 for a body over its limit) and
        // close: like curl, read the answer it sent instead of failing on the write.
        let unsent = match stream.write_all(body).await {
            Ok(()) => None,
            Err(e) if matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset) => {
                Some(e)
            }
            Err(e) => return Err(e),
        };
        // Until the server closes, or the body its Content-Length announces is complete (a
        // server may keep the connection open despite `Connection: close`: chromedriver).
        let mut raw = Vec::new();
        let mut chunk = vec![0u8; 16 * 1024];
        loop {
            let n = match stream.read(&mut chunk).await {
                Ok(n) => n,
                // Reset after its early answer: what was read is the answer.
                Err(e) if unsent.is_some() && !raw.is_empty() && e.kind() == ErrorKind::ConnectionReset => 0,
                Err(e) => return Err(unsent.unwrap_or(e)),
            };
            if n == 0 {
                break;
            }
            raw.extend_from_slice(&chunk[..n]);
            if complete_length(&raw).is_some_and(|len| raw.len() >= len) {
                break;
            }
        }
        match unsent {
            Some(e) if raw.is_empty() => Err(e),
            _ => parse(&raw),
        }
    })
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, format!("{method} {target}: no answer within {timeout:?}")))?
}

/// `GET` with a 10 s timeout.
pub async fn get(addr: SocketAddr, path: &str) -> std::io::Result<Response> {
    request(addr, "GET", path, &[], b"", Duration::from_secs(10)).await
}

/// Polls `GET /_/health` until it answers 200 — the function's readiness signal — or
/// `timeout` passes. Returns how long it took.
pub async fn wait_healthy(addr: SocketAddr, timeout: Duration) -> std::io::Result<Duration> {
    let started = Instant::now();
    let mut delay = Duration::from_millis(1);
    loop {
        match request(addr, "GET", "/_/health", &[], b"", Duration::from_secs(2)).await {
            Ok(r) if r.status == 200 => return Ok(started.elapsed()),
            result => {
                if started.elapsed() > timeout {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!(
                            "http://{addr}/_/health not healthy within {timeout:?} (last: {result:?})"
                        ),
                    ));
                }
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(50));
    }
}

/// The length of the whole response when its head is in `raw` and announces a
/// `Content-Length` (head included); `None` otherwise.
fn complete_length(raw: &[u8]) -> Option<usize> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let length = head.split("\r\n").skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse::<usize>().ok())?
    })?;
    Some(end + 4 + length)
}

fn parse(raw: &[u8]) -> std::io::Result<Response> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| bad("headers are not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or_else(|| bad("no status line"))?;
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    if chunked {
        body = dechunk(&body).ok_or_else(|| bad("bad chunked body"))?;
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

/// A port on 127.0.0.1 that was free a moment ago (for a server the test starts; it may be
/// taken by then, so the server's own log must confirm that it bound it).
pub(crate) fn free_loopback_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| crate::procfs::context("binding 127.0.0.1:0 to find a free port", &e))?;
    Ok(listener.local_addr()?.port())
}

/// A blocking `GET path` over plain HTTP/1.1 with short timeouts (for readiness probes of
/// servers started outside a runtime); returns the status code, or an error when the peer
/// does not answer HTTP.
pub(crate) fn get_status(addr: SocketAddr, path: &str) -> std::io::Result<u16> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: bramble-testkit\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let head = String::from_utf8_lossy(&response[..response.len().min(64)]).into_owned();
    head.strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("not an HTTP response: {head:?}"),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked_responses() {
        let plain = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: b\r\n\r\nhi").unwrap();
        assert_eq!(
            (plain.status, plain.text().as_str(), plain.header("x-a")),
            (200, "hi", Some("b"))
        );
        let chunked = parse(b"HTTP/1.1 503 NO\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n").unwrap();
        assert_eq!((chunked.status, chunked.text().as_str()), (503, "abcde"));
        assert!(parse(b"garbage").is_err());
    }

    #[test]
    fn a_response_is_complete_at_its_content_length() {
        let head = b"HTTP/1.1 200 OK\r\nContent-Length:2\r\n\r\n";
        assert_eq!(complete_length(head), Some(head.len() + 2));
        assert_eq!(complete_length(b"HTTP/1.1 200 OK\r\nContent-Le"), None);
        assert_eq!(
            complete_length(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
            None
        );
    }
}
