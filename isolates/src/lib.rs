//! churn's engine: V8 isolates through deno_core.
//!
//! It turns deployed TypeScript into JavaScript ([`compile_function`]), keeps
//! warm isolates created from a startup snapshot that already holds Deno's Web
//! APIs ([`IsolatePool`]), and runs invocations in them. Values cross in and
//! out as plain data ([`Invocation`], [`ResponseHead`]).
//!
//! It must not know about routing, HTTP servers, or which storage engine or
//! database sits behind an op.

mod error;
mod ext;
mod extensions;
mod invocation;
mod pool;
mod snapshot;
mod transpile;
mod worker;

pub use error::{CompileError, InvokeError};
pub use invocation::{
    CallerType, Completion, FunctionCode, Invocation, Limits, LogLine, ResponseBody, ResponseHead,
    ScriptError,
};
pub use pool::{IsolatePool, Started};
pub use transpile::compile_function;
