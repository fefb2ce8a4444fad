//! `/v1/{app}/functions…`: deploy, read, delete, env, invoke and logs.

use std::collections::BTreeMap;

use churn_dispatcher::{CallerType, Invocation};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};

use super::app::{apply_env_patch, existing};
use crate::apps::now_rfc3339;
use crate::error::ApiError;
use crate::host::SharedHost;
use crate::http::{json as json_response, parse_json, read_body, Body};
use crate::records::{FunctionRecord, Trigger};
use crate::run::{run_function, RunInfo};
use crate::validate::is_function_name;

const MAX_CODE_BYTES: usize = 5 * 1024 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct DeployRequest {
    name: String,
    code: String,
    description: Option<String>,
    env_vars: Option<BTreeMap<String, String>>,
    timeout_ms: Option<u64>,
    cpu_limit_ms: Option<u64>,
    memory_limit_mb: Option<u64>,
    trigger: Option<Trigger>,
    triggers: Option<Vec<Trigger>>,
}

fn function_not_found(app: &str, name: &str) -> ApiError {
    ApiError::not_found(
        "FUNCTION_NOT_FOUND",
        format!("no function {name:?} in app {app:?}"),
    )
    .fix("list the app's functions with GET /v1/{app}/functions")
}

fn check_triggers(mut triggers: Vec<Trigger>) -> Result<Vec<Trigger>, ApiError> {
    if triggers.is_empty() {
        triggers.push(Trigger {
            kind: "http".into(),
            config: json!({ "auth": "required" }),
        });
    }
    let mut seen = Vec::new();
    for t in &mut triggers {
        if seen.contains(&t.kind) {
            return Err(ApiError::invalid(format!(
                "trigger type {:?} appears more than once",
                t.kind
            )));
        }
        seen.push(t.kind.clone());
        match t.kind.as_str() {
            "http" => {
                if t.config.is_null() {
                    t.config = json!({});
                }
                let Some(config) = t.config.as_object_mut() else {
                    return Err(ApiError::invalid("trigger.config must be an object"));
                };
                if let Some(key) = config.keys().find(|k| k.as_str() != "auth") {
                    return Err(ApiError::invalid(format!(
                        "unknown field {key:?} in the http trigger's config (expected: auth)"
                    )));
                }
                match config.get("auth") {
                    None => {
                        config.insert("auth".into(), "required".into());
                    }
                    Some(Value::String(s)) if s == "none" || s == "required" => {}
                    Some(other) => {
                        return Err(ApiError::invalid(format!(
                            "trigger.config.auth must be \"none\" or \"required\", got {other}"
                        )))
                    }
                }
            }
            "cron" => {
                crate::cron::CronSpec::parse(&t.config).map_err(ApiError::invalid)?;
            }
            "websocket" => {
                let Some(config) = t.config.as_object() else {
                    return Err(ApiError::invalid(
                        "trigger.config must be an object like {\"event\": \"chat.send\"}",
                    ));
                };
                if let Some(key) = config.keys().find(|k| *k != "event" && *k != "auth") {
                    return Err(ApiError::invalid(format!(
                        "unknown field {key:?} in the websocket trigger's config (expected: event, auth)"
                    )));
                }
                let event = config.get("event").and_then(Value::as_str).unwrap_or("");
                let valid = !event.is_empty()
                    && event.len() <= 100
                    && event
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_.:-".contains(c));
                if !valid {
                    return Err(ApiError::invalid(
                        "trigger.config.event must be 1 to 100 of A-Z, a-z, 0-9, _ . : -",
                    ));
                }
                match config.get("auth") {
                    None | Some(Value::Null) => {}
                    Some(Value::String(s)) if s == "none" || s == "required" => {}
                    Some(other) => {
                        return Err(ApiError::invalid(format!(
                            "trigger.config.auth must be \"none\" or \"required\", got {other}"
                        )))
                    }
                }
            }
            other => {
                return Err(ApiError::invalid(format!(
                    "unknown trigger type {other:?} (expected http, cron or websocket)"
                )))
            }
        }
    }
    Ok(triggers)
}

fn url_of(host: &SharedHost, app_id: &str, name: &str) -> String {
    format!("{}/v1/{app_id}/fn/{name}", host.public_base)
}

