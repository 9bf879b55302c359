//! The `bramble` command.

use anyhow::Context as _;
use clap::{Parser, Subcommand};

mod cli;

#[derive(Parser, Debug)]
#[command(
    name = "bramble",
    version,
    about = "An edge FaaS runtime for Raspberry Pi boards: functions as containers, OpenFaaS-compatible"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the node: gateway, provider and function supervisors, in the foreground.
    Up(Box<cli::up::UpArgs>),
    /// Build, upload, list and remove images.
    #[command(subcommand)]
    Image(cli::image::ImageCommand),
    /// Create or update functions (flags, or a faas-cli stack file with -f).
    Deploy(Box<cli::deploy::DeployArgs>),
    #[command(flatten)]
    Function(cli::functions::FunctionCommand),
    /// Create, list and remove secrets.
    #[command(subcommand)]
    Secret(cli::secret::SecretCommand),
    /// Read GPIO lines, drive simulated ones, and watch edges.
    #[command(subcommand)]
    Gpio(cli::gpio::GpioCommand),
    /// Form, join, list and leave a cluster of boards.
    #[command(subcommand)]
    Cluster(cli::cluster::ClusterCommand),
    /// Check that this machine can run bramble, and explain how to fix what is missing.
    Doctor(Box<cli::doctor::DoctorArgs>),
    /// Install bramble as a systemd service.
    Install(Box<cli::system::InstallArgs>),
    /// Remove the systemd service (state is kept unless asked).
    Uninstall(Box<cli::system::UninstallArgs>),
    /// Print the version.
    Version,
}

fn main() {
    // Before anything can build a TLS client (each constructor installs it too).
    bramble_base::tls::install_crypto_provider();
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("BRAMBLE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: journald and log files get plain text.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match cli.command {
        Command::Version => {
            println!("bramble {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::Up(args) => up(*args),
        Command::Image(command) => run_async(cli::image::run(command)),
        Command::Deploy(args) => run_async(cli::deploy::run(*args)),
        Command::Function(command) => run_async(cli::functions::run(command)),
        Command::Secret(command) => run_async(cli::secret::run(command)),
        Command::Gpio(command) => run_async(cli::gpio::run(command)),
        Command::Cluster(command) => run_async(cli::cluster::run(command)),
        Command::Doctor(args) => run_async(cli::doctor::run(&args)),
        Command::Install(args) => cli::system::install(&args),
        Command::Uninstall(args) => cli::system::uninstall(&args),
    };
    if let Err(e) = result {
        eprintln!("bramble: {e:#}");
        std::process::exit(1);
    }
}

/// Runs a CLI command on a small runtime.
fn run_async(command: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(command)
}

fn up(args: cli::up::UpArgs) -> anyhow::Result<()> {
    let config = args.into_config()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let exit = runtime.block_on(async {
        let shutdown = async {
            let terminate = async {
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(mut s) => {
                        s.recv().await;
                    }
                    Err(_) => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {},
                () = terminate => {},
            }
            tracing::info!("shutting down");
        };
        bramble_agent::daemon::run(config, shutdown)
            .await
            .context("bramble up")
    })?;
    drop(runtime);
    if exit == bramble_agent::daemon::Exit::Restart {
        // Same binary, same arguments, same PID (systemd keeps tracking the service).
        use std::os::unix::process::CommandExt as _;
        let binary = std::env::current_exe().context("finding bramble's executable")?;
        let error = std::process::Command::new(&binary)
            .args(std::env::args_os().skip(1))
            .exec();
        return Err(error).with_context(|| format!("restarting {}", binary.display()));
    }
    Ok(())
}
