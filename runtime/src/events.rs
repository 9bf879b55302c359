//! Task events from containerd (start, exit, OOM), as a broadcast stream.
//!
//! One subscription to containerd's event service is kept open for the runtime's namespace;
//! when it breaks (containerd restarting) it is re-established with backoff, and a
//! [`TaskEvent::Resync`] tells consumers that the stream is complete again from that point and
//! that they should re-list what they may have missed.
//! containerd can report one OOM kill several times (five on cgroup v1 here); each OOM is
//! delivered once per task start. The pump remembers which tasks it reported an OOM for until
//! the task is deleted, so that memory does not grow with containers that come and go.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use containerd_client::events::{TaskDelete, TaskExit, TaskOom, TaskStart};
use containerd_client::services::v1::{PublishRequest, SubscribeRequest};
use prost::Message;
use serde::Serialize;
use tokio::sync::broadcast;

use crate::client::Connection;

/// Events buffered per subscriber.
const EVENT_BUFFER: usize = 1024;

/// Something that happened to a task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum TaskEvent {
    /// The task of `container` started with process `pid`.
    Started { container: String, pid: u32 },
    /// The task's main process exited. `exit_status` is 128 + signal when it was killed.
    Exited {
        container: String,
        pid: u32,
        exit_status: u32,
        at: SystemTime,
    },
    /// The kernel OOM-killed a process of the container (reported once per start).
    Oom { container: String },
    /// The event stream is (again) complete from here on. Sent when the subscription is first
    /// established and after every interruption (containerd restarting), during which events
    /// may have been missed: consumers re-list state when they see it.
    Resync,
}

/// Topic of the ping bramble publishes to learn when its subscription is live.
const SYNC_TOPIC: &str = "/bramble/sync";
/// How often the ping is sent until the subscription answers.
const SYNC_INTERVAL: Duration = Duration::from_millis(200);

