//! The durable async queue (`/async-function`) and its workers.
//!
//! Each accepted call is one file `pending/<id>.call` under the queue directory: a JSON line
//! with the request's metadata, then the raw body. It is written to `tmp/`, fsynced, renamed
//! into `pending/` and the directory fsynced *before* the caller gets its 202, so an accepted
//! call survives a crash or a power cut. A worker executes it through the same invocation path
//! as `/function` (metrics, scale from zero, timeouts), retries while the function is not
//! available (502/503/504) with exponential backoff, posts the result to the callback URL if
//! there is one, and only then deletes the file.
//!
//! The directory and its subdirectories are `0700` and every record `0600`: a record holds the
//! request's headers (an `Authorization` included) and body.
//!
//! Delivery is **at least once**: a crash after the function ran but before the file was
//! deleted runs the call again on the next start. A new gateway on the same directory resumes
//! every pending call in the order they were accepted.

use std::fs;
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use base64::Engine as _;
use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri};
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, mpsc, watch};
use tracing::{debug, info, warn};

use crate::gateway::Shared;
use crate::http_util::strip_hop_by_hop;
use crate::provider::Provider;
use crate::proxy::{collect_limited, human};

const RECORD_EXT: &str = "call";
const FORMAT_VERSION: u32 = 1;

/// A header as stored: text, or base64 for the rare value that is not visible ASCII.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StoredHeader {
    name: String,
    value: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    base64: bool,
}

/// The metadata line of a queued call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct CallRecord {
    pub(crate) version: u32,
    pub(crate) call_id: String,
    pub(crate) function: String,
    pub(crate) namespace: String,
    pub(crate) method: String,
    /// Path and query as the function sees them (`/a/b?x=1`).
    pub(crate) uri: String,
    pub(crate) headers: Vec<StoredHeader>,
    pub(crate) callback_url: Option<String>,
    /// When the call was accepted, in milliseconds since the Unix epoch.
    pub(crate) accepted_unix_ms: u64,
}

impl CallRecord {
    pub(crate) fn new(
        call_id: String,
        function: &str,
        namespace: &str,
        method: &Method,
        uri: String,
        headers: &HeaderMap,
        callback_url: Option<String>,
    ) -> Self {
        let mut kept = headers.clone();
        strip_hop_by_hop(&mut kept);
        kept.remove(CONTENT_LENGTH);
        let headers = kept
            .iter()
            .map(|(name, value)| match value.to_str() {
                Ok(text) => StoredHeader {
                    name: name.as_str().to_owned(),
                    value: text.to_owned(),
                    base64: false,
                },
                Err(_) => StoredHeader {
                    name: name.as_str().to_owned(),
                    value: base64::engine::general_purpose::STANDARD.encode(value.as_bytes()),
                    base64: true,
                },
            })
            .collect();
        let accepted_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        Self {
            version: FORMAT_VERSION,
            call_id,
            function: function.to_owned(),
            namespace: namespace.to_owned(),
            method: method.as_str().to_owned(),
            uri,
            headers,
            callback_url,
            accepted_unix_ms,
        }
    }

    /// The request to send to the function.
    fn request(&self, body: Bytes) -> Result<Request<Body>, String> {
        let method =
            Method::from_bytes(self.method.as_bytes()).map_err(|e| format!("method: {e}"))?;
        let uri = Uri::from(
            self.uri
                .parse::<http::uri::PathAndQuery>()
                .map_err(|e| format!("uri: {e}"))?,
        );
        let mut request = Request::new(Body::from(body));
        *request.method_mut() = method;
        *request.uri_mut() = uri;
        for h in &self.headers {
            let name = HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|e| format!("header name: {e}"))?;
            let value = if h.base64 {
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(&h.value)
                    .map_err(|e| format!("header: {e}"))?;
                HeaderValue::from_bytes(&raw)
            } else {
                HeaderValue::from_str(&h.value)
            }
            .map_err(|e| format!("header value: {e}"))?;
            request.headers_mut().append(name, value);
        }
        Ok(request)
    }

    fn age(&self) -> Duration {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        now.saturating_sub(Duration::from_millis(self.accepted_unix_ms))
    }

    /// `name.namespace`, the metrics label.
    fn label(&self) -> String {
        format!("{}.{}", self.function, self.namespace)
    }
}

/// The queue's directories and the channel to the workers.
pub(crate) struct Queue {
    pending: PathBuf,
    tmp: PathBuf,
    tx: mpsc::UnboundedSender<String>,
}

