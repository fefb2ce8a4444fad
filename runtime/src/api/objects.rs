//! `/v1/{app}/durable-objects…`: deploy, read, delete Durable Object classes,
//! their usage, and the env they share.

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::LazyLock;

use churn_dispatcher::AccessMode;
use churn_isolates::{compile_durable_object, ObjectSourceError};

use super::app::existing;
use crate::apps::now_rfc3339;
use crate::error::ApiError;
use crate::host::SharedHost;
use crate::http::{json as json_response, parse_json, read_body, Body};
use crate::records::ObjectRecord;

/// Classes per app.
const MAX_CLASSES: usize = 5;
/// All classes of an app together.
const MAX_BUNDLE_BYTES: usize = 10 * 1024 * 1024;
const MAX_SOURCE_BYTES: usize = 5 * 1024 * 1024;

static OBJECT_NAME: LazyLock<regex::Regex> =
    LazyLock::new(|| regex::Regex::new(r"^[a-z][a-z0-9]*(?:-[a-z0-9]+)*$").expect("regex"));

fn rule(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, code, message)
}

fn object_not_found(app: &str, name: &str) -> ApiError {
    ApiError::not_found(
        "DURABLE_OBJECT_NOT_FOUND",
        format!("no Durable Object class {name:?} in app {app:?}"),
    )
    .fix("list the app's classes with GET /v1/{app}/durable-objects")
}

/// The env binding name a class would take (`chat-room` → `CHAT_ROOM`).
fn binding_name(name: &str) -> String {
    name.replace('-', "_").to_ascii_uppercase()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeployRequest {
    name: String,
    code: String,
    access_mode: Option<String>,
}

fn describe(o: &ObjectRecord) -> Value {
    json!({
        "id": o.id,
        "name": o.name,
        "class_name": o.class_name,
        "status": o.status,
        "error_message": o.error_message,
        "access_mode": o.access_mode,
        "created_at": o.created_at,
        "last_deployed_at": o.last_deployed_at,
    })
}

pub async fn deploy(
    host: &SharedHost,
    req: Request<Incoming>,
    app_id: &str,
) -> Result<Response<Body>, ApiError> {
    let body = read_body(req.into_body(), 2 * MAX_SOURCE_BYTES + 64 * 1024).await?;
    let request: DeployRequest = parse_json(&body)?;
    if !OBJECT_NAME.is_match(&request.name) || request.name.len() > 63 || request.name == "env" {
        return Err(rule(
            "INVALID_NAME",
            format!(
                "name {:?} is invalid: use kebab-case (a-z, 0-9, single dashes), at most 63 characters, not \"env\"",
                request.name
            ),
        ));
    }
    let access = match request.access_mode.as_deref() {
        None => AccessMode::Authenticated,
        Some(m) => AccessMode::parse(m).ok_or_else(|| {
            rule(
                "INVALID_ACCESS_MODE",
                format!("access_mode {m:?} is invalid: use public, authenticated or service_key"),
            )
        })?,
    };
    if request.code.len() > MAX_SOURCE_BYTES {
        return Err(rule(
            "SOURCE_TOO_LARGE",
            format!(
                "the source is {} bytes; the limit is 5 MiB",
                request.code.len()
            ),
        ));
    }
    let compiled = compile_durable_object(&request.code).map_err(|e: ObjectSourceError| {
        let code = e.code();
        rule(code, e.to_string())
    })?;

    let app = host.apps.get_or_create(app_id)?;
    let others: Vec<ObjectRecord> = app
        .objects()?
        .into_iter()
        .filter(|o| o.name != request.name)
        .collect();
    if others.len() >= MAX_CLASSES {
        return Err(rule(
            "TOO_MANY_CLASSES",
            format!("an app has at most {MAX_CLASSES} Durable Object classes; delete one first"),
        ));
    }
    let bundle: usize = others.iter().map(|o| o.code.len()).sum::<usize>() + request.code.len();
    if bundle > MAX_BUNDLE_BYTES {
        return Err(rule(
            "BUNDLE_TOO_LARGE",
            format!("the app's classes would total {bundle} bytes; the limit is 10 MiB"),
        ));
    }
    if app
        .record()
        .do_env
        .contains_key(&binding_name(&request.name))
    {
        return Err(rule(
            "INVALID_NAME",
            format!(
                "the env var {} is already set; it would collide with this class's binding name",
                binding_name(&request.name)
            ),
        ));
    }
    let previous = app.object(&request.name)?;
    let now = now_rfc3339();
    let record = ObjectRecord {
        id: previous
            .as_ref()
            .map(|p| p.id.clone())
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
        name: request.name,
        class_name: compiled.class_name,
        code: request.code,
        js: compiled.js,
        access_mode: access.as_str().to_string(),
        status: "READY".to_string(),
        error_message: None,
        created_at: previous
            .as_ref()
            .map(|p| p.created_at.clone())
            .unwrap_or_else(|| now.clone()),
        last_deployed_at: now,
    };
    host.apps.save_object(&app, &record)?;
    let status = if previous.is_some() {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok(json_response(status, &describe(&record)))
}

pub fn list(host: &SharedHost, app_id: &str) -> Result<Response<Body>, ApiError> {
    let app = existing(host, app_id)?;
    let objects: Vec<Value> = app.objects()?.iter().map(describe).collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({ "durable_objects": objects }),
    ))
}

