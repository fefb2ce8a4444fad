//! The control API: deploy and manage functions, env, auth, logs. Every route
//! needs a service key.

mod app;
mod functions;
mod objects;

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};

use crate::error::ApiError;
use crate::host::SharedHost;
use crate::http::{bearer, error_response, Body};
use crate::validate::is_app_id;

fn method_not_allowed(allowed: &str) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "METHOD_NOT_ALLOWED",
        format!("this route accepts {allowed}"),
    )
}

pub fn route_not_found(path: &str) -> ApiError {
    ApiError::not_found("NOT_FOUND", format!("no route matches {path:?}"))
        .fix("see the README for the API's routes")
}

/// Handles `/v1/{app}/…` control routes; `segments` starts after the app id.
pub async fn handle(
    host: &SharedHost,
    req: Request<Incoming>,
    app_id: &str,
    segments: &[&str],
) -> Response<Body> {
    match route(host, req, app_id, segments).await {
        Ok(res) => res,
        Err(e) => error_response(&e),
    }
}

async fn route(
    host: &SharedHost,
    req: Request<Incoming>,
    app_id: &str,
    segments: &[&str],
) -> Result<Response<Body>, ApiError> {
    let path = req.uri().path().to_string();
    if !bearer(req.headers()).is_some_and(|t| host.keys.verify(t)) {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "AUTH_REQUIRED",
            "the control API needs a valid service key",
        )
        .fix("send Authorization: Bearer <service key> (printed on first start, or `churn keys create`)"));
    }
    if !is_app_id(app_id) {
        return Err(ApiError::invalid(format!(
            "app id {app_id:?} is invalid: use 3 to 64 of a-z, 0-9 and _"
        )));
    }
    let method = req.method().clone();
    match (segments, &method) {
        (["functions"], &Method::POST) => functions::deploy(host, req, app_id).await,
        (["functions"], &Method::GET) => functions::list(host, app_id),
        (["functions"], _) => Err(method_not_allowed("GET, POST")),
        (["functions", name], &Method::GET) => functions::get(host, app_id, name),
        (["functions", name], &Method::DELETE) => functions::delete(host, app_id, name),
        (["functions", _], _) => Err(method_not_allowed("GET, DELETE")),
        (["functions", name, "env"], &Method::PATCH) => {
            functions::patch_env(host, req, app_id, name).await
        }
        (["functions", _, "env"], _) => Err(method_not_allowed("PATCH")),
        (["functions", name, "invoke"], &Method::POST) => {
            functions::invoke(host, req, app_id, name).await
        }
        (["functions", _, "invoke"], _) => Err(method_not_allowed("POST")),
        (["functions", name, "trigger"], &Method::POST) => {
            functions::trigger(host, app_id, name).await
        }
        (["functions", _, "trigger"], _) => Err(method_not_allowed("POST")),
        (["functions", name, "logs"], &Method::GET) => functions::logs(host, &req, app_id, name),
        (["functions", _, "logs"], _) => Err(method_not_allowed("GET")),
        (["env"], &Method::GET) => app::get_env(host, app_id),
        (["env"], &Method::PATCH) => app::patch_env(host, req, app_id).await,
        (["env"], _) => Err(method_not_allowed("GET, PATCH")),
        (["auth", "jwt-secret"], &Method::POST) => app::rotate_secret(host, app_id),
        (["auth", "jwt-secret"], &Method::PUT) => app::trust_secret(host, req, app_id).await,
        (["auth", "jwt-secret"], _) => Err(method_not_allowed("POST, PUT")),
        (["durable-objects"], &Method::POST) => objects::deploy(host, req, app_id).await,
        (["durable-objects"], &Method::GET) => objects::list(host, app_id),
        (["durable-objects"], _) => Err(method_not_allowed("GET, POST")),
        (["durable-objects", "env"], &Method::GET) => objects::env_keys(host, app_id),
        (["durable-objects", "env"], _) => Err(method_not_allowed("GET")),
        (["durable-objects", "env", key], &Method::PUT) => {
            objects::put_env(host, req, app_id, key).await
        }
        (["durable-objects", "env", key], &Method::DELETE) => {
            objects::delete_env(host, app_id, key)
        }
        (["durable-objects", "env", _], _) => Err(method_not_allowed("PUT, DELETE")),
        (["durable-objects", name], &Method::GET) => objects::get(host, app_id, name),
        (["durable-objects", name], &Method::DELETE) => objects::delete(host, app_id, name),
        (["durable-objects", _], _) => Err(method_not_allowed("GET, DELETE")),
        (["durable-objects", name, "usage"], &Method::GET) => objects::usage(host, app_id, name),
        (["durable-objects", _, "usage"], _) => Err(method_not_allowed("GET")),
        (["auth", "tokens"], &Method::POST) => app::mint_token(host, req, app_id).await,
        (["auth", "tokens"], _) => Err(method_not_allowed("POST")),
        _ => Err(route_not_found(&path)),
    }
}
