//! Function output: each task's stdout and stderr FIFOs are read line by line into a bounded
//! in-memory ring per log name (usually the function), which can be read and followed.
//!
//! Nothing is written to the SD card: the ring lives in memory, bounded in bytes, and the
//! oldest lines are dropped first. Followers receive every line appended after they subscribed;
//! a follower that falls too far behind is told how many lines it missed.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::Serialize;
use tokio::io::AsyncReadExt;
use tokio::sync::broadcast;

use crate::error::{Error, Result};

/// Longest line kept; longer output is split into several lines.
const MAX_LINE: usize = 16 * 1024;
/// Lines buffered per follower before it is considered lagging.
const FOLLOW_BUFFER: usize = 1024;

/// Which output stream a line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    Stdout,
    Stderr,
}

/// One line of function output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LogLine {
    /// When bramble read the line.
    pub time: SystemTime,
    pub stream: LogStream,
    /// The container that printed it.
    pub container: String,
    pub text: String,
}

#[derive(Debug)]
struct Ring {
    lines: VecDeque<LogLine>,
    bytes: usize,
    capacity: usize,
}

/// The bounded log of one function (or any log name).
#[derive(Debug)]
pub struct LogBuffer {
    ring: Mutex<Ring>,
    live: broadcast::Sender<LogLine>,
}

impl LogBuffer {
    fn new(capacity: usize) -> Self {
        let (live, _) = broadcast::channel(FOLLOW_BUFFER);
        Self {
            ring: Mutex::new(Ring {
                lines: VecDeque::new(),
                bytes: 0,
                capacity,
            }),
            live,
        }
    }

    /// Appends a line, dropping the oldest ones beyond the byte budget.
    pub fn push(&self, line: LogLine) {
        let mut ring = self
            .ring
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        ring.bytes += line_cost(&line);
        ring.lines.push_back(line.clone());
        while ring.bytes > ring.capacity {
            match ring.lines.pop_front() {
                Some(old) => ring.bytes -= line_cost(&old),
                None => break,
            }
        }
        // Sent under the lock, so `follow` can never see a line twice or miss one.
        let _ = self.live.send(line);
    }

    /// Lines at or after `since`, at most the last `tail` of them.
    pub fn read(&self, since: Option<SystemTime>, tail: Option<usize>) -> Vec<LogLine> {
        let ring = self
            .ring
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        select(&ring.lines, since, tail)
    }

    /// The lines `read` would return, and a receiver of every line appended afterwards,
    /// with no gap and no duplicate between the two.
    pub fn follow(
        &self,
        since: Option<SystemTime>,
        tail: Option<usize>,
    ) -> (Vec<LogLine>, broadcast::Receiver<LogLine>) {
        let ring = self
            .ring
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let receiver = self.live.subscribe();
        (select(&ring.lines, since, tail), receiver)
    }
}

fn select(
    lines: &VecDeque<LogLine>,
    since: Option<SystemTime>,
    tail: Option<usize>,
) -> Vec<LogLine> {
    let selected: Vec<&LogLine> = lines
        .iter()
        .filter(|l| since.is_none_or(|s| l.time >= s))
        .collect();
    let skip = tail.map_or(0, |t| selected.len().saturating_sub(t));
    selected.into_iter().skip(skip).cloned().collect()
}

fn line_cost(line: &LogLine) -> usize {
    line.text.len() + line.container.len() + 48
}

/// All log buffers of the runtime, by log name.
#[derive(Debug)]
pub struct Logs {
    buffers: Mutex<HashMap<String, Arc<LogBuffer>>>,
    capacity: usize,
}

impl Logs {
    /// Empty buffers of at most `capacity` bytes each.
    pub fn new(capacity: usize) -> Self {
        Self {
            buffers: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    /// The buffer of `name`, created empty when missing.
    pub fn buffer(&self, name: &str) -> Arc<LogBuffer> {
        let mut buffers = self
            .buffers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(
            buffers
                .entry(name.to_owned())
                .or_insert_with(|| Arc::new(LogBuffer::new(self.capacity))),
        )
    }

    /// The buffer of `name`, if anything was ever logged under it.
    pub fn get(&self, name: &str) -> Option<Arc<LogBuffer>> {
        self.buffers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    /// Drops the buffer of `name` (when its function is deleted).
    pub fn forget(&self, name: &str) {
        self.buffers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(name);
    }
}

/// Creates a FIFO at `path` (replacing a stale one) and opens its read end without blocking.
pub(crate) fn open_fifo(path: &Path) -> Result<tokio::net::unix::pipe::Receiver> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(format!("removing stale {}", path.display()), e)),
    }
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)).map_err(|e| {
        Error::io(
            format!("creating FIFO {}", path.display()),
            std::io::Error::from(e),
        )
    })?;
    reopen_fifo(path)
}

