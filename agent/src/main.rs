//! The `bramble` command.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use bramble_agent::config::{Config, DEFAULT_CONFIG_FILE};
use clap::{Args, Parser, Subcommand};

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
    Up(Box<UpArgs>),
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
    /// Check that this machine can run bramble, and explain how to fix what is missing.
    Doctor(Box<cli::doctor::DoctorArgs>),
    /// Install bramble as a systemd service.
    Install(Box<cli::system::InstallArgs>),
    /// Remove the systemd service (state is kept unless asked).
    Uninstall(Box<cli::system::UninstallArgs>),
    /// Print the version.
    Version,
}

/// Every key of the configuration file, as a flag and an environment variable.
#[derive(Args, Debug)]
struct UpArgs {
    /// Configuration file (default /etc/bramble/config.toml if it exists).
    #[arg(long, env = "BRAMBLE_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, env = "BRAMBLE_LISTEN")]
    listen: Option<SocketAddr>,
    /// Persistent state directory.
    #[arg(long, env = "BRAMBLE_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Volatile runtime directory (tmpfs).
    #[arg(long, env = "BRAMBLE_RUN_DIR")]
    run_dir: Option<PathBuf>,
    /// containerd's socket.
    #[arg(long, env = "BRAMBLE_CONTAINERD_SOCKET")]
    containerd_socket: Option<PathBuf>,
    /// containerd namespace of functions.
    #[arg(long, env = "BRAMBLE_CONTAINERD_NAMESPACE")]
    containerd_namespace: Option<String>,
    /// OpenFaaS namespace used when a request names none.
    #[arg(long, env = "BRAMBLE_DEFAULT_NAMESPACE")]
    default_namespace: Option<String>,
    /// Image pull policy: Always, IfNotPresent, Never.
    #[arg(long, env = "BRAMBLE_PULL_POLICY")]
    pull_policy: Option<String>,
    /// Default upstream timeout of functions (e.g. 60s).
    #[arg(long, env = "BRAMBLE_FUNCTION_TIMEOUT", value_parser = humantime::parse_duration)]
    function_timeout: Option<Duration>,
    /// How long a request waits for a starting function.
    #[arg(long, env = "BRAMBLE_READY_TIMEOUT", value_parser = humantime::parse_duration)]
    ready_timeout: Option<Duration>,
    /// Grace period between SIGTERM and SIGKILL.
    #[arg(long, env = "BRAMBLE_STOP_GRACE", value_parser = humantime::parse_duration)]
    stop_grace: Option<Duration>,
    /// Output kept in memory per function (e.g. 256Ki).
    #[arg(long, env = "BRAMBLE_LOG_BUFFER")]
    log_buffer: Option<String>,
    /// Default memory limit of functions (empty: unlimited).
    #[arg(long, env = "BRAMBLE_DEFAULT_MEMORY")]
    default_memory: Option<String>,
    /// Default CPU limit of functions (empty: unlimited).
    #[arg(long, env = "BRAMBLE_DEFAULT_CPU")]
    default_cpu: Option<String>,
    /// Default pids limit of functions.
    #[arg(long, env = "BRAMBLE_DEFAULT_PIDS")]
    default_pids: Option<u64>,
    /// Name of the function bridge.
    #[arg(long, env = "BRAMBLE_BRIDGE")]
    bridge: Option<String>,
    /// Subnet of the function bridge.
    #[arg(long, env = "BRAMBLE_SUBNET")]
    subnet: Option<String>,
    /// CNI plugin directories (repeat the flag; comma-separated in the variable).
    #[arg(long, env = "BRAMBLE_CNI_PLUGIN_DIRS", value_delimiter = ',')]
    cni_plugin_dir: Option<Vec<PathBuf>>,
    /// Registries reached over plain HTTP (repeat; comma-separated in the variable).
    #[arg(long, env = "BRAMBLE_INSECURE_REGISTRIES", value_delimiter = ',')]
    insecure_registry: Option<Vec<String>>,
    /// Docker config.json with registry credentials.
    #[arg(long, env = "BRAMBLE_REGISTRY_CREDENTIALS")]
    registry_credentials: Option<PathBuf>,
    /// Async calls executed at the same time.
    #[arg(long, env = "BRAMBLE_ASYNC_WORKERS")]
    async_workers: Option<usize>,
    /// Largest async request body (e.g. 8Mi).
    #[arg(long, env = "BRAMBLE_ASYNC_MAX_BODY")]
    async_max_body: Option<String>,
    /// Largest API JSON body (e.g. 1Mi).
    #[arg(long, env = "BRAMBLE_MAX_API_BODY")]
    max_api_body: Option<String>,
    /// Largest uploaded image archive (e.g. 4Gi).
    #[arg(long, env = "BRAMBLE_MAX_UPLOAD")]
    max_upload: Option<String>,
    /// Largest size an image layer may unpack to (e.g. 4Gi).
    #[arg(long, env = "BRAMBLE_MAX_UNPACKED")]
    max_unpacked: Option<String>,
    /// Memory all functions may reserve: auto (75% of RAM), none, or a quantity.
    #[arg(long, env = "BRAMBLE_MEMORY_BUDGET")]
    memory_budget: Option<String>,
    /// Remove images no function uses after this long, or `never`.
    #[arg(long, env = "BRAMBLE_IMAGE_GC_AFTER")]
    image_gc_after: Option<String>,
    /// Stop every function when bramble stops.
    #[arg(long, env = "BRAMBLE_STOP_FUNCTIONS_ON_SHUTDOWN")]
    stop_functions_on_shutdown: Option<bool>,
    /// GPIO backend: auto (the character device if a Pi chip is found, else the
    /// simulator), simulator, or cdev.
    #[arg(long, env = "BRAMBLE_HARDWARE_BACKEND", value_parser = parse_backend)]
    hardware_backend: Option<bramble_agent::hardware::BackendChoice>,
}

