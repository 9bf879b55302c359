//! `GET /ui/events`: one server-sent-events stream per open page (the events are listed in
//! [`super::model`]).
//!
//! Each stream is a task that sends an event when what it shows changed: at once on a status
//! change the provider signals ([`Provider::status_changes`]), a log line, an edge or a trigger
//! delivery, and otherwise from a read every [`TICK`] (counters, usage, levels), sent only
//! when it differs from what the page has. Nothing is sent per invocation, and nothing runs
//! while no page is open. A stream ends when the page goes away (its channel closes) or the
//! server shuts down; the browser's `EventSource` reconnects by itself after [`RETRY`].

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt as _;
use http::{HeaderValue, StatusCode};
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::time::MissedTickBehavior;

use crate::gateway::Shared;
use crate::http_util::ApiError;
use crate::provider::Provider;
use crate::types::LogRequest;
use crate::validate;

use super::feed::NodeFeed;
use super::model::{EdgeView, LogLines, NodeEvent};
use super::views::{self, Memory};

/// How often a page's figures are read again.
pub(crate) const TICK: Duration = Duration::from_secs(1);
/// How often the functions' memory and CPU are read (one call to containerd for all).
const USAGE_EVERY: Duration = Duration::from_secs(2);
/// How often sensors are read while the hardware page is open.
const SENSORS_EVERY: Duration = Duration::from_secs(10);
/// How long the browser waits before reconnecting a lost stream.
const RETRY: Duration = Duration::from_secs(2);
/// A comment line this often keeps proxies from closing an idle stream and lets a dead
/// connection be noticed.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Log lines sent at first (the tail of the function's log buffer).
const LOG_TAIL: usize = 200;
/// Events queued for a slow page before its task waits.
const QUEUE: usize = 32;

/// Which page a stream serves.
enum View {
    Overview,
    Function { name: String, namespace: String },
    Hardware,
}

/// A stream's sending end; `Err(())` from [`Out::send`] means the page is gone.
struct Out {
    tx: mpsc::Sender<Event>,
    /// The JSON last sent, per event name, so unchanged figures are not sent again.
    last: HashMap<&'static str, String>,
    first: bool,
}

impl Out {
    async fn send<T: Serialize>(&mut self, name: &'static str, value: &T) -> Result<(), ()> {
        let json = serde_json::to_string(value).map_err(|_| ())?;
        self.send_json(name, json).await
    }

    async fn send_json(&mut self, name: &'static str, json: String) -> Result<(), ()> {
        let mut event = Event::default().event(name).data(&json);
        if std::mem::take(&mut self.first) {
            event = event.retry(RETRY);
        }
        self.tx.send(event).await.map_err(|_| ())
    }

    /// Sends `value` unless it is what was sent last under `name`.
    async fn send_changed<T: Serialize>(
        &mut self,
        name: &'static str,
        value: &T,
    ) -> Result<(), ()> {
        let json = serde_json::to_string(value).map_err(|_| ())?;
        if self.last.get(name) == Some(&json) {
            return Ok(());
        }
        self.last.insert(name, json.clone());
        self.send_json(name, json).await
    }
}

pub(crate) async fn events<P: Provider>(
    State(shared): State<Arc<Shared<P>>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let view = match view_of(&q, &shared.config.default_namespace) {
        Ok(view) => view,
        Err(e) => return e.into_response(),
    };
    let (tx, mut rx) = mpsc::channel(QUEUE);
    let out = Out {
        tx,
        last: HashMap::new(),
        first: true,
    };
    let task_shared = Arc::clone(&shared);
    tokio::spawn(async move {
        let shared = task_shared;
        let stop = shared.shutting_down();
        let run = async {
            // `Err` only says the page went away.
            let _ = match view {
                View::Overview => overview(&shared, out).await,
                View::Function { name, namespace } => {
                    function(&shared, out, &name, &namespace).await
                }
                View::Hardware => hardware(&shared, out).await,
            };
        };
        tokio::select! {
            () = run => {}
            () = stop => {}
        }
    });
    let stream = futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).map(Ok::<_, Infallible>);
    let mut response = Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response();
    // Proxies (nginx) must pass events on as they come.
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