pub async fn deploy(
    host: &SharedHost,
    req: Request<Incoming>,
    app_id: &str,
) -> Result<Response<Body>, ApiError> {
    let body = read_body(req.into_body(), MAX_CODE_BYTES * 2 + 64 * 1024).await?;
    let request: DeployRequest = parse_json(&body)?;
    if !is_function_name(&request.name) {
        return Err(ApiError::invalid(format!(
            "function name {:?} is invalid: start with a-z, then up to 99 of a-z, 0-9, _ and -",
            request.name
        )));
    }
    if request.code.trim().is_empty() {
        return Err(ApiError::invalid("code is empty"));
    }
    if request.code.len() > MAX_CODE_BYTES {
        return Err(ApiError::invalid("code is larger than 5 MiB"));
    }
    if request.description.as_ref().is_some_and(|d| d.len() > 2000) {
        return Err(ApiError::invalid("description is longer than 2000 bytes"));
    }
    let timeout_ms = request.timeout_ms.unwrap_or(host.config.default_timeout_ms);
    if !(1..=900_000).contains(&timeout_ms) {
        return Err(ApiError::invalid("timeoutMs must be between 1 and 900000"));
    }
    let cpu_limit_ms = request
        .cpu_limit_ms
        .unwrap_or(host.config.default_cpu_limit_ms);
    if !(10..=300_000).contains(&cpu_limit_ms) {
        return Err(ApiError::invalid(
            "cpuLimitMs must be between 10 and 300000",
        ));
    }
    let cpu_limit_ms = if host.config.watchdog {
        cpu_limit_ms
    } else {
        0
    };
    let memory_limit_mb = request
        .memory_limit_mb
        .unwrap_or(host.config.default_memory_limit_mb);
    if !(16..=4096).contains(&memory_limit_mb) {
        return Err(ApiError::invalid(
            "memoryLimitMb must be between 16 and 4096",
        ));
    }
    let mut env_vars = BTreeMap::new();
    apply_env_patch(
        &mut env_vars,
        request
            .env_vars
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, Some(v)))
            .collect(),
    )?;
    let mut triggers: Vec<Trigger> = request.trigger.into_iter().collect();
    triggers.extend(request.triggers.unwrap_or_default());
    let triggers = check_triggers(triggers)?;
    let js = churn_isolates::compile_function(&request.code)
        .map_err(|e| ApiError::invalid(e.to_string()))?;

    if let Some(app) = host.apps.get(app_id) {
        for t in triggers.iter().filter(|t| t.kind == "websocket") {
            let event = &t.config["event"];
            for other in app.functions()?.iter().filter(|f| f.name != request.name) {
                if other
                    .triggers
                    .iter()
                    .any(|o| o.kind == "websocket" && &o.config["event"] == event)
                {
                    return Err(ApiError::invalid(format!(
                        "the event {event} is already handled by function {:?}",
                        other.name
                    )));
                }
            }
        }
    }
    let app = host.apps.get_or_create(app_id)?;
    let previous = app.function(&request.name)?;
    let now = now_rfc3339();
    let record = FunctionRecord {
        id: previous
            .as_ref()
            .map(|p| p.id.clone())
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
        name: request.name.clone(),
        version: previous.as_ref().map(|p| p.version + 1).unwrap_or(1),
        code: request.code,
        js,
        description: request.description,
        env_vars,
        timeout_ms,
        cpu_limit_ms,
        memory_limit_mb,
        triggers,
        created_at: previous
            .as_ref()
            .map(|p| p.created_at.clone())
            .unwrap_or_else(|| now.clone()),
        deployed_at: now,
    };
    host.apps.save_function(&app, &record)?;
    host.cron_update(app_id, &record);
    let status = if previous.is_some() {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok(json_response(
        status,
        &json!({
            "id": record.id,
            "name": record.name,
            "version": record.version,
            "url": url_of(host, app_id, &record.name),
            "triggers": record.triggers,
            "deployedAt": record.deployed_at,
        }),
    ))
}

fn summary(host: &SharedHost, app_id: &str, f: &FunctionRecord) -> Value {
    json!({
        "id": f.id,
        "name": f.name,
        "description": f.description,
        "version": f.version,
        "url": url_of(host, app_id, &f.name),
        "triggers": f.triggers,
        "timeoutMs": f.timeout_ms,
        "memoryLimitMb": f.memory_limit_mb,
        "createdAt": f.created_at,
        "deployedAt": f.deployed_at,
    })
}

pub fn list(host: &SharedHost, app_id: &str) -> Result<Response<Body>, ApiError> {
    let app = existing(host, app_id)?;
    let functions: Vec<Value> = app
        .functions()?
        .iter()
        .map(|f| summary(host, app_id, f))
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({ "functions": functions }),
    ))
}

