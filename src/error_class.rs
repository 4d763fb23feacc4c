//! The one vocabulary for "what does this failure ask of the operator",
//! answered beside each error enum ([`Classify`]); `crate::error` derives
//! the exit code from it. A leaf module: every layer may use it, and it
//! uses none, so classing an error never makes a module depend on the
//! commands (`crate::error` imports every command's error).

/// Exit code for a failure at run time.
pub const EXIT_RUNTIME: u8 = 1;
/// Exit code for what restarting will not fix: a bad configuration or
/// usage (clap also uses 2), a database that does not match it, a lost slot.
pub const EXIT_CONFIG: u8 = 2;
/// What a failure asks of whoever runs walhook (see [`crate::error`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Passing: the same step a little later may succeed (a server not up
    /// yet, a connection reset). Loops that wait retry these; a command
    /// that gives up exits 1.
    Transient,
    /// Nothing will change until a person changes the configuration, the
    /// command line or the database's objects: exit 2 (and no restart by
    /// the shipped units).
    NeedsOperator,
    /// This process cannot go on (a failed task, a broken stream, a refused
    /// login): exit 1, the message says why.
    Fatal,
}

impl ErrorClass {
    /// The process exit code for a command that failed with this class.
    pub fn exit_code(self) -> u8 {
        match self {
            ErrorClass::NeedsOperator => EXIT_CONFIG,
            ErrorClass::Transient | ErrorClass::Fatal => EXIT_RUNTIME,
        }
    }
}

/// An error that knows its [`ErrorClass`]; implemented beside each error
/// enum, a wrapper asking its cause.
pub trait Classify {
    /// Transient, needs the operator, or fatal.
    fn class(&self) -> ErrorClass;
}
