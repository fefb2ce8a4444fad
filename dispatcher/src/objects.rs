//! The table of deployed Durable Object classes and the way into their
//! instances. Each class runs in one isolate that holds all of its live
//! instances, so there is exactly one live instance per `(app, class, id)`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use churn_isolates::{FunctionCode, Invocation, IsolatePool, Started};

/// Who may reach a class's instances over HTTP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessMode {
    /// Anyone.
    Public,
    /// A valid end-user JWT (or a service key).
    Authenticated,
    /// A service key only.
    ServiceKey,
}

impl AccessMode {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "public" => Some(AccessMode::Public),
            "authenticated" => Some(AccessMode::Authenticated),
            "service_key" => Some(AccessMode::ServiceKey),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AccessMode::Public => "public",
            AccessMode::Authenticated => "authenticated",
            AccessMode::ServiceKey => "service_key",
        }
    }
}

/// Requests and CPU time a class has used.
#[derive(Default, Debug)]
pub struct ObjectUsage {
    pub requests: AtomicU64,
    /// Shared with the class's isolate, which adds to it.
    pub cpu_micros: Arc<AtomicU64>,
}

/// One deployed class revision.
pub struct DeployedObject {
    pub code: Arc<FunctionCode>,
    pub access: AccessMode,
    pub usage: Arc<ObjectUsage>,
}

pub(crate) type ObjectTable = Arc<RwLock<HashMap<(String, String), Arc<DeployedObject>>>>;

pub(crate) fn lookup(table: &ObjectTable, app: &str, name: &str) -> Option<Arc<DeployedObject>> {
    table
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .get(&(app.to_string(), name.to_string()))
        .cloned()
}

pub(crate) fn deploy(table: &ObjectTable, pool: &IsolatePool, object: DeployedObject) {
    let key = (object.code.app.clone(), object.code.name.clone());
    // The old revision's isolate finishes what it has and exits; its
    // instances are evicted (their storage stays).
    pool.retire(&key.0, &key.1, true);
    table
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .insert(key, Arc::new(object));
}

pub(crate) fn remove(table: &ObjectTable, pool: &IsolatePool, app: &str, name: &str) {
    table
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&(app.to_string(), name.to_string()));
    pool.retire(app, name, true);
}

pub(crate) async fn invoke(
    pool: &IsolatePool,
    object: &DeployedObject,
    instance: &str,
    invocation: Invocation,
) -> Started {
    object.usage.requests.fetch_add(1, Ordering::Relaxed);
    pool.invoke(&object.code, Some(instance.to_string()), invocation)
        .await
}
