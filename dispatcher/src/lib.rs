//! The data plane: maps a request to the code that serves it.
//!
//! It holds the table of live function deployments, checks who the caller is
//! (end-user JWTs, service keys) against what a trigger requires, enforces
//! per-function concurrency, and hands the invocation to the isolate pool.
//!
//! It must not know about HTTP server setup or storage engines: `runtime`
//! parses HTTP into an [`Invocation`] and persists deployments.

mod auth;
mod error;
mod functions;

pub use auth::{mint_user_token, verify_user_token, AuthError, UserClaims};
pub use churn_isolates::{CallerType, Invocation, IsolatePool, Started};
pub use error::DispatchError;
pub use functions::{AuthMode, DeployedFunction, Dispatcher, InFlight};