fn parse_backend(text: &str) -> Result<bramble_agent::hardware::BackendChoice, String> {
    serde_json::from_value(serde_json::Value::String(text.to_owned()))
        .map_err(|_| format!("{text:?} is not auto, simulator or cdev"))
}

impl UpArgs {
    /// The configuration: file, then environment and flags on top.
    fn into_config(self) -> anyhow::Result<Config> {
        let (path, required) = match &self.config {
            Some(path) => (path.clone(), true),
            None => (PathBuf::from(DEFAULT_CONFIG_FILE), false),
        };
        let mut c = Config::load(&path, required)?;
        macro_rules! set {
            ($($field:ident).+ = $value:expr) => {
                if let Some(v) = $value {
                    c.$($field).+ = v;
                }
            };
        }
        set!(listen = self.listen);
        set!(state_dir = self.state_dir);
        set!(run_dir = self.run_dir);
        set!(containerd_socket = self.containerd_socket);
        set!(containerd_namespace = self.containerd_namespace);
        set!(default_namespace = self.default_namespace);
        set!(pull_policy = self.pull_policy);
        set!(function_timeout = self.function_timeout);
        set!(ready_timeout = self.ready_timeout);
        set!(stop_grace = self.stop_grace);
        set!(log_buffer = self.log_buffer);
        set!(defaults.memory = self.default_memory);
        set!(defaults.cpu = self.default_cpu);
        set!(defaults.pids = self.default_pids);
        set!(network.bridge = self.bridge);
        set!(network.subnet = self.subnet);
        set!(network.cni_plugin_dirs = self.cni_plugin_dir);
        set!(registry.insecure = self.insecure_registry);
        set!(registry.credentials = self.registry_credentials.map(Some));
        set!(async_queue.workers = self.async_workers);
        set!(async_queue.max_body = self.async_max_body);
        set!(max_api_body = self.max_api_body);
        set!(max_upload = self.max_upload);
        set!(max_unpacked = self.max_unpacked);
        set!(memory_budget = self.memory_budget);
        set!(image_gc_after = self.image_gc_after);
        set!(stop_functions_on_shutdown = self.stop_functions_on_shutdown);
        set!(hardware.backend = self.hardware_backend);
        c.validate()?;
        Ok(c)
    }
}

fn main() {
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

fn up(args: UpArgs) -> anyhow::Result<()> {
    let config = args.into_config()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
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
    })
}
