//! `ANY /v1/{app}/fn/{name}[/*rest]`: authenticates the caller as the
//! function's HTTP trigger requires and runs it.

use std::net::SocketAddr;
use std::sync::Arc;

use churn_dispatcher::{verify_user_token, AuthError, AuthMode, CallerType, Invocation};
use hyper::body::Incoming;
use hyper::header::CONTENT_LENGTH;
use hyper::{Request, Response, StatusCode};

use crate::apps::App;
use crate::error::ApiError;
use crate::host::SharedHost;
use crate::http::{authority, bearer, error_response, header_pairs, read_body, too_large, Body};
use crate::run::{run_function, RunInfo};

fn not_found(app: &str, name: &str) -> ApiError {
    ApiError::not_found(
        "FUNCTION_NOT_FOUND",
        format!("no function {name:?} is deployed with an HTTP trigger in app {app:?}"),
    )
    .fix("deploy it with POST /v1/{app}/functions, or check the URL")
}

/// Who the caller is, from a bearer token (service key or end-user JWT).
pub fn identify(
    host: &SharedHost,
    app: &App,
    token: Option<&str>,
) -> (CallerType, Option<String>, Option<AuthError>) {
    let Some(token) = token else {
        return (CallerType::Anonymous, None, None);
    };
    if host.keys.verify(token) {
        return (CallerType::ServiceKey, None, None);
    }
    let secrets = app.jwt_secrets();
    let refs: Vec<&[u8]> = secrets.iter().map(Vec::as_slice).collect();
    match verify_user_token(token, &refs) {
        Ok(claims) => (CallerType::EndUserJwt, Some(claims.sub), None),
        Err(e) => (CallerType::Anonymous, None, Some(e)),
    }
}

pub async fn serve_function(
    host: &SharedHost,
    req: Request<Incoming>,
    remote: SocketAddr,
    app_id: &str,
    name: &str,
) -> Response<Body> {
    match serve(host, req, remote, app_id, name).await {
        Ok(res) => res,
        Err(e) => error_response(&e),
    }
}

async fn serve(
    host: &SharedHost,
    req: Request<Incoming>,
    remote: SocketAddr,
    app_id: &str,
    name: &str,
) -> Result<Response<Body>, ApiError> {
    let app: Arc<App> = host
        .apps
        .get(app_id)
        .ok_or_else(|| not_found(app_id, name))?;
    let function = host
        .apps
        .dispatcher
        .get(app_id, name)
        .ok_or_else(|| not_found(app_id, name))?;
    let auth = function.http_auth.ok_or_else(|| not_found(app_id, name))?;

    let (caller, user_id, auth_error) = identify(host, &app, bearer(req.headers()));
    if auth == AuthMode::Required && caller == CallerType::Anonymous {
        let why = match auth_error {
            Some(e) => format!("the bearer token was refused: {e}"),
            None => "this function requires a signed-in user or a service key".to_string(),
        };
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, "AUTH_REQUIRED", why).fix(
            "send Authorization: Bearer <user JWT signed with the app's secret, or a service key>",
        ));
    }

    let limit = host.config.max_body_bytes;
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large(limit));
    }

    let (parts, body) = req.into_parts();
    let authority = authority(&parts);
    let scheme = parts
        .headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .filter(|p| *p == "https" || *p == "http")
        .unwrap_or("http");
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let url = match authority {
        Some(authority) => format!("{scheme}://{authority}{path_and_query}"),
        None => format!("{}{path_and_query}", host.public_base),
    };
    let headers = header_pairs(&parts.headers);
    let body = read_body(body, limit).await?;
    let request_id = crate::run::request_id();
    let method = parts.method.as_str().to_string();
    let invocation = Invocation {
        method: method.clone(),
        url,
        headers,
        body,
        user_id,
        caller,
        request_id: request_id.clone(),
        ip: remote.ip().to_string(),
    };
    let info = RunInfo {
        trigger: "http",
        method,
        path: parts.uri.path().to_string(),
        request_id,
    };
    Ok(run_function(host, &app, function, invocation, info).await)
}
