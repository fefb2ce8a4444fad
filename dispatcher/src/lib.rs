//! The data plane: maps a request to the code that serves it.
//!
//! It holds the tables of live function deployments and Durable Object
//! classes, verifies end-user JWTs, enforces per-function concurrency, fires
//! Durable Object alarms, and hands each event to the isolate pool.
//!
//! It must not know about HTTP server setup or storage engines: `runtime`
//! parses HTTP into an [`Invocation`] and persists deployments.

mod alarms;
mod auth;
mod error;
mod functions;
mod objects;
mod sockets;

pub use alarms::{AlarmScheduler, FIRST_RETRY_DELAY, MAX_ALARM_RETRIES};
pub use auth::{mint_user_token, verify_user_token, AuthError, UserClaims};
pub use churn_isolates::{CallerType, Invocation, IsolatePool, Started};
pub use error::DispatchError;
pub use functions::{AuthMode, DeployedFunction, Dispatcher, InFlight};
pub use objects::{AccessMode, DeployedObject, ObjectUsage};
pub use sockets::{serve_object_socket, socket_config, MAX_MESSAGE};
pub use tokio_tungstenite;