fn context(what: &str, path: &Path, e: &io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

/// Mode of the queue's directories: records hold request headers and bodies.
const DIR_MODE: u32 = 0o700;
/// Mode of a record.
const FILE_MODE: u32 = 0o600;

/// Creates `dir` `0700` (missing parents with the default mode), and tightens it to `0700` if
/// it exists with a wider mode (a queue left by an older version).
fn private_dir(dir: &Path) -> io::Result<()> {
    if let Some(parent) = dir.parent() {
        fs::create_dir_all(parent).map_err(|e| context("creating", parent, &e))?;
    }
    match fs::DirBuilder::new().mode(DIR_MODE).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(context("creating", dir, &e)),
    }
    let mode = fs::metadata(dir)
        .map_err(|e| context("reading", dir, &e))?
        .permissions()
        .mode();
    if mode & 0o777 != DIR_MODE {
        fs::set_permissions(dir, fs::Permissions::from_mode(DIR_MODE))
            .map_err(|e| context("restricting", dir, &e))?;
    }
    Ok(())
}

impl Queue {
    /// Opens (creating) `dir`, drops half-written records and queues every pending one.
    pub(crate) fn open(dir: &Path) -> io::Result<(Queue, mpsc::UnboundedReceiver<String>)> {
        let pending = dir.join("pending");
        let tmp = dir.join("tmp");
        for d in [dir, &pending, &tmp] {
            private_dir(d)?;
        }
        for entry in fs::read_dir(&tmp).map_err(|e| context("reading", &tmp, &e))? {
            let path = entry?.path();
            // Never renamed into pending/: the caller never got a 202 for it.
            if let Err(e) = fs::remove_file(&path) {
                warn!(path = %path.display(), error = %e, "cannot remove a half-written async call");
            }
        }
        let mut ids: Vec<String> = fs::read_dir(&pending)
            .map_err(|e| context("reading", &pending, &e))?
            .filter_map(|entry| {
                let name = entry.ok()?.file_name().into_string().ok()?;
                name.strip_suffix(&format!(".{RECORD_EXT}"))
                    .map(str::to_owned)
            })
            .collect();
        ids.sort();
        let (tx, rx) = mpsc::unbounded_channel();
        if !ids.is_empty() {
            info!(count = ids.len(), dir = %dir.display(), "resuming pending async calls");
        }
        for id in ids {
            // The receiver is alive: it is returned below.
            let _ = tx.send(id);
        }
        Ok((Queue { pending, tmp, tx }, rx))
    }

    fn path(&self, id: &str) -> PathBuf {
        self.pending.join(format!("{id}.{RECORD_EXT}"))
    }

    /// Stores a call durably, then hands it to the workers. Returns once it is on disk.
    pub(crate) async fn enqueue(&self, record: &CallRecord, body: Bytes) -> io::Result<()> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let id = format!("{nanos:020}-{:016x}", rand::random::<u64>());
        let mut meta = serde_json::to_vec(record).map_err(io::Error::other)?;
        meta.push(b'\n');
        let final_path = self.path(&id);
        let tmp = self.tmp.clone();
        let written = tokio::task::spawn_blocking(move || {
            bramble_base::write_atomic_via(&tmp, &final_path, FILE_MODE, |file| {
                file.write_all(&meta)?;
                file.write_all(&body)
            })
            .map_err(|e| context("writing", &final_path, &e))
        })
        .await
        .map_err(io::Error::other)?;
        written?;
        if self.tx.send(id).is_err() {
            debug!("async workers are gone; the call stays on disk for the next start");
        }
        Ok(())
    }

    /// The record and body of a pending call; `None` once it is done.
    async fn load(&self, id: &str) -> io::Result<Option<(CallRecord, Bytes)>> {
        let path = self.path(id);
        let raw = match tokio::fs::read(&path).await {
            Ok(raw) => raw,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(context("reading", &path, &e)),
        };
        let invalid = |what: String| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {what}", path.display()),
            )
        };
        let newline = raw
            .iter()
            .position(|b| *b == b'\n')
            .ok_or_else(|| invalid("no metadata line".to_owned()))?;
        let record: CallRecord =
            serde_json::from_slice(&raw[..newline]).map_err(|e| invalid(e.to_string()))?;
        if record.version != FORMAT_VERSION {
            return Err(invalid(format!(
                "unknown record version {}",
                record.version
            )));
        }
        let body = Bytes::from(raw).slice(newline + 1..);
        Ok(Some((record, body)))
    }

    async fn remove(&self, id: &str) {
        let path = self.path(id);
        if let Err(e) = tokio::fs::remove_file(&path).await
            && e.kind() != io::ErrorKind::NotFound
        {
            warn!(path = %path.display(), error = %e, "cannot remove a finished async call; it will run again on the next start");
        }
    }

    /// Moves an unreadable record aside so it is not retried forever.
    async fn quarantine(&self, id: &str) {
        let path = self.path(id);
        let aside = self.pending.join(format!("{id}.corrupt"));
        if let Err(e) = tokio::fs::rename(&path, &aside).await {
            warn!(path = %path.display(), error = %e, "cannot move an unreadable async call aside");
        }
    }
}

