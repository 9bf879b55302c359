//! The Linux GPIO character device backend (`gpiocdev`, uAPI v2).
//!
//! Chips are chosen by **label** (`pinctrl-rp1` on a Pi 5, `pinctrl-bcm2711` on a Pi 4,
//! `pinctrl-bcm2835` on older Pis, by default) and lines by **name** (`GPIO17`), never by
//! chip number or offset: the Pi 5 renumbered its chips twice. The name index is built once,
//! at start, from the chips whose label is configured, in the order of the labels; a name
//! found twice keeps its first line.
//!
//! Lines are requested with consumer `bramble`, active-high (the broker applies
//! `active-low`), inputs with edge detection on both edges, the bias and the kernel
//! debounce of the grant (debounce needs Linux 5.10). Each input has a tokio task that
//! reads its edge events through `AsyncFd` and publishes them with the kernel's timestamp
//! (`CLOCK_MONOTONIC`) and line sequence number. (`gpiocdev::tokio::AsyncRequest` is not
//! used: its constructor unwraps the `AsyncFd` registration.)
//!
//! Untested on real pins here: the development machine's kernel has no GPIO support.

use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::sync::Arc;

use gpiocdev::Request;
use gpiocdev::line::{Bias as CdevBias, EdgeDetection, EdgeKind, Offset, Value};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::backend::{BackendError, Edge, EventBus, GpioBackend, InputConfig, LineHandle};
use super::grants::Bias;

/// The consumer name the kernel shows for bramble's lines.
const CONSUMER: &str = "bramble";

const EBUSY: i32 = 16;

/// A chip bramble may use.
#[derive(Debug, Clone)]
pub struct FoundChip {
    /// `/dev/gpiochipN`.
    pub path: PathBuf,
    /// The chip's label, e.g. `pinctrl-bcm2711`.
    pub label: String,
}

/// The chips whose label is in `labels`, in the order of `labels`. Empty where the kernel
/// has no GPIO chips (or no GPIO support at all).
pub fn find_chips(labels: &[String]) -> Vec<FoundChip> {
    let paths = match gpiocdev::chip::chips() {
        Ok(paths) => paths,
        Err(e) => {
            debug!("no GPIO chips: {e}");
            return Vec::new();
        }
    };
    let mut chips: Vec<FoundChip> = Vec::new();
    for path in paths {
        match gpiocdev::Chip::from_path(&path).and_then(|chip| chip.info()) {
            Ok(info) if labels.contains(&info.label) => chips.push(FoundChip {
                path,
                label: info.label,
            }),
            Ok(info) => debug!(chip = %path.display(), label = info.label, "GPIO chip not used"),
            Err(e) => debug!(chip = %path.display(), "cannot read GPIO chip: {e}"),
        }
    }
    chips.sort_by_key(|c| labels.iter().position(|l| *l == c.label));
    chips
}

struct CdevLineRef {
    name: String,
    chip: PathBuf,
    offset: Offset,
}

/// GPIO lines of the kernel's character devices.
pub struct CdevGpio {
    lines: Vec<CdevLineRef>,
    bus: Arc<EventBus>,
}

impl CdevGpio {
    /// Indexes the named lines of `chips`; edges of requested inputs go to `bus`.
    pub fn open(chips: &[FoundChip], bus: Arc<EventBus>) -> Result<CdevGpio, BackendError> {
        let mut lines: Vec<CdevLineRef> = Vec::new();
        for found in chips {
            let chip = gpiocdev::Chip::from_path(&found.path)
                .map_err(|e| gpio_error(&found.path.display().to_string(), &e))?;
            let infos = chip
                .line_info_iter()
                .map_err(|e| gpio_error(&found.path.display().to_string(), &e))?;
            for info in infos.flatten() {
                if info.name.is_empty() {
                    continue;
                }
                if lines.iter().any(|l| l.name == info.name) {
                    debug!(line = info.name, chip = %found.path.display(), "duplicate line name ignored");
                    continue;
                }
                lines.push(CdevLineRef {
                    name: info.name,
                    chip: found.path.clone(),
                    offset: info.offset,
                });
            }
            info!(chip = %found.path.display(), label = found.label, "using GPIO chip");
        }
        Ok(CdevGpio { lines, bus })
    }

