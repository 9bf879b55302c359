//! A LAN on one machine: a "switch" network namespace holding a bridge, and one network
//! namespace per board attached to it by a veth pair. Board `i` has address `10.77.0.(i+1)`.
//! Partitions are iptables DROP rules in the switch namespace (bridged traffic passes
//! iptables there: br_netfilter's `bridge-nf-call-iptables` is 1 in a new namespace).
//!
//! Namespaces are made with `ip netns add` and named `bramble-<pid>-<n>-...`, so parallel test
//! processes never collide; entered with `nsenter --net=` (never `ip netns exec`); deleted on
//! drop.
//!
//! Used by the cluster engine's tests (`cluster/tests/it`) and the multi-board tests of
//! `bramble up` (`agent/tests/cluster`).

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Condvar, Mutex, PoisonError};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Whether a LAN of this process has the process itself on it ([`Lan::join_here`]): every LAN
/// uses the same addresses, so a process on two at once would reach either's boards. Tests of
/// one process that join theirs (`cargo test` runs them on threads) take turns.
static JOINED: (Mutex<bool>, Condvar) = (Mutex::new(false), Condvar::new());

/// This process's turn on a LAN of its own; given back on drop.
struct Joined;

impl Joined {
    fn wait() -> Joined {
        let (joined, turn) = &JOINED;
        let mut joined = joined.lock().unwrap_or_else(PoisonError::into_inner);
        while *joined {
            joined = turn.wait(joined).unwrap_or_else(PoisonError::into_inner);
        }
        *joined = true;
        Joined
    }
}

impl Drop for Joined {
    fn drop(&mut self) {
        let (joined, turn) = &JOINED;
        *joined.lock().unwrap_or_else(PoisonError::into_inner) = false;
        turn.notify_one();
    }
}

pub struct Lan {
    n: u32,
    prefix: String,
    switch: String,
    boards: Vec<String>,
    partitioned: bool,
    /// Set once the process joined this LAN (dropped after the LAN is gone).
    joined: Option<Joined>,
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

impl Lan {
    /// A switch and `boards` attached namespaces.
    pub fn new(boards: usize) -> Result<Lan, String> {
        remove_orphans();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("bramble-{}-{n}", std::process::id());
        let switch = format!("{prefix}-lan");
        let mut lan = Lan {
            n,
            prefix,
            switch: switch.clone(),
            boards: Vec::new(),
            partitioned: false,
            joined: None,
        };
        run("ip", &["netns", "add", &switch])?;
        run(
            "ip",
            &["-n", &switch, "link", "add", "br0", "type", "bridge"],
        )?;
        run("ip", &["-n", &switch, "link", "set", "br0", "up"])?;
        run("ip", &["-n", &switch, "link", "set", "lo", "up"])?;
        for i in 0..boards {
            lan.add_board(i)?;
        }
        Ok(lan)
    }

    fn add_board(&mut self, i: usize) -> Result<(), String> {
        let ns = format!("{}-b{i}", self.prefix);
        run("ip", &["netns", "add", &ns])?;
        self.boards.push(ns.clone());
        self.attach(&format!("v{i}"), "eth0", &ns)?;
        let addr = format!("{}/24", Self::address(i));
        run("ip", &["-n", &ns, "addr", "add", &addr, "dev", "eth0"])?;
        run("ip", &["-n", &ns, "link", "set", "eth0", "up"])?;
        run("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
        Ok(())
    }

    /// A veth pair: `port` on the switch's bridge, up; its peer `peer` moved into `into` (a
    /// namespace's name, or a process id: that process's namespace).
    fn attach(&self, port: &str, peer: &str, into: &str) -> Result<(), String> {
        run(
            "ip",
            &[
                "-n",
                &self.switch,
                "link",
                "add",
                port,
                "type",
                "veth",
                "peer",
                "name",
                peer,
                "netns",
                into,
            ],
        )?;
        run(
            "ip",
            &[
                "-n",
                &self.switch,
                "link",
                "set",
                port,
                "master",
                "br0",
                "up",
            ],
        )
    }

    /// The address of this process on the LAN once [`Lan::join_here`] plugged it in.
    pub const LAPTOP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 250);

