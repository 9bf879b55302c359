//! The per-request path: a ready replica of a function, from memory — or, when none is ready,
//! a wake-up of its supervisor and a bounded wait. And the function's log lines.

use std::time::Duration;

use bramble_gateway::provider::{Endpoint, LogStream, ProviderError, ProviderResult, Upstream};
use bramble_gateway::types::{FunctionState, LogMessage, LogRequest};
use futures::StreamExt;

use super::LocalProvider;
use crate::function::FunctionKey;
use crate::runtime::NodeRuntime;
use crate::supervisor::Command;

impl<R: NodeRuntime> LocalProvider<R> {
    pub(super) async fn ready_endpoint(
        &self,
        name: &str,
        namespace: &str,
        wait: Duration,
    ) -> ProviderResult<Endpoint> {
        let key = FunctionKey::new(name, namespace);
        let handle = match self.handle(&key) {
            Some(handle) => handle,
            None => {
                let known = self
                    .ctx
                    .store
                    .snapshot()
                    .function(name, namespace)
                    .is_some();
                if !known {
                    return Err(ProviderError::NotFound(format!("function {key} not found")));
                }
                // Deployed, but the node is still adopting its functions after a start.
                if !self.wait_started(wait).await {
                    return Err(ProviderError::Timeout(format!(
                        "function {key} is not started yet"
                    )));
                }
                self.handle(&key)
                    .ok_or_else(|| ProviderError::NotFound(format!("function {key} not found")))?
            }
        };
        if let Some((addr, guard)) = handle.route.pick() {
            return Ok(Endpoint {
                upstream: Upstream::Replica(addr),
                timeout: handle.route.timeout(),
                in_flight: Some(Box::new(guard)),
            });
        }
        let mut status = handle.status.clone();
        let failed_before = status.borrow_and_update().unavailable_starts;
        let _ = handle.commands.send(Command::Wake);
        // Wait for a ready replica — unless starting one fails because containerd cannot be
        // reached: that is a 503 now, not after the whole ready timeout.
        let ready = tokio::select! {
            ready = handle.route.wait_ready(wait) => ready,
            Ok(view) = status.wait_for(|v| v.unavailable_starts > failed_before) => {
                let reason = view.message.clone().unwrap_or_default();
                return Err(ProviderError::Unavailable(format!(
                    "function {key} cannot be started: {reason}"
                )));
            }
        };
        if ready && let Some((addr, guard)) = handle.route.pick() {
            return Ok(Endpoint {
                upstream: Upstream::Replica(addr),
                timeout: handle.route.timeout(),
                in_flight: Some(Box::new(guard)),
            });
        }
        let view = handle.status.borrow().clone();
        let detail = match (&view.message, &view.last_exit) {
            (Some(message), _) => format!(": {message}"),
            (None, Some(exit)) => format!(" (last exit: {exit}, {} restarts)", view.restarts),
            (None, None) => String::new(),
        };
        let message = format!(
            "function {key} is not ready after {wait:?}: {}{detail}",
            view.state
        );
        Err(if view.state == FunctionState::CrashLooping {
            ProviderError::Unavailable(message)
        } else {
            ProviderError::Timeout(message)
        })
    }

    pub(super) fn log_stream(&self, request: &LogRequest) -> ProviderResult<LogStream> {
        self.require_namespace(&request.namespace)?;
        let key = FunctionKey::new(&request.name, &request.namespace);
        if self
            .ctx
            .store
            .snapshot()
            .function(&key.name, &key.namespace)
            .is_none()
        {
            return Err(ProviderError::NotFound(format!("function {key} not found")));
        }
        let buffer = self.ctx.runtime.logs().buffer(&key.to_string());
        let instance = request.instance.clone();
        let to_message = move |line: bramble_runtime::logs::LogLine| -> Option<LogMessage> {
            if instance.as_ref().is_some_and(|i| *i != line.container) {
                return None;
            }
            Some(LogMessage {
                name: key.name.clone(),
                namespace: key.namespace.clone(),
                instance: line.container,
                timestamp: humantime::format_rfc3339_nanos(line.time).to_string(),
                text: line.text,
            })
        };
        if !request.follow {
            let lines: Vec<LogMessage> = buffer
                .read(request.since, request.tail)
                .into_iter()
                .filter_map(to_message)
                .collect();
            return Ok(Box::pin(futures::stream::iter(lines)));
        }
        let (past, live) = buffer.follow(request.since, request.tail);
        let past_messages: Vec<LogMessage> =
            past.into_iter().filter_map(to_message.clone()).collect();
        let live = stream_of(live).filter_map(move |line| std::future::ready(to_message(line)));
        Ok(Box::pin(futures::stream::iter(past_messages).chain(live)))
    }
}

/// A broadcast receiver as a stream; lagging followers skip what they missed.
fn stream_of<T: Clone + Send + 'static>(
    receiver: tokio::sync::broadcast::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send {
    futures::stream::unfold(receiver, |mut receiver| async move {
        loop {
            match receiver.recv().await {
                Ok(item) => return Some((item, receiver)),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
}
