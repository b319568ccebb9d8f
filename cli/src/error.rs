//! The program's one error type: a one-line message naming what failed and where, and the exit
//! status it maps to (2 for bad input: arguments, unreadable or malformed files; 1 for the rest).

use std::fmt;

/// Exit status for bad input: a bad argument, an unreadable or malformed file, an output that exists.
pub const EXIT_INPUT: u8 = 2;
/// Exit status for every other failure.
pub const EXIT_FAILURE: u8 = 1;

/// A failure of one command, printed as `fixq: error: {message}`.
#[derive(Debug)]
pub struct CliError {
    /// [`EXIT_INPUT`] or [`EXIT_FAILURE`].
    pub status: u8,
    /// One line: what (a flag and its value, or a file) and why.
    pub message: String,
}

impl CliError {
    /// Bad input: `what` names the flag and value or the file, `why` the reason.
    pub fn input(what: impl fmt::Display, why: impl fmt::Display) -> Self {
        Self {
            status: EXIT_INPUT,
            message: one_line(format!("{what}: {why}")),
        }
    }

    /// Any other failure while doing `what`.
    pub fn failure(what: impl fmt::Display, why: impl fmt::Display) -> Self {
        Self {
            status: EXIT_FAILURE,
            message: one_line(format!("{what}: {why}")),
        }
    }

    /// A library error while reading or checking the input named by `what`: errors that describe
    /// the input (malformed, unreadable, wrong shape, out of range, empty) are bad input, the rest
    /// failures.
    pub fn from_lib(what: impl fmt::Display, e: fixq::Error) -> Self {
        use fixq::Error as E;
        let status = match e {
            E::Io { .. }
            | E::Malformed { .. }
            | E::Unsupported(_)
            | E::ShapeMismatch { .. }
            | E::InvalidArgument { .. }
            | E::Empty { .. }
            | E::NonFinite { .. }
            | E::Infeasible { .. } => EXIT_INPUT,
            _ => EXIT_FAILURE,
        };
        Self {
            status,
            message: one_line(format!("{what}: {e}")),
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Joins the lines of a message (an error's source may span several) so it prints as one.
fn one_line(s: String) -> String {
    if s.contains('\n') {
        s.split('\n')
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("; ")
    } else {
        s
    }
}

/// The result of a command.
pub type CliResult<T> = Result<T, CliError>;