pub fn get(host: &SharedHost, app_id: &str, name: &str) -> Result<Response<Body>, ApiError> {
    let app = existing(host, app_id)?;
    let o = app
        .object(name)?
        .ok_or_else(|| object_not_found(app_id, name))?;
    let mut out = describe(&o);
    if let Some(obj) = out.as_object_mut() {
        obj.insert("code".into(), o.code.into());
    }
    Ok(json_response(StatusCode::OK, &out))
}

pub fn delete(host: &SharedHost, app_id: &str, name: &str) -> Result<Response<Body>, ApiError> {
    let app = existing(host, app_id)?;
    if !host.apps.delete_object(&app, name)? {
        return Err(object_not_found(app_id, name));
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({ "deleted": true, "name": name }),
    ))
}

pub fn usage(host: &SharedHost, app_id: &str, name: &str) -> Result<Response<Body>, ApiError> {
    let app = existing(host, app_id)?;
    if app.object(name)?.is_none() {
        return Err(object_not_found(app_id, name));
    }
    let usage = app.usage(name);
    app.persist_usage();
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "do_requests": usage.requests.load(Ordering::Relaxed),
            "do_cpu_ms": usage.cpu_micros.load(Ordering::Relaxed) / 1000,
        }),
    ))
}

pub fn env_keys(host: &SharedHost, app_id: &str) -> Result<Response<Body>, ApiError> {
    let app = existing(host, app_id)?;
    let keys: Vec<String> = app.record().do_env.keys().cloned().collect();
    Ok(json_response(StatusCode::OK, &json!({ "keys": keys })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvValue {
    value: String,
}

fn check_env_key(host: &SharedHost, app_id: &str, key: &str) -> Result<(), ApiError> {
    super::app::check_env_key(key)?;
    if let Some(app) = host.apps.get(app_id) {
        if app.objects()?.iter().any(|o| binding_name(&o.name) == key) {
            return Err(ApiError::invalid(format!(
                "env key {key:?} collides with a Durable Object class's binding name"
            ))
            .fix("pick another name"));
        }
    }
    Ok(())
}

pub async fn put_env(
    host: &SharedHost,
    req: Request<Incoming>,
    app_id: &str,
    key: &str,
) -> Result<Response<Body>, ApiError> {
    check_env_key(host, app_id, key)?;
    let body = read_body(req.into_body(), 64 * 1024).await?;
    let value: EnvValue = parse_json(&body)?;
    if value.value.len() > 8 * 1024 {
        return Err(ApiError::invalid(format!(
            "the value of {key:?} is longer than 8 KiB"
        )));
    }
    let app = host.apps.get_or_create(app_id)?;
    app.update_record(|r| {
        r.do_env.insert(key.to_string(), value.value);
    })?;
    // Live instances are evicted so they see the new value; storage stays.
    host.apps.republish_objects(&app)?;
    Ok(json_response(
        StatusCode::OK,
        &json!({ "key": key, "set": true }),
    ))
}

pub fn delete_env(host: &SharedHost, app_id: &str, key: &str) -> Result<Response<Body>, ApiError> {
    let app = existing(host, app_id)?;
    if !app.record().do_env.contains_key(key) {
        return Err(ApiError::not_found(
            "ENV_NOT_FOUND",
            format!("no Durable Object env var {key:?}"),
        ));
    }
    app.update_record(|r| {
        r.do_env.remove(key);
    })?;
    host.apps.republish_objects(&app)?;
    Ok(json_response(
        StatusCode::OK,
        &json!({ "key": key, "deleted": true }),
    ))
}
