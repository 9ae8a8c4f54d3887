//! The `event-router` command: parses the CLI and the configuration, then hands over to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use event_router::config::{self, Config, Overrides, Scheme};

#[derive(Parser)]
#[command(
    name = "event-router",
    version,
    about = "Self-hosted webhook event router"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve {
        /// TOML configuration file.
        #[arg(long, env = "EVENT_ROUTER_CONFIG")]
        config: Option<PathBuf>,
        /// Address to listen on [default: 127.0.0.1:8787].
        #[arg(long, env = "LISTEN")]
        listen: Option<String>,
        /// Directory for the embedded database and generated keys [default: ./data].
        #[arg(long, env = "DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// sqlite://PATH or postgres://… [default: sqlite://DATA_DIR/event-router.db].
        #[arg(long, env = "DATABASE_URL")]
        database_url: Option<String>,
    },
    /// Sign and post a test webhook exactly as the provider would.
    Send {
        /// Source name: github, linear, slack, internal, or one declared in the config file.
        source: String,
        /// Event type (GitHub: X-GitHub-Event; Linear: body type; internal: X-Event-Type).
        #[arg(long)]
        event: Option<String>,
        /// Payload file ("-" for stdin); default: stdin when piped, else a built-in sample.
        #[arg(long)]
        file: Option<PathBuf>,
        /// Secret to sign with; default: the source's environment variable.
        #[arg(long)]
        secret: Option<String>,
        /// Signature scheme of a config-declared source: github, linear, slack or standard.
        #[arg(long)]
        scheme: Option<String>,
        /// The router's base URL.
        #[arg(long, default_value = "http://127.0.0.1:8787")]
        url: String,
    },
    /// Re-encrypt agent secrets and archived payloads under a new key (stop the server first).
    RotateKey {
        /// The new key: 32 bytes, base64 (`openssl rand -base64 32`). Prefer the environment
        /// variable, which keeps the key out of the process list and shell history.
        #[arg(long, env = "NEW_ENCRYPTION_KEY", hide_env_values = true)]
        new_key: String,
        /// TOML configuration file.
        #[arg(long, env = "EVENT_ROUTER_CONFIG")]
        config: Option<PathBuf>,
        /// Directory of the embedded database and generated keys [default: ./data].
        #[arg(long, env = "DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// sqlite://PATH or postgres://… [default: sqlite://DATA_DIR/event-router.db].
        #[arg(long, env = "DATABASE_URL")]
        database_url: Option<String>,
    },
    /// Validate a configuration file: exit 0, or print every error with its location and exit 1.
    CheckConfig {
        /// The TOML file.
        path: PathBuf,
    },
    /// Load test: send signed webhooks to a router and report throughput, latency and losses.
    Bench(event_router::cli::bench::BenchArgs),
}

/// Layers flags, environment and file into a `Config`; a bad one is printed with every error.
fn load_config(overrides: &Overrides) -> Result<Config, ExitCode> {
    Config::load(overrides, &config::process_env).map_err(|errors| {
        eprintln!("event-router: invalid configuration:\n{errors}");
        ExitCode::from(2)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Bench(args) => event_router::cli::bench::main(args),
        Command::Serve {
            config,
            listen,
            data_dir,
            database_url,
        } => {
            let overrides = Overrides {
                config,
                listen,
                data_dir,
                database_url,
            };
            let cfg = match load_config(&overrides) {
                Ok(c) => c,
                Err(code) => return code,
            };
            if let Err(errors) = event_router::config::check::check_declarations(&cfg, false) {
                eprintln!("event-router: invalid configuration:\n{errors}");
                return ExitCode::from(2);
            }
            event_router::telemetry::init(&cfg.log_level, cfg.log_format);
            let rt = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("event-router: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(event_router::run(cfg)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("event-router: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Send {
            source,
            event,
            file,
            secret,
            scheme,
            url,
        } => {
            let scheme = match scheme.as_deref().map(Scheme::parse) {
                Some(None) => {
                    eprintln!("event-router: --scheme must be github, linear, slack or standard");
                    return ExitCode::from(2);
                }
                Some(s) => s,
                None => None,
            };
            let args = event_router::cli::send::SendArgs {
                source,
                scheme,
                event,
                file,
                secret,
                url,
            };
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("event-router: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(event_router::cli::send::send(args)) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(e) => {
                    eprintln!("event-router: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::RotateKey {
            new_key,
            config,
            data_dir,
            database_url,
        } => {
            let overrides = Overrides {
                config,
                listen: None,
                data_dir,
                database_url,
            };
            let cfg = match load_config(&overrides) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("event-router: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(event_router::cli::rotate_key::rotate_key(&cfg, &new_key)) {
                Ok(r) => {
                    eprintln!(
                        "event-router: re-encrypted {} archived bodies and {} agent secrets",
                        r.bodies, r.agents
                    );
                    match r.key_file {
                        Some(f) => eprintln!("event-router: the new key is in {}", f.display()),
                        None => eprintln!(
                            "event-router: set ENCRYPTION_KEY to the new key before starting the server"
                        ),
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("event-router: rotate-key: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::CheckConfig { path } => {
            let result = Config::from_file_only(&path).and_then(|cfg| {
                event_router::config::check::check_declarations(&cfg, true).map(|()| cfg)
            });
            match result {
                Ok(_) => {
                    println!("{}: ok", path.display());
                    ExitCode::SUCCESS
                }
                Err(errors) => {
                    eprintln!("{errors}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
