//! `event-router check-config FILE`: the file alone (no environment, no flags) read and every
//! declared object checked (`config::check`), every error printed with its location.

use std::path::Path;
use std::process::ExitCode;

use crate::config::Config;

/// Prints `FILE: ok` and exits 0, or prints every error and exits 1.
pub fn main(path: &Path) -> ExitCode {
    let result = Config::from_file_only(path)
        .and_then(|cfg| crate::config::check::check_declarations(&cfg, true).map(|()| cfg));
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
