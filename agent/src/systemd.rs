//! The systemd notification protocol (`sd_notify`), without libsystemd: readiness
//! (`Type=notify`), watchdog keep-alives (`WatchdogSec=`), and stopping.
//!
//! Outside systemd (`NOTIFY_SOCKET` unset) every call does nothing.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Sends one notification (`READY=1`, `WATCHDOG=1`, `STOPPING=1`, `STATUS=...`).
/// Returns whether a notification socket was there.
pub fn notify(state: &str) -> bool {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return false;
    };
    let Ok(socket) = UnixDatagram::unbound() else {
        return false;
    };
    let bytes = path.as_encoded_bytes();
    let sent = if let Some(abstract_name) = bytes.strip_prefix(b"@") {
        // An abstract socket: the name starts with a NUL byte.
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(abstract_name)
            .and_then(|addr| socket.send_to_addr(state.as_bytes(), &addr))
    } else {
        socket.send_to(state.as_bytes(), std::path::Path::new(&path))
    };
    if let Err(e) = &sent {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
    sent.is_ok()
}

/// The watchdog interval systemd expects pings at (`WATCHDOG_USEC`, for this process).
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Some(pid) = std::env::var("WATCHDOG_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        && pid != std::process::id()
    {
        return None;
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// Pings the watchdog at half its interval while `alive` says the node works (the gateway
/// answers and the runtime task runs); a node that hangs stops pinging and systemd restarts it.
/// Returns at once when systemd expects no pings.
pub async fn watchdog<F, Fut>(alive: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let Some(interval) = watchdog_interval() else {
        return;
    };
    let mut ticker = tokio::time::interval(interval / 2);
    loop {
        ticker.tick().await;
        if alive().await {
            notify("WATCHDOG=1");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_reach_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        // SAFETY: this test is the only code in its process that reads NOTIFY_SOCKET while it
        // runs (the other tests of this module do not touch the environment).
        unsafe { std::env::set_var("NOTIFY_SOCKET", &path) };
        assert!(notify("READY=1"));
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        // SAFETY: as above.
        unsafe { std::env::remove_var("NOTIFY_SOCKET") };
        assert!(!notify("READY=1"), "no socket, no notification");
    }
}
