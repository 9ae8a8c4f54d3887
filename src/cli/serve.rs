//! `event-router serve`: the configuration checked, logging set up, then the server run until
//! it is stopped.

use std::process::ExitCode;

use crate::config::{self, Config, ConfigErrors, Overrides};

/// Runs the server; a configuration error exits with 2, anything else that stops it with 1.
pub fn main(overrides: Overrides) -> ExitCode {
    // The settings and the declared rules are checked together, so that one run lists every
    // mistake in the file.
    let (cfg, mut errors) = Config::load_all(&overrides, &config::process_env);
    if let Err(ConfigErrors(more)) = super::check_config::check_declarations(&cfg, false) {
        errors.extend(more);
    }
    if !errors.is_empty() {
        super::check_config::sort_by_position(&mut errors);
        eprintln!(
            "event-router: invalid configuration:\n{}",
            ConfigErrors(errors)
        );
        return ExitCode::from(2);
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("event-router: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Inside the runtime: the trace exporter's batch task runs on it.
    let telemetry = {
        let _rt = rt.enter();
        crate::telemetry::init(&cfg.log_level, cfg.log_format)
    };
    let outcome = rt.block_on(crate::run(cfg));
    // The spans of the last requests are still buffered: exported while the runtime lives.
    telemetry.shutdown();
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("event-router: {e:#}");
            ExitCode::FAILURE
        }
    }
}
