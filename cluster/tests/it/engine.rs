//! The engine: starting, reporting, restarting, stopping nats-server; clear errors.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use bramble_cluster::engine::{
    EngineError, EngineState, JetStreamConfig, NatsServer, ServerVersion, SyncPolicy,
};
use bytes::Bytes;

use crate::shelf::{Shelf, TestResult, binary};

/// Whether any process's command line mentions `needle`.
fn process_mentioning(needle: &Path) -> Option<u32> {
    let needle = needle.to_string_lossy().into_owned();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline"))
            && String::from_utf8_lossy(&cmdline).contains(&needle)
        {
            return Some(pid);
        }
    }
    None
}

fn alive(pid: u32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok()
        && std::fs::read_to_string(format!("/proc/{pid}/status"))
            .map(|s| !s.contains("State:\tZ"))
            .unwrap_or(false)
}

pub async fn starts_reports_and_restarts_after_sigkill() -> TestResult {
    let mut shelf = Shelf::new(1)?;
    let config = shelf.config(0, None, true);
    shelf.start(0, config).await?;
    let board = &shelf.boards[0];
    let server = board.server();

    let printed = std::process::Command::new(binary())
        .arg("--version")
        .output()?;
    let expected = ServerVersion::parse(&String::from_utf8_lossy(&printed.stdout)).unwrap();
    assert_eq!(server.version(), expected);
    let rss = server.rss().await.ok_or("no RSS")?;
    assert!(rss > 1 << 20 && rss < 200 << 20, "RSS {rss}");
    eprintln!(
        "measured: nats-server {} idle RSS, JetStream on, standalone: {:.1} MiB",
        server.version(),
        rss as f64 / 1048576.0
    );
    let env = std::fs::read_to_string(format!("/proc/{}/environ", server.pid().unwrap()))?;
    for set in ["GOMEMLIMIT=50331648B", "GOGC=50"] {
        assert!(env.split('\0').any(|v| v == set), "{set}: {env:?}");
    }

    let bucket = board.bucket("things", 1).await?;
    bucket.put("k", Bytes::from_static(b"before")).await?;

    let mut state = server.state();
    let old = server.pid().unwrap();
    let killed = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old as i32),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    let restarted = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            state.changed().await?;
            if let EngineState::Running { pid, restarts } = state.borrow().clone() {
                return Ok::<_, tokio::sync::watch::error::RecvError>((pid, restarts));
            }
        }
    })
    .await??;
    eprintln!(
        "measured: nats-server back after SIGKILL in {:?}",
        killed.elapsed()
    );
    assert_ne!(restarted.0, old);
    assert_eq!(restarted.1, 1);
    assert!(!alive(old));
    // The client reconnects by itself; the data is on disk.
    let value = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Ok(v) = bucket.get("k").await {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await?;
    assert_eq!(value.as_deref(), Some(&b"before"[..]));
    Ok(())
}

pub async fn refuses_bad_setups_with_clear_errors() -> TestResult {
    let mut shelf = Shelf::new(2)?;
    let scripts = tempfile::tempdir()?;
    let fake = |name: &str, text: &str| -> TestResult<std::path::PathBuf> {
        let path = scripts.path().join(name);
        std::fs::write(&path, format!("#!/bin/sh\necho '{text}'\n"))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        Ok(path)
    };

    let start = async |shelf: &mut Shelf, config| -> TestResult<EngineError> {
        match shelf.boards[0].run(NatsServer::start(config)).await? {
            Ok(_) => Err("started although it should not".into()),
            Err(e) => Ok(e),
        }
    };

    let mut config = shelf.config(0, None, true);
    config.binary = "/nonexistent/nats-server".into();
    let e = start(&mut shelf, config).await?;
    assert!(matches!(e, EngineError::BinaryMissing { .. }), "{e:?}");
    assert!(
        e.to_string().contains("Debian's `nats-server` package"),
        "{e}"
    );

    let mut config = shelf.config(0, None, true);
    config.binary = fake("old", "nats-server: v2.8.4")?;
    let e = start(&mut shelf, config).await?;
    assert!(matches!(e, EngineError::VersionTooOld { .. }), "{e:?}");
    assert!(e.to_string().contains("2.8.4 is too old"), "{e}");

    let mut config = shelf.config(0, None, true);
    config.binary = fake("garbage", "hello")?;
    let e = start(&mut shelf, config).await?;
    assert!(matches!(e, EngineError::VersionUnknown { .. }), "{e:?}");

    // A port in use by someone else (on the board's loopback).
    let config = shelf.config(0, None, true);
    let port = config.client_port;
    let e = shelf.boards[0]
        .run(async move {
            let _held = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
            NatsServer::start(config).await
        })
        .await?
        .err()
        .ok_or("started on a taken port")?;
    assert!(
        matches!(e, EngineError::PortTaken { what: "client", .. }),
        "{e:?}"
    );
    assert!(e.to_string().contains("already in use"), "{e}");

    // A file nats-server cannot use: refused by `nats-server -t`, with its words.
    let mut config = shelf.config(0, Some(&[0, 1]), true);
    if let Some(cluster) = config.cluster.as_mut() {
        cluster.tls.cert_file = scripts.path().join("missing.pem");
    }
    let e = start(&mut shelf, config).await?;
    assert!(matches!(e, EngineError::ConfigRejected { .. }), "{e:?}");
    assert!(e.to_string().contains("missing.pem"), "{e}");

    // A route listener on an address that is not this board's.
    let mut config = shelf.config(0, Some(&[0, 1]), true);
    if let Some(cluster) = config.cluster.as_mut() {
        cluster.listen = "10.77.0.99:7424".parse()?;
    }
    let e = start(&mut shelf, config).await?;
    assert!(matches!(e, EngineError::Io { .. }), "{e:?}");

    // An invalid typed configuration never reaches a file.
    let mut config = shelf.config(0, None, true);
    config.board = "Pi 1".into();
    let e = start(&mut shelf, config).await?;
    assert!(matches!(e, EngineError::Config(_)), "{e:?}");

    assert_eq!(
        process_mentioning(shelf.boards[0].dir.path()),
        None,
        "a refused start left a process behind"
    );
    Ok(())
}

