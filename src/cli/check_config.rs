//! `event-router check-config FILE`: the file alone (no environment, no flags) read, and every
//! rule object it declares (`[[agents]]`, `[[filters]]`, `[[routes]]`, `[[rate_limits]]`)
//! checked, each error pointing at its line. `serve` runs the same checks before it starts.
//!
//! The checks are here, with the commands, because they use the parsers of rules, rate limits
//! and signing secrets: in `config`, which nearly every module imports, they would close
//! circles of imports.

use std::path::Path;
use std::process::ExitCode;

use crate::config::{Config, ConfigError, ConfigErrors, Declared};
use crate::providers::standard::StandardSigner;
use crate::ratelimit;
use crate::rules::{self, KnownAgents};

struct AnyAgent;

impl KnownAgents for AnyAgent {
    fn knows_agent(&self, _: &str) -> bool {
        true
    }
}

fn error(kind: &str, index: usize, d: &Declared, field: &str, message: &str) -> ConfigError {
    ConfigError {
        location: d.location_of(field).to_string(),
        key: format!("{kind}[{index}].{field}"),
        message: message.to_string(),
    }
}

/// Checks every declared object. Route targets are checked against the declared agents only
/// when `routes_against_declared_agents` (check-config: the file alone); at `serve` they are
/// checked against the store's agents too, when the file is applied.
pub fn check_declarations(
    config: &Config,
    routes_against_declared_agents: bool,
) -> Result<(), ConfigErrors> {
    let mut errors = Vec::new();
    let mut agent_ids: Vec<String> = Vec::new();
    for (i, d) in config.agents.iter().enumerate() {
        match rules::agent_from_value(d.value.clone()) {
            Ok(a) => {
                if agent_ids.contains(&a.id) {
                    errors.push(error(
                        "agents",
                        i,
                        d,
                        "id",
                        &format!("duplicate agent id \"{}\"", a.id),
                    ));
                }
                if let Some(s) = &a.secret
                    && let Err(e) = StandardSigner::from_secret(s)
                {
                    errors.push(error(
                        "agents",
                        i,
                        d,
                        "secret",
                        &format!("not a Standard Webhooks secret: {e}"),
                    ));
                }
                agent_ids.push(a.id);
            }
            Err(e) => errors.push(error("agents", i, d, &e.field, &e.message)),
        }
    }
    for (i, d) in config.filters.iter().enumerate() {
        if let Err(e) = rules::filter_from_value(d.value.clone()) {
            errors.push(error("filters", i, d, &e.field, &e.message));
        }
    }
    for (i, d) in config.routes.iter().enumerate() {
        let result = if routes_against_declared_agents {
            rules::route_from_value(d.value.clone(), &agent_ids).map(|_| ())
        } else {
            // Any agent id passes here; the real targets are checked when applied.
            rules::route_from_value(d.value.clone(), &AnyAgent).map(|_| ())
        };
        if let Err(e) = result {
            errors.push(error("routes", i, d, &e.field, &e.message));
        }
    }
    for (i, d) in config.rate_limits.iter().enumerate() {
        if let Err(e) = ratelimit::config_from_value(d.value.clone()) {
            errors.push(error("rate_limits", i, d, &e.field, &e.message));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ConfigErrors(errors))
    }
}

/// Prints `FILE: ok` and exits 0, or prints every error and exits 1.
pub fn main(path: &Path) -> ExitCode {
    let result =
        Config::from_file_only(path).and_then(|cfg| check_declarations(&cfg, true).map(|()| cfg));
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