/// Resolves once the gateway that owns the workers is dropped.
async fn stopped(stop: &mut watch::Receiver<()>) {
    while stop.changed().await.is_ok() {}
}

/// Runs queued calls until the gateway is dropped: each call in its own task, at most
/// `async_workers` executing at once (a call waiting for its next retry holds no slot).
pub(crate) async fn run_workers<P: Provider>(
    shared: Arc<Shared<P>>,
    mut rx: mpsc::UnboundedReceiver<String>,
    mut stop: watch::Receiver<()>,
) {
    let slots = Arc::new(Semaphore::new(shared.config.async_workers.max(1)));
    loop {
        let id = tokio::select! {
            biased;
            () = stopped(&mut stop) => return,
            id = rx.recv() => match id {
                Some(id) => id,
                None => return,
            },
        };
        let shared = Arc::clone(&shared);
        let slots = Arc::clone(&slots);
        let mut stop = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                biased;
                () = stopped(&mut stop) => {}
                () = run_call(&shared, &id, &slots) => {}
            }
        });
    }
}

/// Executes one queued call to the end: retries, callback, deletion.
async fn run_call<P: Provider>(shared: &Shared<P>, id: &str, slots: &Semaphore) {
    let policy = &shared.config.async_retry;
    let mut backoff = policy.initial_backoff;
    let mut attempt: u32 = 0;
    loop {
        let Ok(slot) = slots.acquire().await else {
            return;
        };
        let (record, body) = match shared.queue.load(id).await {
            Ok(Some(loaded)) => loaded,
            Ok(None) => return,
            Err(e) => {
                warn!(error = %e, "unreadable async call moved aside");
                shared.queue.quarantine(id).await;
                return;
            }
        };
        let request = match record.request(body) {
            Ok(request) => request,
            Err(e) => {
                warn!(call_id = %record.call_id, error = %e, "invalid async call moved aside");
                shared.queue.quarantine(id).await;
                return;
            }
        };
        attempt += 1;
        let started = Instant::now();
        let response =
            crate::proxy::invoke(shared, &record.function, &record.namespace, request).await;
        let status = response.status();
        let retryable = matches!(status.as_u16(), 502..=504);
        if retryable && attempt < policy.max_attempts && record.age() + backoff < policy.max_age {
            drop(response);
            drop(slot);
            debug!(call_id = %record.call_id, function = %record.label(), status = status.as_u16(), attempt, retry_in = %human(backoff), "async call will be retried");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(policy.max_backoff);
            continue;
        }
        let (parts, body) = response.into_parts();
        let duration = parts
            .headers
            .get("x-duration-seconds")
            .and_then(|v| v.to_str().ok())
            .map_or_else(
                || format!("{:.6}", started.elapsed().as_secs_f64()),
                str::to_owned,
            );
        let body = collect_limited(body, shared.config.max_async_body).await;
        drop(slot);
        if retryable {
            warn!(call_id = %record.call_id, function = %record.label(), status = status.as_u16(), attempts = attempt, "async call given up");
            shared.metrics.async_failed(&record.label());
        } else {
            debug!(call_id = %record.call_id, function = %record.label(), status = status.as_u16(), attempts = attempt, "async call done");
        }
        if let Some(url) = &record.callback_url {
            let body = body.unwrap_or_else(|| {
                warn!(call_id = %record.call_id, "function response too large for the callback; sending it without a body");
                Bytes::new()
            });
            deliver_callback(shared, &record, url, status, parts.headers, &duration, body).await;
        }
        shared.queue.remove(id).await;
        return;
    }
}

