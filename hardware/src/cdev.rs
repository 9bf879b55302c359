//! The Linux GPIO character device backend (`gpiocdev`, uAPI v2).
//!
//! Chips are chosen by **label** (`pinctrl-rp1` on a Pi 5, `pinctrl-bcm2711` on a Pi 4,
//! `pinctrl-bcm2835` on older Pis, by default) and lines by **name** (`GPIO17`), never by
//! chip number or offset: the Pi 5 renumbered its chips twice. The name index is built once,
//! at start, from the chips whose label is configured, in the order of the labels; a name
//! found twice keeps its first line. Both choices are pure functions ([`choose_chips`],
//! [`index_lines`]) fed with what the kernel reports.
//!
//! Lines are requested with consumer `bramble`, active-high (the broker applies
//! `active-low`), inputs with edge detection on both edges, the bias and the kernel
//! debounce of the grant (debounce needs Linux 5.10), and the largest kernel event buffer
//! ([`KERNEL_EVENT_BUFFER`]). Each input has a tokio task that
//! reads its edge events through `AsyncFd` and publishes them with the kernel's timestamp
//! (`CLOCK_MONOTONIC`) and line sequence number. (`gpiocdev::tokio::AsyncRequest` is not
//! used: its constructor unwraps the `AsyncFd` registration.)
//!
//! Untested on real pins here: the development machine's kernel has no GPIO support.

use std::collections::HashSet;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use gpiocdev::Request;
use gpiocdev::line::{Bias as CdevBias, EdgeDetection, EdgeKind, Offset, Value};
use gpiocdev::request::Builder;
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
#[derive(Debug, Clone, PartialEq, Eq)]
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
    let mut present: Vec<FoundChip> = Vec::new();
    for path in paths {
        match gpiocdev::Chip::from_path(&path).and_then(|chip| chip.info()) {
            Ok(info) => present.push(FoundChip {
                path,
                label: info.label,
            }),
            Err(e) => debug!(chip = %path.display(), "cannot read GPIO chip: {e}"),
        }
    }
    choose_chips(present, labels)
}

/// Of the chips `present` (in any order: the kernel's numbering means nothing), those whose
/// label is in `labels`, in the order of `labels`; chips with the same label keep their
/// order in `present`.
pub fn choose_chips(present: Vec<FoundChip>, labels: &[String]) -> Vec<FoundChip> {
    let mut chosen: Vec<(usize, FoundChip)> = Vec::new();
    for chip in present {
        match labels.iter().position(|l| *l == chip.label) {
            Some(rank) => chosen.push((rank, chip)),
            None => debug!(chip = %chip.path.display(), label = chip.label, "GPIO chip not used"),
        }
    }
    // Stable: equal labels keep their order.
    chosen.sort_by_key(|(rank, _)| *rank);
    chosen.into_iter().map(|(_, chip)| chip).collect()
}

/// Where a named line is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineRef {
    /// The line's name, e.g. `GPIO17`.
    pub name: String,
    /// Its chip.
    pub chip: PathBuf,
    /// Its offset on the chip.
    pub offset: Offset,
}

/// The name index of the lines of `chips` (in order of preference, each with its lines as
/// `(offset, name)` in any order): unnamed lines are left out, and a name found again keeps
/// its first line (the earlier chip, then the lower offset). Returns the index, in that
/// order, and the lines left out for a duplicate name.
pub fn index_lines(chips: &[(FoundChip, Vec<(Offset, String)>)]) -> (Vec<LineRef>, Vec<LineRef>) {
    let mut index: Vec<LineRef> = Vec::new();
    let mut duplicates: Vec<LineRef> = Vec::new();
    let mut seen: HashSet<String> = HashSet::new();
    for (chip, lines) in chips {
        let mut lines: Vec<&(Offset, String)> = lines.iter().collect();
        lines.sort_by_key(|(offset, _)| *offset);
        for (offset, name) in lines {
            if name.is_empty() {
                continue;
            }
            let line = LineRef {
                name: name.clone(),
                chip: chip.path.clone(),
                offset: *offset,
            };
            if seen.insert(name.clone()) {
                index.push(line);
            } else {
                duplicates.push(line);
            }
        }
    }
    (index, duplicates)
}

/// Edge events the kernel keeps for one input until bramble reads them; when it is full the
/// oldest is dropped (the gap shows in `line_seqno`). The kernel's default is 16 per line;
/// this is its largest (it caps a bigger size at 16 × 64 lines).
pub const KERNEL_EVENT_BUFFER: u32 = 1024;

/// The request of one input: consumer `bramble`, active-high, both edges, the bias and
/// debounce of `config`, the largest kernel event buffer.
fn input_request(chip: &Path, offset: Offset, config: InputConfig) -> Builder {
    let mut builder = Request::builder();
    builder
        .on_chip(chip)
        .with_consumer(CONSUMER)
        .with_line(offset)
        .as_input()
        .with_edge_detection(EdgeDetection::BothEdges)
        .with_kernel_event_buffer_size(KERNEL_EVENT_BUFFER);
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
    builder
}