pub async fn sync_interval_only_where_the_server_knows_it() -> TestResult {
    let mut shelf = Shelf::new(1)?;
    let mut config = shelf.config(0, None, true);
    config.jetstream = Some(JetStreamConfig {
        sync: SyncPolicy::Always,
        ..JetStreamConfig::default()
    });
    let file = config.config_file();
    shelf.start(0, config).await?;
    let server = shelf.boards[0].server();
    let text = std::fs::read_to_string(&file)?;
    let mode = std::fs::metadata(&file)?.permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the configuration holds passwords");
    let monitor = server.monitor().clone();
    let jsz = shelf.boards[0]
        .run(async move { monitor.jetstream().await })
        .await??;
    let server = shelf.boards[0].server();
    if server.capabilities().sync_interval {
        assert!(text.contains("sync_interval: always"), "{text}");
        assert!(jsz.config.sync_always, "{jsz:?}");
        assert!(server.fsync_before_ack());
    } else {
        assert!(!text.contains("sync_interval"), "{text}");
        assert!(!jsz.config.sync_always);
        assert!(!server.fsync_before_ack());
    }
    assert_eq!(jsz.config.max_memory, 8 << 20);
    assert!(
        jsz.config.store_dir.ends_with("/cluster/jetstream"),
        "{jsz:?}"
    );
    Ok(())
}

pub async fn stop_leaves_nothing_running() -> TestResult {
    let mut shelf = Shelf::new(1)?;
    let config = shelf.config(0, None, true);
    let file = config.config_file();
    shelf.start(0, config.clone()).await?;
    let first = shelf.boards[0].pid().unwrap();

    // restart_with: JetStream off, a new process.
    let mut off = config.clone();
    off.jetstream = None;
    let mut server = shelf.boards[0].server.take().unwrap();
    let server = shelf.boards[0]
        .run(async move { server.restart_with(off).await.map(|()| server) })
        .await??;
    let second = server.pid().unwrap();
    assert_ne!(first, second);
    assert!(!alive(first));
    assert!(!std::fs::read_to_string(&file)?.contains("jetstream {"));
    shelf.boards[0].run(server.stop()).await?;
    assert!(!alive(second));

    // A server left behind by a bramble that was killed: found by its pid file and stopped.
    let netns = shelf.lan.netns(0);
    std::fs::write(&file, std::fs::read_to_string(&file)?)?;
    let mut orphan = std::process::Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .arg(binary())
        .arg("-c")
        .arg(&file)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let pid_file = config.pid_file();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&pid_file).is_ok_and(|p| p.trim() == orphan.id().to_string()) {
        assert!(
            Instant::now() < deadline,
            "orphan did not write its pid file"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shelf.start(0, config).await?;
    let status = orphan.wait()?;
    assert!(!status.success() || status.code() == Some(0), "{status:?}");
    assert_ne!(shelf.boards[0].pid(), Some(orphan.id()));
    Ok(())
}
