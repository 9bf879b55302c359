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
//!
//! In a cluster ([`Gateway::set_call_share`](crate::Gateway::set_call_share)), an accepted
//! call is also handed to the cluster's work queue before the 202 ([`CallShare`]), and this
//! board's workers never run it: whichever board takes it from the queue runs it
//! ([`Gateway::run_shared_call`](crate::Gateway::run_shared_call)) and says so, and the
//! record here is deleted then ([`Gateway::forget_call`](crate::Gateway::forget_call)). The
//! record stays on this board's disk until that moment: on nats-server 2.9 JetStream fsyncs
//! every two minutes, so after a power cut of every board at once the record is what is left
//! of the call, and it is handed to the queue again at the next start (as is a call the
//! cluster could not take when it was accepted: no quorum, not up yet).

use std::fs;
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use base64::Engine as _;
use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::gateway::Shared;
use crate::http_util::strip_hop_by_hop;
use crate::provider::Provider;
use crate::proxy::{collect_limited, human};

const RECORD_EXT: &str = "call";
const FORMAT_VERSION: u32 = 1;

/// How long an accepted call waits for the cluster to take it before the 202 goes out anyway
/// (the call is on disk; this board hands it over once the cluster answers).
const SHARE_WAIT: Duration = Duration::from_secs(3);

/// An accepted call, as this board hands it to its cluster.
#[derive(Clone, Debug)]
pub struct SharedCall {
    /// The record's name on the accepting board (what [`Gateway::forget_call`] is given once
    /// the call is done).
    ///
    /// [`Gateway::forget_call`]: crate::Gateway::forget_call
    pub file: String,
    /// The call id (`X-Call-Id`).
    pub call_id: String,
    /// The function.
    pub function: String,
    /// Its namespace.
    pub namespace: String,
    /// The record as stored on disk: its metadata line, then the body (what
    /// [`Gateway::run_shared_call`](crate::Gateway::run_shared_call) runs).
    pub record: Bytes,
}

/// What the cluster did with a call handed to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShareOutcome {
    /// Stored: a board will run it.
    Stored,
    /// The cluster already holds a call with this call id: this one was not stored again.
    Duplicate,
}

/// The cluster's work queue, as the gateway hands accepted calls to it.
pub trait CallShare: Send + Sync + 'static {
    /// Stores `call` in the cluster; resolves once it is stored (or why not: the call stays
    /// on this board's disk and is handed over again later).
    fn share(
        &self,
        call: SharedCall,
    ) -> Pin<Box<dyn Future<Output = Result<ShareOutcome, String>> + Send + '_>>;
}

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

    /// Stores a call durably; returns once it is on disk, with the record's name and its
    /// metadata line. Hand it to the workers with [`Queue::hand_over`].
    async fn store(&self, record: &CallRecord, body: &Bytes) -> io::Result<(String, Vec<u8>)> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let id = format!("{nanos:020}-{:016x}", rand::random::<u64>());
        let mut meta = serde_json::to_vec(record).map_err(io::Error::other)?;
        meta.push(b'\n');
        let final_path = self.path(&id);
        let tmp = self.tmp.clone();
        let (line, body) = (meta.clone(), body.clone());
        let written = tokio::task::spawn_blocking(move || {
            bramble_base::write_atomic_via(&tmp, &final_path, FILE_MODE, |file| {
                file.write_all(&line)?;
                file.write_all(&body)
            })
            .map_err(|e| context("writing", &final_path, &e))
        })
        .await
        .map_err(io::Error::other)?;
        written?;
        Ok((id, meta))
    }

    /// Hands a stored call to the workers.
    fn hand_over(&self, id: String) {
        if self.tx.send(id).is_err() {
            debug!("async workers are gone; the call stays on disk for the next start");
        }
    }

    /// How many calls are pending (accepted, not done yet).
    async fn count(&self) -> io::Result<usize> {
        let mut dir = tokio::fs::read_dir(&self.pending)
            .await
            .map_err(|e| context("reading", &self.pending, &e))?;
        let mut n = 0;
        while let Some(entry) = dir
            .next_entry()
            .await
            .map_err(|e| context("reading", &self.pending, &e))?
        {
            if entry.path().extension().is_some_and(|x| x == RECORD_EXT) {
                n += 1;
            }
        }
        Ok(n)
    }

    /// A pending call's record as stored (`None` once it is done).
    async fn read(&self, id: &str) -> io::Result<Option<Bytes>> {
        let path = self.path(id);
        match tokio::fs::read(&path).await {
            Ok(raw) => Ok(Some(Bytes::from(raw))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(context("reading", &path, &e)),
        }
    }

    /// The record and body of a pending call; `None` once it is done.
    async fn load(&self, id: &str) -> io::Result<Option<(CallRecord, Bytes)>> {
        let Some(raw) = self.read(id).await? else {
            return Ok(None);
        };
        parse_record(&raw).map(Some).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {e}", self.path(id).display()),
            )
        })
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

