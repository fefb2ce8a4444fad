//! Errors of the data plane, each with the stable code clients see.

use churn_isolates::InvokeError;

#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error("function {name:?} is not deployed in app {app:?}")]
    FunctionNotFound { app: String, name: String },
    #[error("function {name:?} already has {limit} requests in flight")]
    TooManyRequests { name: String, limit: usize },
    #[error(transparent)]
    Invoke(#[from] InvokeError),
}