pub fn get(host: &SharedHost, app_id: &str, name: &str) -> Result<Response<Body>, ApiError> {
    let app = existing(host, app_id)?;
    let f = app
        .function(name)?
        .ok_or_else(|| function_not_found(app_id, name))?;
    app.flush_logs(host.apps.logs_per_function());
    let stats = app.stats(name)?;
    let mut out = summary(host, app_id, &f);
    let avg = if stats.invocation_count == 0 {
        0.0
    } else {
        stats.total_duration_ms as f64 / stats.invocation_count as f64
    };
    if let Some(obj) = out.as_object_mut() {
        obj.insert("code".into(), f.code.clone().into());
        if let Some(spec) = crate::cron::CronSpec::of(&f) {
            let next: Vec<String> = spec
                .upcoming(5)
                .iter()
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
                .collect();
            obj.insert("nextRuns".into(), json!(next));
        }
        obj.insert(
            "envKeys".into(),
            json!(f.env_vars.keys().collect::<Vec<_>>()),
        );
        obj.insert(
            "limits".into(),
            json!({
                "timeoutMs": f.timeout_ms,
                "cpuLimitMs": f.cpu_limit_ms,
                "memoryLimitMb": f.memory_limit_mb,
                "waitUntilMs": 30_000,
                "maxSubrequests": host.config.max_subrequests,
                "fetchTimeoutMs": host.config.fetch_timeout_ms,
                "maxConcurrency": host.config.max_concurrency,
                "maxBodyBytes": host.config.max_body_bytes,
            }),
        );
        obj.insert(
            "stats".into(),
            json!({
                "invocationCount": stats.invocation_count,
                "errorCount": stats.error_count,
                "avgDuration": avg,
                "lastInvoked": stats.last_invoked,
            }),
        );
    }
    Ok(json_response(StatusCode::OK, &out))
}