    /// Plugs the calling process's own network namespace into the switch, as a laptop on the
    /// boards' LAN at [`Lan::LAPTOP`]: the test itself, and what it runs (a browser), then
    /// reach the boards at their addresses. Only for a process in a private namespace (the
    /// harness's, as root): the host's own network is never touched. The link goes when the
    /// switch's namespace is deleted on drop. One LAN of a process at a time: a second waits
    /// until the first is dropped.
    pub fn join_here(&mut self) -> Result<Ipv4Addr, String> {
        let ns = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/net")).ok();
        if ns("self").is_none() || ns("self") == ns("1") {
            return Err(
                "this process is in the host's network namespace: it does not join a test LAN"
                    .into(),
            );
        }
        if self.joined.is_none() {
            self.joined = Some(Joined::wait());
        }
        let here = format!("lan{}", self.n);
        self.attach("vlaptop", &here, &std::process::id().to_string())?;
        let addr = format!("{}/24", Self::LAPTOP);
        run("ip", &["addr", "add", &addr, "dev", &here])?;
        run("ip", &["link", "set", &here, "up"])?;
        Ok(Self::LAPTOP)
    }

    /// Board `i`'s LAN address.
    pub fn address(i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, 0, u8::try_from(i + 1).unwrap_or(254))
    }

    /// The path of board `i`'s network namespace.
    pub fn netns(&self, i: usize) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.boards[i])
    }

    fn iptables(&self, args: &[&str]) -> Result<(), String> {
        let net = format!("--net=/run/netns/{}", self.switch);
        let mut all = vec![net.as_str(), "iptables", "-w"];
        all.extend_from_slice(args);
        run("nsenter", &all)
    }

    /// Cuts every board of `side` off from every board not in it (both directions).
    pub fn partition(&mut self, side: &[usize]) -> Result<(), String> {
        for &a in side {
            for b in (0..self.boards.len()).filter(|b| !side.contains(b)) {
                self.cut(a, b)?;
            }
        }
        Ok(())
    }

    /// Cuts boards `a` and `b` off from each other (both directions); both still reach the
    /// others.
    pub fn cut(&mut self, a: usize, b: usize) -> Result<(), String> {
        let (a, b) = (Self::address(a).to_string(), Self::address(b).to_string());
        self.iptables(&["-A", "FORWARD", "-s", &a, "-d", &b, "-j", "DROP"])?;
        self.iptables(&["-A", "FORWARD", "-s", &b, "-d", &a, "-j", "DROP"])?;
        self.partitioned = true;
        Ok(())
    }

    /// Removes every partition.
    pub fn heal(&mut self) -> Result<(), String> {
        self.iptables(&["-F", "FORWARD"])?;
        self.partitioned = false;
        Ok(())
    }
}

/// Deletes namespaces of this naming scheme whose test process is gone (killed before its
/// `Drop` ran): `bramble-<pid>-<n>-lan` / `-b<i>` with no process `<pid>`.
fn remove_orphans() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let mut parts = name.split('-');
        let (Some("bramble"), Some(pid), Some(n), Some(last), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            continue;
        };
        let ours = pid.parse::<u32>().is_ok()
            && n.parse::<u32>().is_ok()
            && (last == "lan"
                || last
                    .strip_prefix('b')
                    .is_some_and(|i| i.parse::<u32>().is_ok()));
        if ours && !std::path::Path::new("/proc").join(pid).exists() {
            let _ = run("ip", &["netns", "del", &name]);
        }
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for ns in self.boards.iter().chain(std::iter::once(&self.switch)) {
            let _ = run("ip", &["netns", "del", ns]);
        }
    }
}