/// Opens the read end of an existing FIFO (adopting a task after a daemon restart).
pub(crate) fn reopen_fifo(path: &Path) -> Result<tokio::net::unix::pipe::Receiver> {
    tokio::net::unix::pipe::OpenOptions::new()
        .open_receiver(path)
        .map_err(|e| Error::io(format!("opening FIFO {}", path.display()), e))
}

/// Copies one stream of a task into a buffer until the writer side closes.
pub(crate) fn spawn_reader(
    mut fifo: tokio::net::unix::pipe::Receiver,
    buffer: Arc<LogBuffer>,
    container: String,
    stream: LogStream,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut pending: Vec<u8> = Vec::new();
        let mut chunk = vec![0u8; 8192];
        loop {
            match fifo.read(&mut chunk).await {
                Ok(0) => break,
                Ok(n) => {
                    pending.extend_from_slice(&chunk[..n]);
                    loop {
                        let window = &pending[..pending.len().min(MAX_LINE)];
                        if let Some(pos) = window.iter().position(|b| *b == b'\n') {
                            let line: Vec<u8> = pending.drain(..=pos).collect();
                            emit(&buffer, &container, stream, &line[..pos]);
                        } else if pending.len() >= MAX_LINE {
                            let line: Vec<u8> = pending.drain(..MAX_LINE).collect();
                            emit(&buffer, &container, stream, &line);
                        } else {
                            break;
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(container, error = %e, "log stream ended");
                    break;
                }
            }
        }
        if !pending.is_empty() {
            emit(&buffer, &container, stream, &pending);
        }
    })
}

fn emit(buffer: &LogBuffer, container: &str, stream: LogStream, bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    let text = text.strip_suffix('\r').unwrap_or(&text).to_owned();
    buffer.push(LogLine {
        time: SystemTime::now(),
        stream,
        container: container.to_owned(),
        text,
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn line(text: &str, at: SystemTime) -> LogLine {
        LogLine {
            time: at,
            stream: LogStream::Stdout,
            container: "c".into(),
            text: text.into(),
        }
    }

    #[test]
    fn the_ring_is_bounded_and_keeps_the_newest() {
        let buffer = LogBuffer::new(200);
        let now = SystemTime::now();
        for i in 0..20 {
            buffer.push(line(&format!("line {i}"), now));
        }
        let kept = buffer.read(None, None);
        assert!(kept.len() < 20 && !kept.is_empty());
        assert_eq!(kept.last().unwrap().text, "line 19");
        assert_eq!(
            buffer
                .read(None, Some(2))
                .iter()
                .map(|l| l.text.as_str())
                .collect::<Vec<_>>(),
            ["line 18", "line 19"]
        );
    }

    #[test]
    fn since_filters_by_time() {
        let buffer = LogBuffer::new(10_000);
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(100);
        buffer.push(line("old", t0));
        buffer.push(line("new", t0 + Duration::from_secs(10)));
        let got = buffer.read(Some(t0 + Duration::from_secs(5)), None);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].text, "new");
    }

    #[tokio::test]
    async fn follow_has_no_gap_and_no_duplicate() {
        let buffer = LogBuffer::new(10_000);
        buffer.push(line("before", SystemTime::now()));
        let (past, mut live) = buffer.follow(None, None);
        buffer.push(line("after", SystemTime::now()));
        assert_eq!(
            past.iter().map(|l| l.text.as_str()).collect::<Vec<_>>(),
            ["before"]
        );
        assert_eq!(live.recv().await.unwrap().text, "after");
    }

    #[tokio::test]
    async fn fifo_lines_are_split_and_long_lines_cut() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let fifo = open_fifo(&path).unwrap();
        let buffer = Arc::new(LogBuffer::new(1 << 20));
        let reader = spawn_reader(fifo, Arc::clone(&buffer), "c1".into(), LogStream::Stderr);
        let mut writer = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        let long = "x".repeat(MAX_LINE + 10);
        write!(writer, "one\r\ntwo\n{long}\nlast-without-newline").unwrap();
        drop(writer);
        reader.await.unwrap();
        let lines = buffer.read(None, None);
        let texts: Vec<usize> = lines.iter().map(|l| l.text.len()).collect();
        assert_eq!(lines[0].text, "one");
        assert_eq!(lines[1].text, "two");
        assert_eq!(texts[2..4], [MAX_LINE, 10]);
        assert_eq!(lines[4].text, "last-without-newline");
        assert!(
            lines
                .iter()
                .all(|l| l.stream == LogStream::Stderr && l.container == "c1")
        );
    }
}