/// GPIO lines of the kernel's character devices.
pub struct CdevGpio {
    lines: Vec<LineRef>,
    bus: Arc<EventBus>,
    /// Numbers the input requests, for [`super::backend::EdgeEvent::request`].
    requests: AtomicU64,
}

impl CdevGpio {
    /// Indexes the named lines of `chips` (see [`index_lines`]); edges of requested inputs
    /// go to `bus`.
    pub fn open(chips: &[FoundChip], bus: Arc<EventBus>) -> Result<CdevGpio, BackendError> {
        let mut described: Vec<(FoundChip, Vec<(Offset, String)>)> = Vec::new();
        for found in chips {
            let chip = gpiocdev::Chip::from_path(&found.path)
                .map_err(|e| gpio_error(&found.path.display().to_string(), &e))?;
            let infos = chip
                .line_info_iter()
                .map_err(|e| gpio_error(&found.path.display().to_string(), &e))?;
            let lines = infos
                .flatten()
                .map(|info| (info.offset, info.name))
                .collect();
            described.push((found.clone(), lines));
            info!(chip = %found.path.display(), label = found.label, "using GPIO chip");
        }
        let (lines, duplicates) = index_lines(&described);
        for line in duplicates {
            debug!(line = line.name, chip = %line.chip.display(), offset = line.offset, "duplicate line name ignored");
        }
        Ok(CdevGpio {
            lines,
            bus,
            requests: AtomicU64::new(0),
        })
    }

