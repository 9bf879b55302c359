//! bramble-gateway: the HTTP face of a bramble node.
//!
//! The OpenFaaS REST API (`/system/*`, behind HTTP Basic auth), the `/function` and
//! `/async-function` invocation paths, `/healthz` and Prometheus `/metrics`. It talks to a
//! [`provider::Provider`], never to containerd.
//!
//! ```no_run
//! # async fn run<P: bramble_gateway::provider::Provider>(provider: std::sync::Arc<P>) -> Result<(), Box<dyn std::error::Error>> {
//! use bramble_gateway::{Credentials, Gateway, GatewayConfig};
//! let config = GatewayConfig {
//!     credentials: Credentials { user: "admin".into(), password: "secret".into() },
//!     queue_dir: "/var/lib/bramble/queue".into(),
//!     ..GatewayConfig::default()
//! };
//! let gateway = Gateway::new(provider, config)?;
//! gateway.start_workers();
//! let listener = tokio::net::TcpListener::bind("0.0.0.0:8080").await?;
//! gateway.serve(listener, async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(()) }
//! ```
//!
//! # Routes
//!
//! | route | success | notes |
//! |---|---|---|
//! | `GET /system/functions?namespace=` | 200 `[FunctionStatus]` | `invocationCount` from the gateway's counters |
//! | `POST /system/functions` | 200 empty | deploy; 409 if it exists |
//! | `PUT /system/functions` | 200 empty | update; 404 if missing (faas-cli then POSTs) |
//! | `DELETE /system/functions` | 200 empty | body `{"functionName","namespace"}` |
//! | `GET /system/function/{name}?namespace=&usage=` | 200 `FunctionStatus` | 404 if missing |
//! | `POST /system/scale-function/{name}?namespace=` | 200 empty | body `serviceName` wins over the path; 0..=8 replicas |
//! | `GET /system/info` | 200 | `{"provider":{..},"version":{..},"arch":".."}` |
//! | `GET /system/namespaces` | 200 `["openfaas-fn",..]` | |
//! | `POST /system/namespace/` | 201 empty | label `openfaas` must be `1` or `true` |
//! | `GET /system/namespace/{name}` | 200 `FunctionNamespace` | 404 if missing |
//! | `PUT /system/namespace/{name}` | 202 empty | body name must match the path |
//! | `DELETE /system/namespace/{name}` | 202 empty | |
//! | `GET /system/secrets?namespace=` | 200 `[{"name","namespace"}]` | never values |
//! | `POST`/`PUT /system/secrets` | 200 empty | creates or replaces |
//! | `DELETE /system/secrets` | 200 empty | name and namespace from the body or the query |
//! | `GET /system/images` | 200 `[{"name","digest","size"}]` | bramble extension |
//! | `POST /system/images?name=` | 200 `{"images":[..]}` | body: an image archive; 413 over `max_upload` |
//! | `DELETE /system/images` | 200 empty | `{"name"}`; 409 while a function uses it |
//! | `GET /system/logs?name=&namespace=&instance=&tail=&follow=&since=` | 200 NDJSON | 422 on a bad query |
//! | `GET /healthz` | 200 `OK` | 503 with the reason |
//! | `GET /metrics` | 200 Prometheus text | |
//! | any `/function/{name[.ns]}[/path]` | the function's | streamed both ways; `name.ns` split on the last `.` |
//! | `POST /async-function/{name[.ns]}[/path]` | 202 + `X-Call-Id` | 507 when the queue's disk is full |
//! | `GET /` | 200 text | |
//! | any `/cluster/function/{name.ns}[/path]` (board listener only, TLS) | the function's | a call another board sent; 403 without a board certificate (see `Gateway::serve_boards`) |
//!
//! `/system/*` needs HTTP Basic auth (401, `WWW-Authenticate: Basic realm="Restricted"`,
//! `invalid credentials`); the others are open. Bodies of `/system/*` above `max_api_body` get
//! 413; malformed JSON gets 400 naming the field. Everything is validated before the provider
//! is called; a rejected request changes nothing. A change the node cannot save because its
//! disk is full gets 507 naming the file, and changes nothing either.
//!
//! `/function` errors: 400 impossible name, 404 unknown function, 502 function unreachable,
//! 503/504 not ready (the provider's message), 504 `Function timed out after Ns`.
//!
//! # Async calls
//!
//! `POST /async-function/...` stores the call on disk (fsynced) before answering 202, then a
//! worker runs it through [`Gateway::invoke`], retrying 502/503/504 with exponential backoff
//! ([`RetryPolicy`]), and POSTs the result to `X-Callback-Url` (`http://` or `https://`) if
//! given. Delivery is **at least once**: a crash after a call ran but before its record was
//! deleted runs it again on the next start. Records are `0600` in a `0700` directory: they hold
//! the requests' headers and bodies. In a cluster the call is handed to the cluster's queue
//! before the 202 and any board may run it ([`Gateway::set_call_share`]).

mod api;
mod auth;
mod boards;
mod config;
mod gateway;
mod http_util;
mod metrics;
#[cfg(test)]
mod proptests;
pub mod provider;
mod proxy;
mod queue;
mod recent;
mod rfc3339;
pub mod types;
pub mod ui;
pub mod validate;

pub use api::MAX_REPLICAS;
pub use boards::BoardPeer;
pub use config::{Credentials, GatewayConfig, RetryPolicy};
pub use gateway::{Gateway, GatewayError};
pub use queue::{CallShare, ShareOutcome, SharedCall};
