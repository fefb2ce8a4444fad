//! The registry of apps and their functions: persisted in each app's own sled
//! database (`<data>/apps/<app_id>/kv`) and mirrored into the dispatcher.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use churn_dispatcher::{
    AccessMode, AuthMode, DeployedFunction, DeployedObject, Dispatcher, ObjectUsage,
};
use churn_isolates::{CodeKind, DurableObjectBinding, FunctionCode, Limits, SocketRegistry};
use churn_storage_kv::{DurableStore, KvError, KvStore, SledDurableStore, Tree};
use rand::RngCore;

use crate::invocation_log::log_prefix;
use crate::records::{AppRecord, FunctionRecord, LogEntry, ObjectRecord, ObjectUsageRecord, Stats};

/// Every change to code or env gets a new revision, so isolates never serve
/// stale code or env.
static REVISION: AtomicU64 = AtomicU64::new(1);

pub struct App {
    pub id: String,
    /// Durable Object storage of every class of the app.
    pub durable: Arc<SledDurableStore>,
    objects: Tree,
    object_usage: Tree,
    usage: Mutex<HashMap<String, Arc<ObjectUsage>>>,
    /// The live revision's WebSockets, per class.
    sockets: Mutex<HashMap<String, Arc<SocketRegistry>>>,
    kv: KvStore,
    meta: Tree,
    functions: Tree,
    pub(crate) stats: Tree,
    pub(crate) logs: Tree,
    record: RwLock<AppRecord>,
    pub(crate) stats_cache: Mutex<HashMap<String, Stats>>,
    pub(crate) log_seq: AtomicU64,
    /// Invocation records not yet written to disk (see [`App::flush_logs`]).
    pub(crate) unflushed: Mutex<Unflushed>,
}

/// Records waiting to be written, per function: never more than the log
/// keeps, so a burst costs bounded memory and one write per flush.
#[derive(Default)]
pub(crate) struct Unflushed {
    pub(crate) logs: HashMap<String, std::collections::VecDeque<LogEntry>>,
    pub(crate) stats: Vec<String>,
}

pub struct Apps {
    root: PathBuf,
    apps: RwLock<HashMap<String, Arc<App>>>,
    create_lock: Mutex<()>,
    pub dispatcher: Dispatcher,
    max_concurrency: usize,
    pub(crate) logs_per_function: usize,
    object_idle_ms: u64,
    object_timeout_ms: u64,
    object_cpu_limit_ms: u64,
    max_subrequests: u32,
    fetch_timeout_ms: u64,
}

/// Limits and timings the registry applies to what it publishes.
pub struct RegistryOptions {
    /// Worker threads (0: one per core).
    pub workers: usize,
    /// CPU limit per Durable Object event (0: no watchdog).
    pub object_cpu_limit_ms: u64,
    pub max_subrequests: u32,
    pub fetch_timeout_ms: u64,
    pub max_concurrency: usize,
    pub logs_per_function: usize,
    pub object_idle_ms: u64,
    pub object_timeout_ms: u64,
}

fn new_secret() -> String {
    let mut raw = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut raw);
    hex::encode(raw)
}

pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl App {
    fn open(dir: PathBuf, id: &str) -> Result<Self, KvError> {
        let kv = KvStore::open(&dir.join("kv"))?;
        let meta = kv.tree("meta")?;
        let record = match meta.get::<AppRecord>(b"app")? {
            Some(r) => r,
            None => {
                let r = AppRecord {
                    app_id: id.to_string(),
                    jwt_secret: new_secret(),
                    trusted_jwt_secret: None,
                    created_at: now_rfc3339(),
                    env: BTreeMap::new(),
                    do_env: BTreeMap::new(),
                };
                meta.put_durable(b"app", &r)?;
                r
            }
        };
        Ok(App {
            id: id.to_string(),
            durable: SledDurableStore::new(kv.db().clone()),
            objects: kv.tree("objects")?,
            object_usage: kv.tree("object_usage")?,
            usage: Mutex::new(HashMap::new()),
            sockets: Mutex::new(HashMap::new()),
            functions: kv.tree("functions")?,
            stats: kv.tree("stats")?,
            logs: kv.tree("logs")?,
            meta,
            kv,
            record: RwLock::new(record),
            stats_cache: Mutex::new(HashMap::new()),
            log_seq: AtomicU64::new(0),
            unflushed: Mutex::new(Unflushed::default()),
        })
    }

    pub fn record(&self) -> AppRecord {
        self.record
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Changes the app record durably.
    pub fn update_record(&self, f: impl FnOnce(&mut AppRecord)) -> Result<AppRecord, KvError> {
        let mut record = self.record.write().unwrap_or_else(|p| p.into_inner());
        let mut next = record.clone();
        f(&mut next);
        self.meta.put_durable(b"app", &next)?;
        *record = next.clone();
        Ok(next)
    }

    /// The secrets an end-user token may be signed with.
    pub fn jwt_secrets(&self) -> Vec<Vec<u8>> {
        let r = self.record.read().unwrap_or_else(|p| p.into_inner());
        let mut out = vec![r.jwt_secret.as_bytes().to_vec()];
        if let Some(t) = &r.trusted_jwt_secret {
            out.push(t.as_bytes().to_vec());
        }
        out
    }

    pub fn function(&self, name: &str) -> Result<Option<FunctionRecord>, KvError> {
        self.functions.get(name.as_bytes())
    }

    pub fn functions(&self) -> Result<Vec<FunctionRecord>, KvError> {
        Ok(self
            .functions
            .scan_prefix::<FunctionRecord>(b"")?
            .into_iter()
            .map(|(_, f)| f)
            .collect())
    }

    pub fn stats(&self, name: &str) -> Result<Stats, KvError> {
        if let Some(s) = self
            .stats_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
        {
            return Ok(s.clone());
        }
        Ok(self.stats.get(name.as_bytes())?.unwrap_or_default())
    }

    pub fn cron_state(&self, name: &str) -> Option<crate::cron::CronState> {
        self.meta
            .get(format!("cron:{name}").as_bytes())
            .ok()
            .flatten()
    }

    /// Stores the cron state durably (a claimed tick must not run twice).
    pub fn set_cron_state(
        &self,
        name: &str,
        state: &crate::cron::CronState,
    ) -> Result<(), KvError> {
        self.meta
            .put_durable(format!("cron:{name}").as_bytes(), state)
    }

    pub fn object(&self, name: &str) -> Result<Option<ObjectRecord>, KvError> {
        self.objects.get(name.as_bytes())
    }

    pub fn objects(&self) -> Result<Vec<ObjectRecord>, KvError> {
        Ok(self
            .objects
            .scan_prefix::<ObjectRecord>(b"")?
            .into_iter()
            .map(|(_, o)| o)
            .collect())
    }

    /// The live usage counters of a class (loaded from disk the first time).
    pub fn usage(&self, name: &str) -> Arc<ObjectUsage> {
        let mut usage = self.usage.lock().unwrap_or_else(|p| p.into_inner());
        usage
            .entry(name.to_string())
            .or_insert_with(|| {
                let stored: ObjectUsageRecord = self
                    .object_usage
                    .get(name.as_bytes())
                    .ok()
                    .flatten()
                    .unwrap_or_default();
                let u = ObjectUsage::default();
                u.requests.store(stored.do_requests, Ordering::Relaxed);
                u.cpu_micros.store(stored.do_cpu_micros, Ordering::Relaxed);
                Arc::new(u)
            })
            .clone()
    }

    /// Writes the usage counters to disk.
    pub fn persist_usage(&self) {
        let usage = self.usage.lock().unwrap_or_else(|p| p.into_inner());
        for (name, u) in usage.iter() {
            let record = ObjectUsageRecord {
                do_requests: u.requests.load(Ordering::Relaxed),
                do_cpu_micros: u.cpu_micros.load(Ordering::Relaxed),
            };
            if let Err(e) = self.object_usage.put(name.as_bytes(), &record) {
                tracing::error!(app = %self.id, "cannot store usage: {e}");
            }
        }
    }
}

impl Apps {
    /// Opens every app under `<data>/apps` and makes its functions live.
    pub fn open(data_dir: &std::path::Path, options: RegistryOptions) -> Result<Self, KvError> {
        let root = data_dir.join("apps");
        std::fs::create_dir_all(&root).map_err(|e| KvError::Sled(e.into()))?;
        let apps = Apps {
            root: root.clone(),
            apps: RwLock::new(HashMap::new()),
            create_lock: Mutex::new(()),
            dispatcher: Dispatcher::with_pool(match options.workers {
                0 => churn_isolates::IsolatePool::new(),
                n => churn_isolates::IsolatePool::with_threads(n),
            }),
            max_concurrency: options.max_concurrency,
            logs_per_function: options.logs_per_function,
            object_idle_ms: options.object_idle_ms,
            object_timeout_ms: options.object_timeout_ms,
            object_cpu_limit_ms: options.object_cpu_limit_ms,
            max_subrequests: options.max_subrequests,
            fetch_timeout_ms: options.fetch_timeout_ms,
        };
        let entries = std::fs::read_dir(&root).map_err(|e| KvError::Sled(e.into()))?;
        for entry in entries.flatten() {
            let Some(id) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if !crate::validate::is_app_id(&id) {
                continue;
            }
            let app = Arc::new(App::open(entry.path(), &id)?);
            for f in app.functions()? {
                apps.publish(&app, &f);
            }
            for o in app.objects()? {
                apps.publish_object(&app, &o);
                let listener = apps.dispatcher.alarm_listener();
                for (instance, at) in app.durable.alarms(&o.name)? {
                    listener.alarm_changed(&app.id, &o.name, &instance, Some(at));
                }
            }
            apps.apps
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id, app);
        }
        Ok(apps)
    }

    pub fn all(&self) -> Vec<Arc<App>> {
        self.apps
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    pub fn get(&self, id: &str) -> Option<Arc<App>> {
        self.apps
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    pub fn get_or_create(&self, id: &str) -> Result<Arc<App>, KvError> {
        if let Some(app) = self.get(id) {
            return Ok(app);
        }
        let _guard = self.create_lock.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(app) = self.get(id) {
            return Ok(app);
        }
        let app = Arc::new(App::open(self.root.join(id), id)?);
        self.apps
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string(), app.clone());
        Ok(app)
    }

    /// Makes `f` the live revision in the dispatcher.
    fn publish(&self, app: &App, f: &FunctionRecord) {
        let record = app.record();
        let mut env = record.env.clone();
        env.extend(f.env_vars.clone());
        let code = FunctionCode {
            app: app.id.clone(),
            name: f.name.clone(),
            revision: REVISION.fetch_add(1, Ordering::Relaxed),
            js: f.js.as_str().into(),
            env,
            limits: Limits {
                timeout_ms: f.timeout_ms,
                cpu_ms: f.cpu_limit_ms,
                memory_limit_mb: f.memory_limit_mb,
                max_subrequests: self.max_subrequests,
                fetch_timeout_ms: self.fetch_timeout_ms,
                ..Limits::default()
            },
            kind: CodeKind::Function,
            cpu_micros: Default::default(),
        };
        let http_auth = f.triggers.iter().find(|t| t.kind == "http").map(|t| {
            match t.config.get("auth").and_then(|a| a.as_str()) {
                Some("none") => AuthMode::None,
                _ => AuthMode::Required,
            }
        });
        self.dispatcher.deploy(DeployedFunction::new(
            Arc::new(code),
            http_auth,
            self.max_concurrency,
        ));
    }

    /// Makes a Durable Object class live (evicting the previous revision's
    /// instances).
    pub fn publish_object(&self, app: &App, o: &ObjectRecord) {
        let usage = app.usage(&o.name);
        // A new revision starts with no sockets; the old one's are closed
        // with 1012 (service restart) so clients reconnect to it.
        let sockets = Arc::new(SocketRegistry::default());
        if let Some(old) = app
            .sockets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(o.name.clone(), sockets.clone())
        {
            old.close_all(1012, "the Durable Object was redeployed");
        }
        let code = FunctionCode {
            app: app.id.clone(),
            name: o.name.clone(),
            revision: REVISION.fetch_add(1, Ordering::Relaxed),
            js: o.js.as_str().into(),
            env: app.record().do_env,
            limits: Limits {
                timeout_ms: self.object_timeout_ms,
                cpu_ms: self.object_cpu_limit_ms,
                max_subrequests: self.max_subrequests,
                fetch_timeout_ms: self.fetch_timeout_ms,
                ..Limits::default()
            },
            kind: CodeKind::DurableObject(DurableObjectBinding {
                class_name: o.class_name.clone(),
                store: app.durable.clone(),
                alarms: self.dispatcher.alarm_listener(),
                idle_ms: self.object_idle_ms,
                sockets,
            }),
            cpu_micros: usage.cpu_micros.clone(),
        };
        let access = AccessMode::parse(&o.access_mode).unwrap_or(AccessMode::Authenticated);
        self.dispatcher.deploy_object(DeployedObject {
            code: Arc::new(code),
            access,
            usage,
        });
    }

    pub fn save_object(&self, app: &App, o: &ObjectRecord) -> Result<(), KvError> {
        app.objects.put_durable(o.name.as_bytes(), o)?;
        self.publish_object(app, o);
        Ok(())
    }

    /// Deletes a class and, irreversibly, every instance's storage.
    pub fn delete_object(&self, app: &App, name: &str) -> Result<bool, KvError> {
        self.dispatcher.remove_object(&app.id, name);
        if let Some(old) = app
            .sockets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name)
        {
            old.close_all(1001, "the Durable Object was deleted");
        }
        let existed = app.objects.delete(name.as_bytes())?;
        app.durable.drop_class(name)?;
        app.object_usage.delete(name.as_bytes())?;
        app.usage
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        app.kv.flush()?;
        Ok(existed)
    }

    /// Re-publishes every class of the app (its Durable Object env changed).
    pub fn republish_objects(&self, app: &App) -> Result<(), KvError> {
        for o in app.objects()? {
            self.publish_object(app, &o);
        }
        Ok(())
    }

    /// Stores `f` durably, then makes it live.
    pub fn save_function(&self, app: &App, f: &FunctionRecord) -> Result<(), KvError> {
        app.functions.put_durable(f.name.as_bytes(), f)?;
        self.publish(app, f);
        Ok(())
    }

    pub fn delete_function(&self, app: &App, name: &str) -> Result<bool, KvError> {
        let existed = app.functions.delete(name.as_bytes())?;
        app.stats.delete(name.as_bytes())?;
        app.meta.delete(format!("cron:{name}").as_bytes())?;
        app.logs.delete_prefix(&log_prefix(name))?;
        app.kv.flush()?;
        app.stats_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        self.dispatcher.remove(&app.id, name);
        Ok(existed)
    }

    /// Re-publishes every function of the app (its env changed).
    pub fn republish_all(&self, app: &App) -> Result<(), KvError> {
        for f in app.functions()? {
            self.publish(app, &f);
        }
        Ok(())
    }

    /// Writes every app's usage counters to disk.
    pub fn persist_usage(&self) {
        for app in self.apps.read().unwrap_or_else(|p| p.into_inner()).values() {
            app.persist_usage();
        }
    }

    /// Flushes every app's data to disk (at shutdown).
    pub fn flush_all(&self) {
        for app in self.apps.read().unwrap_or_else(|p| p.into_inner()).values() {
            app.persist_usage();
            app.flush_logs(self.logs_per_function);
            if let Err(e) = app.kv.flush() {
                tracing::error!(app = %app.id, "flush failed: {e}");
            }
        }
    }
}
