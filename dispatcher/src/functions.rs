//! The table of live function deployments and the way into their isolates.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use churn_isolates::{FunctionCode, Invocation, IsolatePool, Started};

use crate::DispatchError;

/// Who may call a function's HTTP trigger.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMode {
    /// Anyone; a valid token still fills `ctx.user`.
    None,
    /// A valid end-user JWT or a service key.
    Required,
}

/// One function revision as the data plane serves it.
pub struct DeployedFunction {
    pub code: Arc<FunctionCode>,
    pub http_auth: Option<AuthMode>,
    pub max_concurrency: usize,
    in_flight: Arc<AtomicUsize>,
}

impl DeployedFunction {
    pub fn new(
        code: Arc<FunctionCode>,
        http_auth: Option<AuthMode>,
        max_concurrency: usize,
    ) -> Self {
        DeployedFunction {
            code,
            http_auth,
            max_concurrency,
            in_flight: Arc::new(AtomicUsize::new(0)),
        }
    }
}

/// Counts a request as in flight until dropped (keep it until the response
/// body is finished).
pub struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// `(app, function)` → its live revision.
type FunctionTable = HashMap<(String, String), Arc<DeployedFunction>>;

/// Routes invocations to functions.
#[derive(Clone, Default)]
pub struct Dispatcher {
    functions: Arc<RwLock<FunctionTable>>,
    pool: IsolatePool,
}

impl Dispatcher {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn pool(&self) -> &IsolatePool {
        &self.pool
    }

    /// Makes `function` the live revision; the next request uses it, requests
    /// already running finish on the old one.
    pub fn deploy(&self, function: DeployedFunction) {
        let key = (function.code.app.clone(), function.code.name.clone());
        let mut table = self.functions.write().unwrap_or_else(|p| p.into_inner());
        // Keep counting the requests of the old revision against the limit.
        let function = match table.get(&key) {
            Some(old) => DeployedFunction {
                in_flight: old.in_flight.clone(),
                ..function
            },
            None => function,
        };
        table.insert(key, Arc::new(function));
    }

    pub fn remove(&self, app: &str, name: &str) {
        let mut table = self.functions.write().unwrap_or_else(|p| p.into_inner());
        table.remove(&(app.to_string(), name.to_string()));
        self.pool.retire(app, name);
    }

    pub fn get(&self, app: &str, name: &str) -> Option<Arc<DeployedFunction>> {
        let table = self.functions.read().unwrap_or_else(|p| p.into_inner());
        table.get(&(app.to_string(), name.to_string())).cloned()
    }

    /// Takes a concurrency slot for `function`, or says it is full.
    pub fn admit(&self, function: &DeployedFunction) -> Result<InFlight, DispatchError> {
        let previous = function.in_flight.fetch_add(1, Ordering::AcqRel);
        let slot = InFlight(function.in_flight.clone());
        if previous >= function.max_concurrency {
            return Err(DispatchError::TooManyRequests {
                name: function.code.name.clone(),
                limit: function.max_concurrency,
            });
        }
        Ok(slot)
    }

    /// Runs `invocation` on `function` and waits for the response head.
    pub async fn invoke(&self, function: &DeployedFunction, invocation: Invocation) -> Started {
        self.pool.invoke(&function.code, invocation).await
    }
}
