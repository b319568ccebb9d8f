//! The crate's one error type.

/// Every failure `fixq` reports. Messages say what was wrong and, where it helps, what would be valid.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An argument was outside its valid range.
    #[error("invalid {name}: {reason}")]
    InvalidArgument {
        /// Which argument.
        name: &'static str,
        /// What was wrong and what is allowed.
        reason: String,
    },
    /// An input that must hold data was empty.
    #[error("empty input: {what} has no elements")]
    Empty {
        /// Which input.
        what: &'static str,
    },
    /// An input held NaN or an infinity.
    #[error("non-finite value {value} at index {index} of {what}")]
    NonFinite {
        /// Which input.
        what: &'static str,
        /// Flat index of the first offending element.
        index: usize,
        /// The offending value.
        value: f64,
    },
    /// The data has zero variance, so no scale can be fitted.
    #[error(
        "zero variance: all {count} values of {what} equal {value}; no distribution can be fitted"
    )]
    ZeroVariance {
        /// Which input.
        what: &'static str,
        /// Number of values seen.
        count: u64,
        /// The constant value.
        value: f64,
    },
    /// Shapes, formats or channel counts do not agree.
    #[error("shape mismatch in {what}: expected {expected}, found {found}")]
    ShapeMismatch {
        /// Where the mismatch was found.
        what: String,
        /// What was expected.
        expected: String,
        /// What was given.
        found: String,
    },
    /// A bit budget cannot be met by any allocation.
    #[error("infeasible budget: {reason}; nearest feasible value is {nearest}")]
    Infeasible {
        /// Why no allocation meets the budget.
        reason: String,
        /// The nearest budget value that can be met, in the budget's own units.
        nearest: f64,
    },
    /// An integer accumulator could overflow for these formats and reduction length.
    #[error("accumulator overflow possible: {reason}")]
    AccumulatorOverflow {
        /// The bound that was exceeded.
        reason: String,
    },
    /// An operator, data type or attribute that `fixq` does not support.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A file or buffer was truncated or corrupt.
    #[error("malformed {format} data at byte {offset}: {reason}")]
    Malformed {
        /// The format being read (e.g. "onnx", "npy", "idx").
        format: &'static str,
        /// Byte offset where reading failed.
        offset: u64,
        /// What was wrong.
        reason: String,
    },
    /// An internal invariant failed (a bug in fixq: please report it with the message).
    #[error("internal error: {reason}")]
    Internal {
        /// The invariant that failed.
        reason: String,
    },
    /// An I/O error, with the path involved.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The path being read or written.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<ndarray::ShapeError> for Error {
    fn from(e: ndarray::ShapeError) -> Self {
        Error::ShapeMismatch {
            what: "tensor rank".into(),
            expected: "the rank the kernel takes".into(),
            found: e.to_string(),
        }
    }
}
