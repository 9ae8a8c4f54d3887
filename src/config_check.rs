//! Validation of the rule objects declared in the config file (`[[agents]]`, `[[filters]]`,
//! `[[routes]]`, `[[rate_limits]]`), each error pointing at its line.

use crate::config::{Config, ConfigError, ConfigErrors, Declared};
use crate::ratelimit;

fn error(kind: &str, index: usize, d: &Declared, field: &str, message: &str) -> ConfigError {
    ConfigError {
        location: d.location_of(field).to_string(),
        key: format!("{kind}[{index}].{field}"),
        message: message.to_string(),
    }
}

pub fn check_declarations(config: &Config) -> Result<(), ConfigErrors> {
    let mut errors = Vec::new();
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
