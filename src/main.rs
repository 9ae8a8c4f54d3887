//! The `event-router` command: parses the command line, then runs the one command it names
//! (`event_router::cli`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use event_router::cli;
use event_router::config::Overrides;
use event_router::providers;

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
        /// Source name: a built-in one, or one declared in the config file.
        #[arg(help = format!(
            "Source name: {}, or one declared in the config file",
            providers::builtin_sources_text()
        ))]
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
        /// Signature scheme of a config-declared source.
        #[arg(long, help = format!(
            "Signature scheme of a config-declared source: {}",
            providers::names_text()
        ))]
        scheme: Option<String>,
        /// The router's base URL.
        #[arg(long, default_value = "http://127.0.0.1:8787")]
        url: String,
        /// The source's `public_url`, for providers that sign the URL they call (hubspot,
        /// square, twilio); default: the URL the request is posted to.
        #[arg(long)]
        public_url: Option<String>,
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
    Bench(cli::bench::BenchArgs),
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Serve {
            config,
            listen,
            data_dir,
            database_url,
        } => cli::serve::main(Overrides {
            config,
            listen,
            data_dir,
            database_url,
        }),
        Command::Send {
            source,
            event,
            file,
            secret,
            scheme,
            url,
            public_url,
        } => cli::send::main(source, scheme, event, file, secret, url, public_url),
        Command::RotateKey {
            new_key,
            config,
            data_dir,
            database_url,
        } => cli::rotate_key::main(
            &new_key,
            Overrides {
                config,
                listen: None,
                data_dir,
                database_url,
            },
        ),
        Command::CheckConfig { path } => cli::check_config::main(&path),
        Command::Bench(args) => cli::bench::main(args),
    }
}
