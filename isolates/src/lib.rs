//! churn's engine: V8 isolates through deno_core.
//!
//! It turns deployed TypeScript into JavaScript ([`compile_function`]), keeps
//! warm isolates created from a startup snapshot that already holds Deno's Web
//! APIs ([`IsolatePool`]), and runs invocations in them. Values cross in and
//! out as plain data ([`Invocation`], [`ResponseHead`]).
//!
//! It must not know about routing, HTTP servers, or which storage engine or
//! database sits behind an op.

mod buffers;
mod entered;
mod error;
mod ext;
mod extensions;
mod invocation;
mod object_source;
mod pool;
mod snapshot;
mod sockets;
mod transpile;
mod watchdog;
mod worker;

pub use error::{CompileError, InvokeError};
pub use invocation::{
    AlarmListener, CallerType, CodeKind, Completion, DurableObjectBinding, Event, FunctionCode,
    Invocation, Limits, LogLine, ResponseBody, ResponseHead, ScriptError, SocketMessage,
};
pub use object_source::{compile_durable_object, CompiledObject, ObjectSourceError};
pub use pool::{IsolatePool, Started, WorkerTask};
pub use sockets::{Outgoing, SocketRegistry, MAX_ATTACHMENT, MAX_TAGS};
pub use transpile::compile_function;
pub use worker::{set_net_policy, NetPolicy};
