//! App-wide routes: env vars and end-user auth (JWT secret, tokens).

use std::collections::BTreeMap;
use std::sync::Arc;

use churn_dispatcher::mint_user_token;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde::Deserialize;

use crate::apps::App;
use crate::error::ApiError;
use crate::host::SharedHost;
use crate::http::{json, parse_json, read_body, Body};

pub fn app_not_found(app_id: &str) -> ApiError {
    ApiError::not_found("APP_NOT_FOUND", format!("app {app_id:?} does not exist"))
        .fix("apps are created by their first deploy: POST /v1/{app}/functions")
}

pub fn existing(host: &SharedHost, app_id: &str) -> Result<Arc<App>, ApiError> {
    host.apps.get(app_id).ok_or_else(|| app_not_found(app_id))
}

/// Checks an env key's shape and the reserved `CHURN_` prefix.
pub fn check_env_key(key: &str) -> Result<(), ApiError> {
    if !crate::validate::is_env_key(key) {
        return Err(ApiError::invalid(format!(
            "env key {key:?} is invalid: use A-Z, 0-9 and _, not starting with a digit"
        )));
    }
    if key.starts_with("CHURN_") {
        return Err(
            ApiError::invalid(format!("env key {key:?} uses the reserved CHURN_ prefix"))
                .fix("pick another name; CHURN_ is kept for platform variables"),
        );
    }
    Ok(())
}

/// Applies `{KEY: "value" | null}` to `env`, checking keys and values.
pub fn apply_env_patch(
    env: &mut BTreeMap<String, String>,
    patch: BTreeMap<String, Option<String>>,
) -> Result<(), ApiError> {
    for (key, value) in &patch {
        check_env_key(key)?;
        if value.as_ref().is_some_and(|v| v.len() > 8 * 1024) {
            return Err(ApiError::invalid(format!(
                "the value of {key:?} is longer than 8 KiB"
            )));
        }
    }
    for (key, value) in patch {
        match value {
            Some(v) => {
                env.insert(key, v);
            }
            None => {
                env.remove(&key);
            }
        }
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct EnvPatch {
    env_vars: BTreeMap<String, Option<String>>,
}

pub fn get_env(host: &SharedHost, app_id: &str) -> Result<Response<Body>, ApiError> {
    let app = existing(host, app_id)?;
    let keys: Vec<String> = app.record().env.keys().cloned().collect();
    Ok(json(StatusCode::OK, &serde_json::json!({ "keys": keys })))
}

pub async fn patch_env(
    host: &SharedHost,
    req: Request<Incoming>,
    app_id: &str,
) -> Result<Response<Body>, ApiError> {
    let app = existing(host, app_id)?;
    let body = read_body(req.into_body(), host.config.max_body_bytes).await?;
    let patch: EnvPatch = parse_json(&body)?;
    let mut env = app.record().env;
    apply_env_patch(&mut env, patch.env_vars)?;
    let record = app.update_record(|r| r.env = env)?;
    host.apps.republish_all(&app)?;
    let keys: Vec<String> = record.env.keys().cloned().collect();
    Ok(json(StatusCode::OK, &serde_json::json!({ "keys": keys })))
}

pub fn rotate_secret(host: &SharedHost, app_id: &str) -> Result<Response<Body>, ApiError> {
    let app = existing(host, app_id)?;
    let mut raw = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut raw);
    app.update_record(|r| r.jwt_secret = hex::encode(raw))?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "rotated": true, "rotatedAt": crate::apps::now_rfc3339() }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TrustedSecret {
    /// An external identity provider's HS256 secret; null stops trusting it.
    secret: Option<String>,
}

pub async fn trust_secret(
    host: &SharedHost,
    req: Request<Incoming>,
    app_id: &str,
) -> Result<Response<Body>, ApiError> {
    let app = existing(host, app_id)?;
    let body = read_body(req.into_body(), 64 * 1024).await?;
    let trusted: TrustedSecret = parse_json(&body)?;
    if trusted.secret.as_ref().is_some_and(|s| s.len() < 32) {
        return Err(ApiError::invalid(
            "the secret must be at least 32 bytes long",
        ));
    }
    let enabled = trusted.secret.is_some();
    app.update_record(|r| r.trusted_jwt_secret = trusted.secret)?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "trustedProvider": enabled }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct TokenRequest {
    sub: String,
    ttl_seconds: Option<u64>,
}

pub async fn mint_token(
    host: &SharedHost,
    req: Request<Incoming>,
    app_id: &str,
) -> Result<Response<Body>, ApiError> {
    let app = existing(host, app_id)?;
    let body = read_body(req.into_body(), 64 * 1024).await?;
    let request: TokenRequest = parse_json(&body)?;
    if request.sub.is_empty() || request.sub.len() > 256 {
        return Err(ApiError::invalid("sub must be 1 to 256 characters"));
    }
    let ttl = request.ttl_seconds.unwrap_or(3600);
    if ttl == 0 || ttl > 30 * 24 * 3600 {
        return Err(ApiError::invalid(
            "ttlSeconds must be between 1 and 2592000 (30 days)",
        ));
    }
    let now = chrono::Utc::now();
    let iat = now.timestamp().max(0) as u64;
    let exp = iat + ttl;
    let secret = app.record().jwt_secret;
    let token = mint_user_token(secret.as_bytes(), &request.sub, iat, exp)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let expires_at = chrono::DateTime::from_timestamp(exp as i64, 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default();
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "access_token": token, "token_type": "Bearer", "expires_at": expires_at }),
    ))
}