/// A stored record: its metadata line, then the body.
pub(crate) fn parse_record(raw: &Bytes) -> Result<(CallRecord, Bytes), String> {
    let newline = raw
        .iter()
        .position(|b| *b == b'\n')
        .ok_or_else(|| "no metadata line".to_owned())?;
    let record: CallRecord = serde_json::from_slice(&raw[..newline]).map_err(|e| e.to_string())?;
    if record.version != FORMAT_VERSION {
        return Err(format!("unknown record version {}", record.version));
    }
    Ok((record, raw.slice(newline + 1..)))
}

/// Accepts a call: stores it on disk (fsynced), then hands it to the cluster's queue when
/// the board is in a cluster (waiting at most [`SHARE_WAIT`]), else to this board's workers.
/// Returns once the call is on disk; the caller answers 202 then.
pub(crate) async fn accept<P: Provider>(
    shared: &Shared<P>,
    record: &CallRecord,
    body: Bytes,
) -> io::Result<()> {
    let (file, meta) = shared.queue.store(record, &body).await?;
    let Some(share) = shared.share.get() else {
        shared.queue.hand_over(file);
        return Ok(());
    };
    let mut whole = bytes::BytesMut::with_capacity(meta.len() + body.len());
    whole.extend_from_slice(&meta);
    whole.extend_from_slice(&body);
    let call = SharedCall {
        file: file.clone(),
        call_id: record.call_id.clone(),
        function: record.function.clone(),
        namespace: record.namespace.clone(),
        record: whole.freeze(),
    };
    match tokio::time::timeout(SHARE_WAIT, share.share(call)).await {
        Ok(Ok(ShareOutcome::Stored)) => {}
        Ok(Ok(ShareOutcome::Duplicate)) => {
            debug!(call_id = %record.call_id, "the cluster already holds this call id; not queued twice");
            shared.queue.remove(&file).await;
        }
        Ok(Err(e)) => {
            warn!(call_id = %record.call_id, error = %e, "the cluster cannot take the async call now; it is kept on this board and handed over later");
            shared.queue.hand_over(file);
        }
        Err(_) => {
            warn!(call_id = %record.call_id, waited = %human(SHARE_WAIT), "the cluster did not take the async call in time; it is kept on this board and handed over later");
            shared.queue.hand_over(file);
        }
    }
    Ok(())
}

/// Resolves once the gateway that owns the workers is dropped.
async fn stopped(stop: &mut watch::Receiver<()>) {
    while stop.changed().await.is_ok() {}
}

/// Runs queued calls until the gateway is dropped: each call in its own task, at most
/// `async_workers` executing at once (a call waiting for its next retry holds no slot). In a
/// cluster, a call stored here is handed to the cluster's queue instead ([`hand_to_cluster`]).
pub(crate) async fn run_workers<P: Provider>(
    shared: Arc<Shared<P>>,
    mut rx: mpsc::UnboundedReceiver<String>,
    mut stop: watch::Receiver<()>,
) {
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
        let mut stop = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                biased;
                () = stopped(&mut stop) => {}
                () = async {
                    match shared.share.get() {
                        Some(share) => hand_to_cluster(&shared, share.as_ref(), &id).await,
                        None => run_call(&shared, &id).await,
                    }
                } => {}
            }
        });
    }
}

/// Runs one call stored on this board to the end (see [`execute`]), then deletes it.
async fn run_call<P: Provider>(shared: &Shared<P>, id: &str) {
    let (record, body) = match shared.queue.load(id).await {
        Ok(Some(loaded)) => loaded,
        Ok(None) => return,
        Err(e) => {
            warn!(error = %e, "unreadable async call moved aside");
            shared.queue.quarantine(id).await;
            return;
        }
    };
    match execute(shared, &record, body).await {
        Ok(()) => shared.queue.remove(id).await,
        Err(e) => {
            warn!(call_id = %record.call_id, error = %e, "invalid async call moved aside");
            shared.queue.quarantine(id).await;
        }
    }
}