    fn find(&self, line: &str) -> Result<&CdevLineRef, BackendError> {
        self.lines
            .iter()
            .find(|l| l.name == line)
            .ok_or_else(|| BackendError::UnknownLine(line.to_owned()))
    }
}

/// The errno inside a gpiocdev error, if any.
fn errno(e: &gpiocdev::Error) -> Option<i32> {
    if let gpiocdev::Error::Os(errno) = e {
        return Some(errno.0);
    }
    // uAPI errors print the io::Error text: "... (os error N)".
    let text = e.to_string();
    let (_, tail) = text.rsplit_once("(os error ")?;
    tail.trim_end_matches(|c: char| !c.is_ascii_digit())
        .parse()
        .ok()
}

fn gpio_error(context: &str, e: &gpiocdev::Error) -> BackendError {
    if errno(e) == Some(EBUSY) {
        return BackendError::Busy(format!(
            "{context} is in use by another program or kernel driver (EBUSY)"
        ));
    }
    BackendError::Io {
        context: context.to_owned(),
        source: std::io::Error::other(e.to_string()),
    }
}

impl GpioBackend for CdevGpio {
    fn name(&self) -> &'static str {
        "gpiocdev"
    }

    fn line_names(&self) -> Vec<String> {
        self.lines.iter().map(|l| l.name.clone()).collect()
    }

    fn has_line(&self, line: &str) -> bool {
        self.lines.iter().any(|l| l.name == line)
    }

    fn request_input(
        &self,
        line: &str,
        config: InputConfig,
    ) -> Result<Box<dyn LineHandle>, BackendError> {
        let found = self.find(line)?;
        // The event reader is a tokio task: check for a runtime first (AsyncFd would
        // panic without one).
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            BackendError::Unsupported("GPIO inputs need the tokio runtime".to_owned())
        })?;
        let mut builder = Request::builder();
        builder
            .on_chip(found.chip.clone())
            .with_consumer(CONSUMER)
            .with_line(found.offset)
            .as_input()
            .with_edge_detection(EdgeDetection::BothEdges);
        if let Some(bias) = config.bias {
            builder.with_bias(match bias {
                Bias::PullUp => CdevBias::PullUp,
                Bias::PullDown => CdevBias::PullDown,
                Bias::Disabled => CdevBias::Disabled,
            });
        }
        if let Some(period) = config.debounce {
            builder.with_debounce_period(period);
        }
        let request = Arc::new(
            builder
                .request()
                .map_err(|e| gpio_error(&format!("requesting {line} as input"), &e))?,
        );
        let fd = {
            let _enter = runtime.enter();
            // SAFETY: the fd is the request's file, owned by the `Request` that the
            // `SharedRequest` keeps alive through its `Arc` for the whole life of the
            // `AsyncFd`; a `Request` never closes or replaces its file, so `as_raw_fd`
            // always returns the same open fd.
            unsafe {
                AsyncFd::register_with_interest(
                    SharedRequest(Arc::clone(&request)),
                    Interest::READABLE,
                )
            }
            .map_err(|e| BackendError::Io {
                context: format!("watching {line} for edges"),
                source: std::io::Error::other(e.to_string()),
            })?
        };
        let task = runtime.spawn(read_edges(fd, line.to_owned(), Arc::clone(&self.bus)));
        Ok(Box::new(CdevLine {
            request,
            offset: found.offset,
            name: line.to_owned(),
            output: false,
            events: Some(task),
        }))
    }

    fn request_output(&self, line: &str, level: u8) -> Result<Box<dyn LineHandle>, BackendError> {
        let found = self.find(line)?;
        let request = Request::builder()
            .on_chip(found.chip.clone())
            .with_consumer(CONSUMER)
            .with_line(found.offset)
            .as_output(value_of(level)?)
            .request()
            .map_err(|e| gpio_error(&format!("requesting {line} as output"), &e))?;
        Ok(Box::new(CdevLine {
            request: Arc::new(request),
            offset: found.offset,
            name: line.to_owned(),
            output: true,
            events: None,
        }))
    }
}

