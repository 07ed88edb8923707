//! How a binary ends: an operator reads the error chain, not a backtrace.

use std::fmt::Display;
use std::process::ExitCode;

/// Prints `Error: ...` with the whole cause chain (`{:#}`) and returns failure, or success.
pub fn report<E: Display>(result: Result<(), E>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
