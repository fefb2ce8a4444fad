//! The table of live function deployments and the way into their isolates.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use churn_isolates::{AlarmListener, FunctionCode, Invocation, IsolatePool, Started};

use crate::alarms::AlarmScheduler;
use crate::objects::{self, DeployedObject, ObjectTable};
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

impl Default for Dispatcher {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// `(app, function)` → its live revision.
/// App → function name → live revision (nested so a lookup allocates nothing).
type FunctionTable = HashMap<String, HashMap<String, Arc<DeployedFunction>>>;

/// Routes invocations to functions and Durable Object instances.
#[derive(Clone)]
pub struct Dispatcher {
    functions: Arc<RwLock<FunctionTable>>,
    objects: ObjectTable,
    pool: IsolatePool,
    alarms: Arc<AlarmScheduler>,
}

impl Dispatcher {
    /// One worker thread per core; starts the alarm scheduler too (call
    /// inside a tokio runtime).
    pub fn new() -> Self {
        Self::with_pool(IsolatePool::new())
    }

    /// Uses `pool`'s worker threads.
    pub fn with_pool(pool: IsolatePool) -> Self {
        let objects = ObjectTable::default();
        let alarms = Arc::new(AlarmScheduler::start(objects.clone(), pool.clone()));
        Dispatcher {
            functions: Arc::default(),
            objects,
            pool,
            alarms,
        }
    }

    /// Where Durable Object code reports alarm changes.
    pub fn alarm_listener(&self) -> Arc<dyn AlarmListener> {
        self.alarms.clone()
    }

    /// Makes `object` the live revision of its class; the previous revision's
    /// instances are evicted (their storage stays).
    pub fn deploy_object(&self, object: DeployedObject) {
        objects::deploy(&self.objects, &self.pool, object);
    }

    pub fn remove_object(&self, app: &str, name: &str) {
        objects::remove(&self.objects, &self.pool, app, name);
    }

    pub fn object(&self, app: &str, name: &str) -> Option<Arc<DeployedObject>> {
        objects::lookup(&self.objects, app, name)
    }

    /// Delivers a request to one instance and waits for the response head.
    pub async fn invoke_object(
        &self,
        object: &DeployedObject,
        instance: &str,
        invocation: Invocation,
    ) -> Started {
        objects::invoke(&self.pool, object, instance, invocation).await
    }

    pub fn pool(&self) -> &IsolatePool {
        &self.pool
    }

    /// Makes `function` the live revision; the next request uses it, requests
    /// already running finish on the old one.
    pub fn deploy(&self, function: DeployedFunction) {
        let (app, name) = (function.code.app.clone(), function.code.name.clone());
        let mut table = self.functions.write().unwrap_or_else(|p| p.into_inner());
        // Keep counting the requests of the old revision against the limit.
        let functions = table.entry(app).or_default();
        let function = match functions.get(&name) {
            Some(old) => DeployedFunction {
                in_flight: old.in_flight.clone(),
                ..function
            },
            None => function,
        };
        functions.insert(name, Arc::new(function));
    }

    pub fn remove(&self, app: &str, name: &str) {
        let mut table = self.functions.write().unwrap_or_else(|p| p.into_inner());
        if let Some(functions) = table.get_mut(app) {
            functions.remove(name);
        }
        self.pool.retire(app, name, false);
    }

    pub fn get(&self, app: &str, name: &str) -> Option<Arc<DeployedFunction>> {
        let table = self.functions.read().unwrap_or_else(|p| p.into_inner());
        table.get(app)?.get(name).cloned()
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
        self.pool.invoke(&function.code, None, invocation).await
    }
}
