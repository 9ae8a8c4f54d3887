//! Validation of the rule objects declared in the config file (`[[agents]]`, `[[filters]]`,
//! `[[routes]]`, `[[rate_limits]]`), each error pointing at its line.

use crate::config::{Config, ConfigErrors};

pub fn check_declarations(_config: &Config) -> Result<(), ConfigErrors> {
    Ok(())
}