    fn find(&self, line: &str) -> Result<&LineRef, BackendError> {
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
        let request_id = self.requests.fetch_add(1, Ordering::Relaxed) + 1;
        let request = Arc::new(
            input_request(&found.chip, found.offset, config)
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
        let task = runtime.spawn(read_edges(
            fd,
            line.to_owned(),
            request_id,
            Arc::clone(&self.bus),
        ));
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

/// Publishes the edges of one input (request number `request_id`) until the request fails or
/// the task is aborted.
async fn read_edges(fd: AsyncFd<SharedRequest>, line: String, request_id: u64, bus: Arc<EventBus>) {
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
                    bus.emit(
                        &line,
                        edge,
                        event.timestamp_ns,
                        u64::from(event.line_seqno),
                        request_id,
                    );
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

    fn chip(path: &str, label: &str) -> FoundChip {
        FoundChip {
            path: PathBuf::from(path),
            label: label.to_owned(),
        }
    }

    fn default_labels() -> Vec<String> {
        super::super::HardwareConfig::default().chip_labels
    }

    /// The header lines as a Pi names them: `GPIO0`..`GPIO27`, then what the board wires.
    fn header(extra: &[&str]) -> Vec<(Offset, String)> {
        (0..28)
            .map(|n| format!("GPIO{n}"))
            .chain(extra.iter().map(|s| (*s).to_owned()))
            .enumerate()
            .map(|(offset, name)| (offset as Offset, name))
            .collect()
    }

    #[test]
    fn chips_are_chosen_by_label_whatever_their_number() {
        let labels = default_labels();
        // Pi 5 since Linux 6.6.45: RP1 is gpiochip0, the SoC's chips moved to 10 and up.
        let pi5 = vec![
            chip("/dev/gpiochip0", "pinctrl-rp1"),
            chip("/dev/gpiochip10", "gpio-brcmstb@107d508500"),
            chip("/dev/gpiochip11", "gpio-brcmstb@107d508520"),
            chip("/dev/gpiochip12", "gpio-brcmstb@107d517c00"),
            chip("/dev/gpiochip13", "gpio-brcmstb@107d517c20"),
        ];
        assert_eq!(
            choose_chips(pi5, &labels),
            [chip("/dev/gpiochip0", "pinctrl-rp1")]
        );
        // Pi 5 before: RP1 was gpiochip4, listed last.
        let pi5_old = vec![
            chip("/dev/gpiochip0", "gpio-brcmstb@107d508500"),
            chip("/dev/gpiochip1", "gpio-brcmstb@107d508520"),
            chip("/dev/gpiochip2", "gpio-brcmstb@107d517c00"),
            chip("/dev/gpiochip3", "gpio-brcmstb@107d517c20"),
            chip("/dev/gpiochip4", "pinctrl-rp1"),
        ];
        assert_eq!(
            choose_chips(pi5_old, &labels),
            [chip("/dev/gpiochip4", "pinctrl-rp1")]
        );
        // Pi 4 and Pi 3/Zero: the SoC's pin controller, not the firmware's expander.
        let pi4 = vec![
            chip("/dev/gpiochip1", "raspberrypi-exp-gpio"),
            chip("/dev/gpiochip0", "pinctrl-bcm2711"),
        ];
        assert_eq!(
            choose_chips(pi4, &labels),
            [chip("/dev/gpiochip0", "pinctrl-bcm2711")]
        );
        let pi3 = vec![
            chip("/dev/gpiochip0", "pinctrl-bcm2835"),
            chip("/dev/gpiochip1", "raspberrypi-exp-gpio"),
        ];
        assert_eq!(
            choose_chips(pi3, &labels),
            [chip("/dev/gpiochip0", "pinctrl-bcm2835")]
        );
        // Several known chips: in the order of the labels, not of the paths; chips with
        // the same label keep the order they were listed in.
        let mixed = vec![
            chip("/dev/gpiochip0", "pinctrl-bcm2835"),
            chip("/dev/gpiochip3", "pinctrl-bcm2711"),
            chip("/dev/gpiochip7", "pinctrl-rp1"),
            chip("/dev/gpiochip2", "pinctrl-bcm2711"),
        ];
        assert_eq!(
            choose_chips(mixed.clone(), &labels),
            [
                chip("/dev/gpiochip7", "pinctrl-rp1"),
                chip("/dev/gpiochip3", "pinctrl-bcm2711"),
                chip("/dev/gpiochip2", "pinctrl-bcm2711"),
                chip("/dev/gpiochip0", "pinctrl-bcm2835"),
            ]
        );
        // The operator's order wins; an unknown board has nothing to use.
        let custom = vec!["pinctrl-bcm2835".to_owned(), "pinctrl-rp1".to_owned()];
        assert_eq!(
            choose_chips(mixed, &custom),
            [
                chip("/dev/gpiochip0", "pinctrl-bcm2835"),
                chip("/dev/gpiochip7", "pinctrl-rp1"),
            ]
        );
        assert!(choose_chips(vec![chip("/dev/gpiochip0", "gpio-mockup-A")], &labels).is_empty());
        assert!(choose_chips(Vec::new(), &labels).is_empty());
    }

    #[test]
    fn lines_are_indexed_by_name_first_one_wins() {
        // A Pi 4: GPIO0/1 are named ID_SDA/ID_SCL there; a renumbered RP1 also present
        // (preferred), and unnamed lines.
        let mut bcm2711 = header(&["RGMII_MDIO", "", "SD_CLK_R"]);
        bcm2711[0].1 = "ID_SDA".to_owned();
        bcm2711[1].1 = "ID_SCL".to_owned();
        // Listed out of offset order, with a name twice on the same chip.
        let mut rp1 = header(&["PCIE_RP1_WAKE", "FAN_TACH", "", "FAN_TACH"]);
        rp1.reverse();
        let chips = vec![
            (chip("/dev/gpiochip4", "pinctrl-rp1"), rp1),
            (chip("/dev/gpiochip0", "pinctrl-bcm2711"), bcm2711),
        ];
        let (index, duplicates) = index_lines(&chips);
        let find = |name: &str| index.iter().find(|l| l.name == name).cloned();
        // GPIO17 is RP1's, offset 17: the first chip wins.
        assert_eq!(
            find("GPIO17"),
            Some(LineRef {
                name: "GPIO17".into(),
                chip: "/dev/gpiochip4".into(),
                offset: 17,
            })
        );
        // Names only the second chip has come from it.
        assert_eq!(
            find("ID_SDA").map(|l| (l.chip, l.offset)),
            Some(("/dev/gpiochip0".into(), 0))
        );
        assert_eq!(
            find("SD_CLK_R").map(|l| (l.chip, l.offset)),
            Some(("/dev/gpiochip0".into(), 30))
        );
        // A name twice on one chip: the lower offset.
        assert_eq!(find("FAN_TACH").map(|l| l.offset), Some(29));
        assert!(find("").is_none(), "unnamed lines are not indexed");
        // Every name once, in chip order then offset order.
        let names: Vec<&str> = index.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names.len(), names.iter().collect::<HashSet<_>>().len());
        assert_eq!(&names[..3], ["GPIO0", "GPIO1", "GPIO2"]);
        assert_eq!(names.iter().position(|n| *n == "ID_SDA"), Some(30));
        // What was left out: the second FAN_TACH and the bcm2711's GPIO2..GPIO27.
        assert_eq!(duplicates.len(), 1 + 26);
        assert_eq!(
            (duplicates[0].name.as_str(), duplicates[0].offset),
            ("FAN_TACH", 31)
        );
        assert!(
            duplicates[1..]
                .iter()
                .all(|l| l.chip == Path::new("/dev/gpiochip0"))
        );
    }

    #[test]
    fn inputs_ask_for_the_largest_kernel_event_buffer() {
        let config = InputConfig {
            bias: Some(Bias::PullUp),
            debounce: Some(std::time::Duration::from_millis(5)),
        };
        let mut expected = Request::builder();
        expected
            .on_chip("/dev/gpiochip0")
            .with_consumer("bramble")
            .with_line(17)
            .as_input()
            .with_edge_detection(EdgeDetection::BothEdges)
            .with_kernel_event_buffer_size(1024)
            .with_bias(CdevBias::PullUp)
            .with_debounce_period(std::time::Duration::from_millis(5));
        let built = input_request(Path::new("/dev/gpiochip0"), 17, config);
        assert!(
            built == expected,
            "the input request is not the expected one"
        );
        // Without the buffer size it would be the kernel's default (16 events).
        let mut default_buffer = expected.clone();
        default_buffer.with_kernel_event_buffer_size(0);
        assert!(built != default_buffer);
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