fn view_of(q: &HashMap<String, String>, default_namespace: &str) -> Result<View, ApiError> {
    if let Some(target) = q.get("function") {
        let (name, namespace) = match target.rsplit_once('.') {
            Some((name, namespace)) => (name, namespace),
            None => (target.as_str(), default_namespace),
        };
        validate::function_name(name).map_err(|e| ApiError::field("function", e))?;
        validate::namespace_name(namespace).map_err(|e| ApiError::field("function", e))?;
        return Ok(View::Function {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
        });
    }
    match q.get("view").map(String::as_str) {
        None | Some("" | "overview") => Ok(View::Overview),
        Some("hardware") => Ok(View::Hardware),
        Some(other) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("view: {other:?} is not a view (overview, hardware; or function=NAME.NS)"),
        )),
    }
}

fn ticker(period: Duration) -> tokio::time::Interval {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tick
}

/// Resolves when the provider signals a change; never without a signal.
async fn changed(changes: &mut Option<watch::Receiver<()>>) {
    match changes {
        Some(rx) => {
            if rx.changed().await.is_err() {
                *changes = None;
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

async fn overview<P: Provider>(shared: &Shared<P>, mut out: Out) -> Result<(), ()> {
    let mut memory = Memory::default();
    let mut changes = shared.provider.status_changes();
    let mut tick = ticker(TICK);
    loop {
        memory.refresh_usage(shared, USAGE_EVERY).await;
        let overview = views::overview(shared, &memory).await;
        out.send_changed("overview", &overview).await?;
        tokio::select! {
            () = out.tx.closed() => return Err(()),
            _ = tick.tick() => {}
            () = changed(&mut changes) => {}
        }
    }
}

async fn function<P: Provider>(
    shared: &Shared<P>,
    mut out: Out,
    name: &str,
    namespace: &str,
) -> Result<(), ()> {
    let key = format!("{name}.{namespace}");
    let feed: Option<Arc<dyn NodeFeed>> = shared.feed.get().cloned();
    let mut memory = Memory::default();
    let mut changes = shared.provider.status_changes();
    let mut tick = ticker(TICK);
    let mut logs = None;
    let mut node_events = feed.as_ref().map(|f| f.events());
    let mut hardware_due = true;
    loop {
        memory.refresh_usage(shared, USAGE_EVERY).await;
        match views::function(shared, &memory, name, namespace).await {
            Ok(Some(view)) => out.send_changed("function", &view).await?,
            Ok(None) => {
                out.send("gone", &serde_json::json!({ "function": key }))
                    .await?;
                return Ok(());
            }
            // The provider cannot answer now (containerd down): the page keeps what it has.
            Err(_) => {}
        }
        out.send_changed("invocations", &views::invocations(shared, &key))
            .await?;
        if std::mem::take(&mut hardware_due)
            && let Some(feed) = &feed
        {
            out.send_changed("hardware", &feed.function_hardware(name, namespace).await)
                .await?;
        }
        if logs.is_none() {
            logs = open_logs(shared, name, namespace).await;
        }
        tokio::select! {
            () = out.tx.closed() => return Err(()),
            _ = tick.tick() => {}
            () = changed(&mut changes) => hardware_due = true,
            lines = next_logs(&mut logs) => match lines {
                Some(lines) => out.send("logs", &LogLines { lines }).await?,
                // Ended (the function was deleted): opened again at the next read if it exists.
                None => logs = None,
            },
            event = next_event(&mut node_events) => {
                if matches!(&event, NodeEvent::Delivery(d) if d.function == key) {
                    hardware_due = true;
                }
            }
        }
    }
}

type Logs = std::pin::Pin<Box<dyn futures::Stream<Item = Vec<crate::types::LogMessage>> + Send>>;

async fn open_logs<P: Provider>(shared: &Shared<P>, name: &str, namespace: &str) -> Option<Logs> {
    let request = LogRequest {
        name: name.to_owned(),
        namespace: namespace.to_owned(),
        instance: None,
        since: None,
        tail: Some(LOG_TAIL),
        follow: true,
    };
    let stream = shared.provider.logs(request).await.ok()?;
    Some(Box::pin(stream.ready_chunks(LOG_TAIL)))
}

/// The next batch of log lines; `None` when the stream ended; never without a stream.
async fn next_logs(logs: &mut Option<Logs>) -> Option<Vec<crate::types::LogMessage>> {
    match logs {
        Some(stream) => stream.next().await,
        None => std::future::pending().await,
    }
}

/// The next node event; never without a feed (or once its stream ended).
async fn next_event(events: &mut Option<super::feed::NodeEvents>) -> NodeEvent {
    if let Some(stream) = events {
        if let Some(event) = stream.next().await {
            return event;
        }
        *events = None;
    }
    std::future::pending().await
}

async fn hardware<P: Provider>(shared: &Shared<P>, mut out: Out) -> Result<(), ()> {
    let Some(feed) = shared.feed.get().cloned() else {
        out.send(
            "unavailable",
            &serde_json::json!({ "message": "this node has no hardware helper" }),
        )
        .await?;
        out.tx.closed().await;
        return Err(());
    };
    let mut events = feed.events().ready_chunks(256).map(coalesce_edges).boxed();
    let mut tick = ticker(TICK);
    let mut sensors = ticker(SENSORS_EVERY);
    loop {
        tokio::select! {
            () = out.tx.closed() => return Err(()),
            _ = tick.tick() => out.send_changed("hardware", &feed.hardware().await).await?,
            _ = sensors.tick() => out.send_changed("sensors", &feed.sensors().await).await?,
            batch = events.next() => {
                let Some(batch) = batch else {
                    out.tx.closed().await;
                    return Err(());
                };
                let mut lines_changed = false;
                for event in batch {
                    match event {
                        NodeEvent::Edge(edge) => out.send("edge", &edge).await?,
                        NodeEvent::Delivery(delivery) => out.send("delivery", &delivery).await?,
                        NodeEvent::LinesChanged => lines_changed = true,
                    }
                }
                if lines_changed {
                    out.send_changed("hardware", &feed.hardware().await).await?;
                }
            }
        }
    }
}

/// A batch of node events with the edges of each line reduced to the last one, counting the
/// others: a burst of edges (a bouncing contact, `bramble gpio toggle --times 1000`) costs
/// the page one event per line.
fn coalesce_edges(batch: Vec<NodeEvent>) -> Vec<NodeEvent> {
    let mut edges: BTreeMap<String, EdgeView> = BTreeMap::new();
    let mut others = Vec::new();
    for event in batch {
        match event {
            NodeEvent::Edge(edge) => {
                let count = edges.get(&edge.line).map_or(0, |e| e.count);
                edges.insert(
                    edge.line.clone(),
                    EdgeView {
                        count: count + edge.count,
                        ..edge
                    },
                );
            }
            other => others.push(other),
        }
    }
    let mut edges: Vec<EdgeView> = edges.into_values().collect();
    edges.sort_by_key(|e| e.seqno);
    edges
        .into_iter()
        .map(NodeEvent::Edge)
        .chain(others)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edge(line: &str, level: u8, seqno: u64) -> NodeEvent {
        NodeEvent::Edge(EdgeView {
            line: line.into(),
            edge: if level == 1 { "rising" } else { "falling" }.into(),
            level,
            seqno,
            count: 1,
        })
    }

    #[test]
    fn bursts_of_edges_are_coalesced_per_line() {
        let batch = vec![
            edge("GPIO17", 1, 1),
            edge("GPIO27", 1, 2),
            NodeEvent::LinesChanged,
            edge("GPIO17", 0, 3),
            edge("GPIO17", 1, 4),
        ];
        let out = coalesce_edges(batch);
        assert_eq!(out.len(), 3);
        let NodeEvent::Edge(first) = &out[0] else {
            panic!("{out:?}")
        };
        assert_eq!((first.line.as_str(), first.count), ("GPIO27", 1));
        let NodeEvent::Edge(second) = &out[1] else {
            panic!("{out:?}")
        };
        assert_eq!(
            (
                second.line.as_str(),
                second.level,
                second.count,
                second.seqno
            ),
            ("GPIO17", 1, 3, 4)
        );
        assert_eq!(out[2], NodeEvent::LinesChanged);
    }

    #[test]
    fn views_are_named_by_the_query() {
        let q = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        assert!(matches!(
            view_of(&q(&[]), "openfaas-fn"),
            Ok(View::Overview)
        ));
        assert!(matches!(
            view_of(&q(&[("view", "hardware")]), "openfaas-fn"),
            Ok(View::Hardware)
        ));
        let Ok(View::Function { name, namespace }) =
            view_of(&q(&[("function", "hello.dev")]), "openfaas-fn")
        else {
            panic!()
        };
        assert_eq!((name.as_str(), namespace.as_str()), ("hello", "dev"));
        let Ok(View::Function { namespace, .. }) =
            view_of(&q(&[("function", "hello")]), "openfaas-fn")
        else {
            panic!()
        };
        assert_eq!(namespace, "openfaas-fn");
        assert!(view_of(&q(&[("function", "Bad Name")]), "openfaas-fn").is_err());
        assert!(view_of(&q(&[("view", "nope")]), "openfaas-fn").is_err());
    }
}