/// POSTs the function's answer to `url`, retrying a few times on errors and 5xx.
async fn deliver_callback<P: Provider>(
    shared: &Shared<P>,
    record: &CallRecord,
    url: &str,
    status: StatusCode,
    mut headers: HeaderMap,
    duration: &str,
    body: Bytes,
) {
    let policy = &shared.config.async_retry;
    strip_hop_by_hop(&mut headers);
    headers.remove(CONTENT_LENGTH);
    if !headers.contains_key(CONTENT_TYPE) {
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
    }
    let name = if record.namespace == shared.config.default_namespace {
        record.function.clone()
    } else {
        record.label()
    };
    for (key, value) in [
        ("x-function-status", status.as_u16().to_string()),
        ("x-call-id", record.call_id.clone()),
        ("x-duration-seconds", duration.to_owned()),
        ("x-function-name", name),
    ] {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(key, v);
        }
    }
    let mut backoff = policy.initial_backoff;
    let attempts = policy.callback_attempts.max(1);
    for attempt in 1..=attempts {
        let outcome = shared
            .callbacks
            .post(url)
            .headers(headers.clone())
            .body(body.clone())
            .timeout(policy.callback_timeout)
            .send()
            .await;
        let problem = match outcome {
            Ok(response) if !response.status().is_server_error() => {
                debug!(call_id = %record.call_id, status = response.status().as_u16(), "callback delivered");
                return;
            }
            Ok(response) => format!("callback answered {}", response.status()),
            Err(e) if e.is_timeout() => {
                format!("no answer within {}", human(policy.callback_timeout))
            }
            Err(e) if e.is_builder() => {
                warn!(call_id = %record.call_id, error = %crate::proxy::client_error(&e), "invalid callback URL; callback dropped");
                return;
            }
            Err(e) => crate::proxy::client_error(&e),
        };
        if attempt == attempts {
            warn!(call_id = %record.call_id, function = %record.label(), error = %problem, attempts, "callback dropped");
            return;
        }
        debug!(call_id = %record.call_id, error = %problem, attempt, "callback failed; retrying");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(policy.max_backoff);
    }
}

/// The client callbacks are sent with: `http://` and `https://` (rustls, the system's CA
/// certificates plus those in `ca_file`), no proxy (callbacks go where the URL says, as
/// function calls do), no redirects followed (a 3xx answer counts as delivered).
pub(crate) fn callback_client(ca_file: Option<&Path>) -> Result<reqwest::Client, String> {
    bramble_base::tls::install_crypto_provider();
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(10));
    if let Some(path) = ca_file {
        let pem = fs::read(path)
            .map_err(|e| format!("callback_ca_file: reading {}: {e}", path.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("callback_ca_file: {}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!(
                "callback_ca_file: {} holds no PEM certificate",
                path.display()
            ));
        }
        builder = builder.tls_certs_merge(certs);
    }
    builder
        .build()
        .map_err(|e| format!("cannot set up the callback client: {e}"))
}

/// Checks `X-Callback-Url`: an absolute `http://` or `https://` URL with a host.
pub(crate) fn validate_callback_url(value: &HeaderValue) -> Result<String, String> {
    let text = value
        .to_str()
        .map_err(|_| "is not visible ASCII".to_owned())?
        .trim();
    let uri: Uri = text
        .parse()
        .map_err(|e| format!("{text:?} is not a URL: {e}"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(format!(
            "{text:?} is not an absolute http:// or https:// URL"
        ));
    }
    match uri.authority() {
        Some(a) if !a.host().is_empty() => Ok(text.to_owned()),
        _ => Err(format!("{text:?} has no host")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callback_urls() {
        let check = |s: &str| validate_callback_url(&HeaderValue::from_str(s).unwrap());
        assert_eq!(
            check("http://127.0.0.1:9000/cb?x=1"),
            Ok("http://127.0.0.1:9000/cb?x=1".to_owned())
        );
        assert_eq!(
            check("http://receiver.local/"),
            Ok("http://receiver.local/".to_owned())
        );
        assert_eq!(
            check("https://receiver.example:8443/cb"),
            Ok("https://receiver.example:8443/cb".to_owned())
        );
        assert!(check("/relative").unwrap_err().contains("absolute"));
        assert!(check("ftp://x/").unwrap_err().contains("absolute"));
        assert!(check("http://").is_err());
        assert!(check("not a url").is_err());
    }

    #[test]
    fn records_round_trip_with_binary_headers() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("text/plain"));
        headers.insert("x-bin", HeaderValue::from_bytes(b"caf\xe9").unwrap());
        headers.insert("connection", HeaderValue::from_static("close"));
        headers.insert("content-length", HeaderValue::from_static("3"));
        let record = CallRecord::new(
            "id".into(),
            "f",
            "ns",
            &Method::PUT,
            "/a?b=1".into(),
            &headers,
            Some("http://h/".into()),
        );
        let json = serde_json::to_vec(&record).unwrap();
        assert!(!json.contains(&b'\n'));
        let back: CallRecord = serde_json::from_slice(&json).unwrap();
        let request = back.request(Bytes::from_static(b"abc")).unwrap();
        assert_eq!(request.method(), Method::PUT);
        assert_eq!(request.uri(), "/a?b=1");
        assert_eq!(
            request.headers().get("x-bin").unwrap().as_bytes(),
            b"caf\xe9"
        );
        assert_eq!(request.headers().get("content-type").unwrap(), "text/plain");
        assert!(
            request.headers().get("connection").is_none()
                && request.headers().get("content-length").is_none()
        );
    }
}
