//! Errors of the isolate layer.

use crate::invocation::ScriptError;

/// Why an invocation produced no response.
#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    /// User code threw (or returned something that is not a `Response`).
    #[error("{}", .0.message)]
    Script(ScriptError),
    /// No response within the function's `timeoutMs`.
    #[error("the function did not respond within {timeout_ms} ms")]
    Timeout { timeout_ms: u64 },
    /// The isolate was stopped for going over a limit (`cpu`, `memory`).
    #[error("the function went over its {reason} limit: {message}")]
    Limit {
        reason: &'static str,
        message: String,
    },
    /// The isolate went away before answering (it was killed or crashed).
    #[error("the isolate stopped before answering: {0}")]
    IsolateGone(String),
}

/// Why deployed source was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CompileError {
    #[error("syntax error at line {line}, column {column}: {message}")]
    Syntax {
        line: usize,
        column: usize,
        message: String,
    },
    #[error("the code does not export a handler: add `export async function handler(req, ctx) {{ ... }}` or `export default async function (req, ctx) {{ ... }}`")]
    NoHandler,
    #[error("import of {specifier:?} at line {line} is not supported: a function is one self-contained file (only `import type` is allowed)")]
    Import { specifier: String, line: usize },
    #[error("the code could not be transpiled: {0}")]
    Transpile(String),
}
