//! The commands, each a `main` that `src/main.rs` calls with its parsed arguments and that
//! returns the process's exit code: `serve` (the server, through `crate::run`), `send`,
//! `check-config`, `rotate-key` and `bench` (the load tool). The server never imports from here.

pub mod bench;
pub mod check_config;
pub mod rotate_key;
pub mod send;
pub mod serve;

use std::process::ExitCode;

use crate::config::{self, Config, Overrides};

/// Layers flags, environment and file into a `Config`; a bad one is printed with every error.
fn load_config(overrides: &Overrides) -> Result<Config, ExitCode> {
    Config::load(overrides, &config::process_env).map_err(|errors| {
        eprintln!("event-router: invalid configuration:\n{errors}");
        ExitCode::from(2)
    })
}

/// The runtime of a command that does one thing at a time.
fn current_thread_runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("event-router: cannot start the runtime: {e}");
            ExitCode::FAILURE
        })
}
