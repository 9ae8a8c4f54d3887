//! `event-router serve`: the configuration checked, logging set up, then the server run until
//! it is stopped.

use std::process::ExitCode;

use crate::config::Overrides;

/// Runs the server; a configuration error exits with 2, anything else that stops it with 1.
pub fn main(overrides: Overrides) -> ExitCode {
    let cfg = match super::load_config(&overrides) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if let Err(errors) = super::check_config::check_declarations(&cfg, false) {
        eprintln!("event-router: invalid configuration:\n{errors}");
        return ExitCode::from(2);
    }
    crate::telemetry::init(&cfg.log_level, cfg.log_format);
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("event-router: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(crate::run(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("event-router: {e:#}");
            ExitCode::FAILURE
        }
    }
}