fn value_of(level: u8) -> Result<Value, BackendError> {
    match level {
        0 => Ok(Value::Inactive),
        1 => Ok(Value::Active),
        other => Err(BackendError::Invalid(format!(
            "level {other} is not 0 or 1"
        ))),
    }
}

/// The request's fd, for `AsyncFd`, shared with the line handle.
struct SharedRequest(Arc<Request>);

impl AsRawFd for SharedRequest {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// Publishes the edges of one input until the request fails or the task is aborted.
async fn read_edges(fd: AsyncFd<SharedRequest>, line: String, bus: Arc<EventBus>) {
    loop {
        let mut guard = match fd.readable().await {
            Ok(guard) => guard,
            Err(e) => {
                warn!(line, "stopped watching for edges: {e}");
                return;
            }
        };
        let request = &fd.get_ref().0;
        loop {
            match request.has_edge_event() {
                Ok(true) => {}
                Ok(false) => {
                    guard.clear_ready();
                    break;
                }
                Err(e) => {
                    warn!(line, "stopped watching for edges: {e}");
                    return;
                }
            }
            match request.read_edge_event() {
                Ok(event) => {
                    let edge = match event.kind {
                        EdgeKind::Rising => Edge::Rising,
                        EdgeKind::Falling => Edge::Falling,
                    };
                    bus.emit(&line, edge, event.timestamp_ns, u64::from(event.line_seqno));
                }
                Err(e) => {
                    warn!(line, "stopped watching for edges: {e}");
                    return;
                }
            }
        }
    }
}

struct CdevLine {
    request: Arc<Request>,
    offset: Offset,
    name: String,
    output: bool,
    events: Option<JoinHandle<()>>,
}

impl LineHandle for CdevLine {
    fn read(&self) -> Result<u8, BackendError> {
        match self.request.value(self.offset) {
            Ok(Value::Active) => Ok(1),
            Ok(Value::Inactive) => Ok(0),
            Err(e) => Err(gpio_error(&format!("reading {}", self.name), &e)),
        }
    }

    fn write(&self, level: u8) -> Result<(), BackendError> {
        if !self.output {
            return Err(BackendError::Unsupported(format!(
                "{} is requested as an input",
                self.name
            )));
        }
        self.request
            .set_value(self.offset, value_of(level)?)
            .map_err(|e| gpio_error(&format!("setting {}", self.name), &e))
    }
}

impl Drop for CdevLine {
    fn drop(&mut self) {
        // The task holds the other reference to the request: the line is released when
        // the aborted task is dropped, a moment later (`Hardware` retries EBUSY).
        if let Some(task) = self.events.take() {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_chips_here_means_an_empty_list() {
        // The build machine has no GPIO support; on a Pi this finds the header's chip.
        let chips = find_chips(&["no-such-label".to_owned()]);
        assert!(chips.is_empty());
    }

    #[test]
    fn errno_from_gpiocdev_errors() {
        let busy = gpiocdev::Error::from(std::io::Error::from_raw_os_error(EBUSY));
        assert_eq!(errno(&busy), Some(EBUSY));
        assert!(matches!(gpio_error("GPIO17", &busy), BackendError::Busy(_)));
        let other = gpiocdev::Error::InvalidArgument("x".into());
        assert_eq!(errno(&other), None);
        assert!(matches!(
            gpio_error("GPIO17", &other),
            BackendError::Io { .. }
        ));
    }
}