/// Most time between two hand-overs of a call the cluster refused: handing over is cheap, and
/// a call should not wait long once the cluster is back.
const HAND_OVER_BACKOFF: Duration = Duration::from_secs(5);

/// Hands a call stored on this board to the cluster, again and again (with the retry
/// policy's first backoff, doubling up to [`HAND_OVER_BACKOFF`]) until the cluster has it. The
/// share itself waits while the board is not in touch with its cluster. The record stays
/// until the board that runs the call says it is done ([`forget`]).
async fn hand_to_cluster<P: Provider>(shared: &Shared<P>, share: &dyn CallShare, id: &str) {
    let mut backoff = shared.config.async_retry.initial_backoff;
    loop {
        let raw = match shared.queue.read(id).await {
            Ok(Some(raw)) => raw,
            Ok(None) => return,
            Err(e) => {
                warn!(error = %e, "unreadable async call moved aside");
                shared.queue.quarantine(id).await;
                return;
            }
        };
        let record = match parse_record(&raw) {
            Ok((record, _)) => record,
            Err(e) => {
                warn!(file = %id, error = %e, "invalid async call moved aside");
                shared.queue.quarantine(id).await;
                return;
            }
        };
        let call = SharedCall {
            file: id.to_owned(),
            call_id: record.call_id.clone(),
            function: record.function.clone(),
            namespace: record.namespace.clone(),
            record: raw,
        };
        match share.share(call).await {
            Ok(_) => {
                debug!(call_id = %record.call_id, "async call handed to the cluster");
                return;
            }
            Err(e) => {
                debug!(call_id = %record.call_id, error = %e, retry_in = %human(backoff), "the cluster cannot take the async call yet");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(HAND_OVER_BACKOFF);
    }
}

/// How many async calls this board accepted that are not done yet.
pub(crate) async fn kept<P: Provider>(shared: &Shared<P>) -> io::Result<usize> {
    shared.queue.count().await
}

/// Runs a call the cluster's queue delivered to this board (a record as [`SharedCall`] holds
/// it): the same as a call accepted here, on this board's async slots.
pub(crate) async fn run_shared<P: Provider>(shared: &Shared<P>, raw: Bytes) -> Result<(), String> {
    let (record, body) = parse_record(&raw)?;
    execute(shared, &record, body).await
}

/// Deletes the record of a call this board accepted and another board ran. `file` comes
/// from the cluster: only a record's name is accepted.
pub(crate) async fn forget<P: Provider>(shared: &Shared<P>, file: &str) {
    if file.is_empty()
        || file.len() > 64
        || !file.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
    {
        warn!(file = %file.chars().take(80).collect::<String>(), "ignoring a finished call's record name that is not one");
        return;
    }
    shared.queue.remove(file).await;
}

/// Executes one call to the end: attempts (each holding one of the board's async slots),
/// retries of 502/503/504 with backoff, the callback. `Err` when the record cannot be a
/// request.
async fn execute<P: Provider>(
    shared: &Shared<P>,
    record: &CallRecord,
    body: Bytes,
) -> Result<(), String> {
    let policy = &shared.config.async_retry;
    let mut backoff = policy.initial_backoff;
    let mut attempt: u32 = 0;
    loop {
        let Ok(slot) = shared.async_slots.acquire().await else {
            return Ok(());
        };
        let request = record.request(body.clone())?;
        attempt += 1;
        let started = Instant::now();
        let response =
            crate::proxy::invoke(shared, &record.function, &record.namespace, request).await;
        let status = response.status();
        let retryable = matches!(status.as_u16(), 502..=504)
            || (status == StatusCode::NOT_FOUND
                && record.age() < policy.unknown_function_grace
                && unknown_here(shared, record).await);
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
            deliver_callback(shared, record, url, status, parts.headers, &duration, body).await;
        }
        return Ok(());
    }
}

/// True when a 404 for `record` came from this board not knowing its function (not from the
/// function): the board that accepted the call knew it, so this one may not have heard of it
/// yet (a deploy through another board, milliseconds ago).
async fn unknown_here<P: Provider>(shared: &Shared<P>, record: &CallRecord) -> bool {
    matches!(
        shared
            .provider
            .get_function(&record.function, &record.namespace, false)
            .await,
        Ok(None)
    )
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