pub fn delete(host: &SharedHost, app_id: &str, name: &str) -> Result<Response<Body>, ApiError> {
    let app = existing(host, app_id)?;
    if !host.apps.delete_function(&app, name)? {
        return Err(function_not_found(app_id, name));
    }
    host.cron_remove(app_id, name);
    Ok(json_response(
        StatusCode::OK,
        &json!({ "deleted": true, "name": name }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct EnvPatch {
    env_vars: BTreeMap<String, Option<String>>,
}

pub async fn patch_env(
    host: &SharedHost,
    req: Request<Incoming>,
    app_id: &str,
    name: &str,
) -> Result<Response<Body>, ApiError> {
    let app = existing(host, app_id)?;
    let body = read_body(req.into_body(), host.config.max_body_bytes).await?;
    let patch: EnvPatch = parse_json(&body)?;
    let mut f = app
        .function(name)?
        .ok_or_else(|| function_not_found(app_id, name))?;
    apply_env_patch(&mut f.env_vars, patch.env_vars)?;
    host.apps.save_function(&app, &f)?;
    Ok(json_response(
        StatusCode::OK,
        &json!({ "envKeys": f.env_vars.keys().collect::<Vec<_>>() }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InvokeRequest {
    method: Option<String>,
    path: Option<String>,
    headers: Option<BTreeMap<String, String>>,
    body: Option<Value>,
}

pub async fn invoke(
    host: &SharedHost,
    req: Request<Incoming>,
    app_id: &str,
    name: &str,
) -> Result<Response<Body>, ApiError> {
    let app = existing(host, app_id)?;
    let body = read_body(req.into_body(), host.config.max_body_bytes).await?;
    let request: InvokeRequest = parse_json(&body)?;
    let function = host
        .apps
        .dispatcher
        .get(app_id, name)
        .ok_or_else(|| function_not_found(app_id, name))?;
    let method = request
        .method
        .unwrap_or_else(|| "GET".into())
        .to_uppercase();
    if hyper::Method::from_bytes(method.as_bytes()).is_err() {
        return Err(ApiError::invalid(format!(
            "method {method:?} is not an HTTP method"
        )));
    }
    let path = request.path.unwrap_or_default();
    if !(path.is_empty() || path.starts_with('/')) {
        return Err(ApiError::invalid("path must start with /"));
    }
    let mut headers: Vec<(String, String)> = request
        .headers
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect();
    let body = match request.body {
        None | Some(Value::Null) => bytes::Bytes::new(),
        Some(Value::String(s)) => bytes::Bytes::from(s),
        Some(other) => {
            if !headers.iter().any(|(k, _)| k == "content-type") {
                headers.push(("content-type".into(), "application/json".into()));
            }
            bytes::Bytes::from(other.to_string())
        }
    };
    let request_id = crate::run::request_id();
    let url_path = format!("/v1/{app_id}/fn/{name}{path}");
    let invocation = Invocation {
        method: method.clone(),
        url: format!("{}{url_path}", host.public_base),
        headers,
        body,
        user_id: None,
        caller: CallerType::ServiceKey,
        request_id: request_id.clone(),
        ip: "127.0.0.1".into(),
    };
    let info = RunInfo {
        trigger: "invoke",
        method,
        path: url_path,
        request_id,
    };
    let started = std::time::Instant::now();
    let response = run_function(host, &app, function, invocation, info).await;
    let (parts, body) = response.into_parts();
    let bytes = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| ApiError::internal(format!("the response stream failed: {e}")))?;
    let duration_ms = started.elapsed().as_millis() as u64;
    let headers: BTreeMap<String, String> = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let is_json = headers
        .get("content-type")
        .is_some_and(|t| t.starts_with("application/json"));
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let body = match is_json.then(|| serde_json::from_str::<Value>(&text)) {
        Some(Ok(v)) => v,
        _ => Value::String(text),
    };
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "status": parts.status.as_u16(),
            "headers": headers,
            "body": body,
            "duration_ms": duration_ms,
        }),
    ))
}

pub fn logs(
    host: &SharedHost,
    req: &Request<Incoming>,
    app_id: &str,
    name: &str,
) -> Result<Response<Body>, ApiError> {
    let app = existing(host, app_id)?;
    if app.function(name)?.is_none() {
        return Err(function_not_found(app_id, name));
    }
    let mut limit = 50usize;
    let mut since: Option<chrono::DateTime<chrono::Utc>> = None;
    let mut errors_only = false;
    for (k, v) in form_urlencoded(req.uri().query().unwrap_or("")) {
        match k.as_str() {
            "limit" => {
                limit = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=1000).contains(n))
                    .ok_or_else(|| ApiError::invalid("limit must be a number from 1 to 1000"))?;
            }
            "since" => {
                since = Some(
                    chrono::DateTime::parse_from_rfc3339(&v)
                        .map(|t| t.with_timezone(&chrono::Utc))
                        .map_err(|_| ApiError::invalid("since must be an RFC 3339 time"))?,
                );
            }
            "level" => match v.as_str() {
                "error" => errors_only = true,
                "all" => errors_only = false,
                _ => return Err(ApiError::invalid("level must be error or all")),
            },
            other => {
                return Err(ApiError::invalid(format!(
                    "unknown query parameter {other:?}"
                )))
            }
        }
    }
    app.flush_logs(host.apps.logs_per_function());
    let mut entries = app.logs(name, host.config.logs_per_function.max(limit))?;
    entries.retain(|e| {
        let recent = match (&since, chrono::DateTime::parse_from_rfc3339(&e.timestamp)) {
            (Some(s), Ok(t)) => t.with_timezone(&chrono::Utc) >= *s,
            _ => true,
        };
        recent && (!errors_only || e.error.is_some() || e.status >= 500)
    });
    entries.truncate(limit);
    Ok(json_response(StatusCode::OK, &json!({ "logs": entries })))
}

fn form_urlencoded(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(&s.replace('+', " "))
                    .decode_utf8_lossy()
                    .into_owned()
            };
            (decode(k), decode(v))
        })
        .collect()
}

/// `POST …/functions/{name}/trigger`: runs a cron function now, once.
pub async fn trigger(
    host: &SharedHost,
    app_id: &str,
    name: &str,
) -> Result<Response<Body>, ApiError> {
    let app = existing(host, app_id)?;
    let f = app
        .function(name)?
        .ok_or_else(|| function_not_found(app_id, name))?;
    let Some(spec) = crate::cron::CronSpec::of(&f) else {
        return Err(
            ApiError::invalid(format!("function {name:?} has no cron trigger"))
                .fix("use POST …/invoke to call a function without a schedule"),
        );
    };
    let started = std::time::Instant::now();
    let status = crate::cron::run_once(
        host,
        app_id,
        name,
        &spec.schedule,
        chrono::Utc::now(),
        "manual",
        None,
    )
    .await
    .ok_or_else(|| function_not_found(app_id, name))?;
    Ok(json_response(
        StatusCode::OK,
        &json!({ "status": status, "duration_ms": started.elapsed().as_millis() as u64 }),
    ))
}