/// Starts the event pump; the runtime aborts it on drop.
///
/// containerd answers a subscription only with its first event, so a quiet subscription cannot
/// be told from a pending one. The pump therefore publishes a small `/bramble/sync` event into
/// its own namespace until the subscription delivers something: from then on every event is
/// seen, and [`TaskEvent::Resync`] announces it.
pub(crate) fn spawn(
    conn: Connection,
    sender: broadcast::Sender<TaskEvent>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(100);
        loop {
            let filter = format!(
                "namespace=={},topic~=\"^/(tasks|bramble)/\"",
                conn.namespace()
            );
            let mut client = conn.events();
            // The events service takes no namespace header; the filter selects ours.
            let subscribe = client.subscribe(SubscribeRequest {
                filters: vec![filter],
            });
            tokio::pin!(subscribe);
            let subscribed = loop {
                tokio::select! {
                    result = &mut subscribe => break result,
                    () = tokio::time::sleep(SYNC_INTERVAL) => publish_sync(&conn).await,
                }
            };
            match subscribed {
                Ok(response) => {
                    backoff = Duration::from_millis(100);
                    let _ = sender.send(TaskEvent::Resync);
                    let mut stream = response.into_inner();
                    let mut oom_seen: HashSet<String> = HashSet::new();
                    loop {
                        match stream.message().await {
                            Ok(Some(envelope)) => {
                                if let Some(event) =
                                    decode(&envelope.topic, envelope.event.as_ref(), &mut oom_seen)
                                {
                                    let _ = sender.send(event);
                                }
                            }
                            Ok(None) => break,
                            Err(status) => {
                                tracing::debug!(error = %status.message(), "event stream broke");
                                break;
                            }
                        }
                    }
                }
                Err(status) => {
                    tracing::debug!(error = %status.message(), "cannot subscribe to events");
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    })
}

async fn publish_sync(conn: &Connection) {
    let mut client = conn.events();
    let event = prost_types::Any {
        type_url: "bramble.Sync".into(),
        value: Vec::new(),
    };
    let request = conn.request(PublishRequest {
        topic: SYNC_TOPIC.into(),
        event: Some(event),
    });
    if let Err(status) = client.publish(request).await {
        tracing::trace!(error = %status.message(), "sync ping not published");
    }
}

/// Creates the broadcast channel events are sent on.
pub(crate) fn channel() -> broadcast::Sender<TaskEvent> {
    broadcast::channel(EVENT_BUFFER).0
}

fn decode(
    topic: &str,
    payload: Option<&prost_types::Any>,
    oom_seen: &mut HashSet<String>,
) -> Option<TaskEvent> {
    let value = &payload?.value[..];
    match topic {
        "/tasks/start" => {
            let e = TaskStart::decode(value).ok()?;
            oom_seen.remove(&e.container_id);
            Some(TaskEvent::Started {
                container: e.container_id,
                pid: e.pid,
            })
        }
        "/tasks/exit" => {
            let e = TaskExit::decode(value).ok()?;
            // Exits of exec'd processes carry their own id; only the main process counts.
            if !e.id.is_empty() && e.id != e.container_id {
                return None;
            }
            let at = e
                .exited_at
                .and_then(|t| {
                    let secs = u64::try_from(t.seconds).ok()?;
                    let nanos = u32::try_from(t.nanos).ok()?;
                    SystemTime::UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
                })
                .unwrap_or_else(SystemTime::now);
            Some(TaskEvent::Exited {
                container: e.container_id,
                pid: e.pid,
                exit_status: e.exit_status,
                at,
            })
        }
        "/tasks/delete" => {
            // Not on exit: containerd can deliver an OOM's duplicates after the exit; a task's
            // delete comes from the same shim after all of them, and no OOM can follow it.
            let e = TaskDelete::decode(value).ok()?;
            if e.id.is_empty() || e.id == e.container_id {
                oom_seen.remove(&e.container_id);
            }
            None
        }
        "/tasks/oom" => {
            let e = TaskOom::decode(value).ok()?;
            oom_seen
                .insert(e.container_id.clone())
                .then_some(TaskEvent::Oom {
                    container: e.container_id,
                })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any<M: Message>(m: &M) -> prost_types::Any {
        prost_types::Any {
            type_url: String::new(),
            value: m.encode_to_vec(),
        }
    }

    #[test]
    fn oom_is_reported_once_per_start() {
        let mut seen = HashSet::new();
        let oom = any(&TaskOom {
            container_id: "f".into(),
        });
        assert_eq!(
            decode("/tasks/oom", Some(&oom), &mut seen),
            Some(TaskEvent::Oom {
                container: "f".into()
            })
        );
        for _ in 0..4 {
            assert_eq!(decode("/tasks/oom", Some(&oom), &mut seen), None);
        }
        let start = any(&TaskStart {
            container_id: "f".into(),
            pid: 7,
        });
        assert!(matches!(
            decode("/tasks/start", Some(&start), &mut seen),
            Some(TaskEvent::Started { pid: 7, .. })
        ));
        assert!(
            decode("/tasks/oom", Some(&oom), &mut seen).is_some(),
            "a new start resets the dedupe"
        );
    }

    #[test]
    fn a_deleted_task_is_forgotten() {
        let mut seen = HashSet::new();
        let oom = |id: &str| {
            any(&TaskOom {
                container_id: id.into(),
            })
        };
        let delete = |container: &str, exec: &str| {
            any(&TaskDelete {
                container_id: container.into(),
                id: exec.into(),
                pid: 7,
                exit_status: 137,
                exited_at: None,
            })
        };
        for id in ["a", "b"] {
            assert!(decode("/tasks/oom", Some(&oom(id)), &mut seen).is_some());
        }
        let exit = any(&TaskExit {
            container_id: "a".into(),
            id: "a".into(),
            pid: 7,
            exit_status: 137,
            exited_at: None,
        });
        decode("/tasks/exit", Some(&exit), &mut seen);
        assert_eq!(
            decode("/tasks/oom", Some(&oom("a")), &mut seen),
            None,
            "a duplicate arriving after the exit is still suppressed"
        );
        // An exec'd process's delete is not the task's.
        assert_eq!(
            decode("/tasks/delete", Some(&delete("a", "probe")), &mut seen),
            None
        );
        assert!(seen.contains("a"));
        assert_eq!(
            decode("/tasks/delete", Some(&delete("a", "")), &mut seen),
            None,
            "a delete is not reported"
        );
        assert!(!seen.contains("a"), "the deleted task is forgotten");
        assert!(seen.contains("b"), "other tasks are kept");
        decode("/tasks/delete", Some(&delete("b", "b")), &mut seen);
        assert!(seen.is_empty(), "{seen:?}");
        // A container of the same name later gets its OOM reported.
        assert!(decode("/tasks/oom", Some(&oom("a")), &mut seen).is_some());
    }

    #[test]
    fn exits_of_exec_processes_are_ignored() {
        let mut seen = HashSet::new();
        let main = any(&TaskExit {
            container_id: "f".into(),
            id: "f".into(),
            pid: 9,
            exit_status: 137,
            exited_at: None,
        });
        let exec = any(&TaskExit {
            container_id: "f".into(),
            id: "probe".into(),
            pid: 10,
            exit_status: 0,
            exited_at: None,
        });
        assert!(matches!(
            decode("/tasks/exit", Some(&main), &mut seen),
            Some(TaskEvent::Exited {
                exit_status: 137,
                ..
            })
        ));
        assert_eq!(decode("/tasks/exit", Some(&exec), &mut seen), None);
        assert_eq!(
            decode(
                "/tasks/exit",
                Some(&prost_types::Any {
                    type_url: String::new(),
                    value: vec![0xff, 0xff]
                }),
                &mut seen
            ),
            None
        );
    }
}
