//! `bramble doctor`: checks this machine against what bramble needs and prints, for every
//! problem, the command or edit that fixes it. Exit status 1 when a blocking check fails.

use std::path::PathBuf;

use bramble_agent::config::{Config, DEFAULT_CONFIG_FILE};
use bramble_agent::doctor::{self, Check, Host, Status};

#[derive(clap::Args, Debug)]
pub(crate) struct DoctorArgs {
    /// Configuration file, as for `bramble up` (default /etc/bramble/config.toml if it exists).
    #[arg(long, env = "BRAMBLE_CONFIG")]
    config: Option<PathBuf>,
    /// containerd's socket.
    #[arg(long, env = "BRAMBLE_CONTAINERD_SOCKET")]
    containerd_socket: Option<PathBuf>,
    /// Persistent state directory.
    #[arg(long, env = "BRAMBLE_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Volatile runtime directory.
    #[arg(long, env = "BRAMBLE_RUN_DIR")]
    run_dir: Option<PathBuf>,
    /// CNI plugin directories (repeat the flag; comma-separated in the variable).
    #[arg(long, env = "BRAMBLE_CNI_PLUGIN_DIRS", value_delimiter = ',')]
    cni_plugin_dir: Option<Vec<PathBuf>>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn run(args: &DoctorArgs) -> anyhow::Result<()> {
    let (config, config_check) = configuration(args);
    let mut report = doctor::run(&config, &Host::real()).await;
    report.checks.insert(0, config_check);
    if args.json {
        let json = serde_json::json!({
            "ok": report.count(Status::Blocking) == 0,
            "blocking": report.count(Status::Blocking),
            "warnings": report.count(Status::Warning),
            "checks": report.checks,
        });
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        print!("{}", report.human());
    }
    match report.count(Status::Blocking) {
        0 => Ok(()),
        n => anyhow::bail!("{n} blocking problem(s) found"),
    }
}

/// The configuration `bramble up` would use (file, then environment and flags), and a check
/// on it. A broken configuration is itself a blocking finding; the other checks then run with
/// the defaults (plus the flags) instead of not at all.
fn configuration(args: &DoctorArgs) -> (Config, Check) {
    const NAME: &str = "configuration";
    let (path, required) = match &args.config {
        Some(path) => (path.clone(), true),
        None => (PathBuf::from(DEFAULT_CONFIG_FILE), false),
    };
    let loaded = Config::load(&path, required);
    let mut config = loaded.as_ref().cloned().unwrap_or_default();
    let overrides = [
        (&args.containerd_socket, &mut config.containerd_socket),
        (&args.state_dir, &mut config.state_dir),
        (&args.run_dir, &mut config.run_dir),
    ];
    for (flag, field) in overrides {
        if let Some(value) = flag {
            field.clone_from(value);
        }
    }
    if let Some(dirs) = &args.cni_plugin_dir {
        config.network.cni_plugin_dirs.clone_from(dirs);
    }
    let fix = format!("edit {} (every key is in the README)", path.display());
    let check = match loaded.map(|_| config.validate()) {
        Err(e) | Ok(Err(e)) => Check::blocking(NAME, format!("{:#}", anyhow::Error::new(e)), fix),
        Ok(Ok(())) if path.exists() => Check::ok(NAME, path.display().to_string()),
        Ok(Ok(())) => Check::ok(
            NAME,
            format!("defaults ({} does not exist)", path.display()),
        ),
    };
    (config, check)
}
