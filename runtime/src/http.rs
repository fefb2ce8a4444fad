//! HTTP helpers shared by the control API and the data plane.

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// Every response body the host sends.
pub type Body = BoxBody<Bytes, std::io::Error>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let bytes = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    let mut res = Response::new(full(bytes));
    *res.status_mut() = status;
    res.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res
}

pub fn error_response(e: &ApiError) -> Response<Body> {
    let mut res = json(e.status, &e.body());
    if e.status == StatusCode::TOO_MANY_REQUESTS {
        res.headers_mut()
            .insert("retry-after", HeaderValue::from_static("1"));
    }
    res
}

/// Reads a whole request body, refusing more than `limit` bytes with 413.
pub async fn read_body(body: Incoming, limit: usize) -> Result<Bytes, ApiError> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large(limit)),
        Err(e) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "BAD_REQUEST",
            format!("could not read the request body: {e}"),
        )),
    }
}

pub fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "PAYLOAD_TOO_LARGE",
        format!("the request body is larger than {limit} bytes"),
    )
    .fix("send a smaller body, or raise max_body_bytes in the host config")
}

/// Parses a JSON body into `T`, with serde's precise message on failure.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(
            ApiError::invalid("the request body is empty; send a JSON object")
                .fix("send Content-Type: application/json with a JSON object body"),
        );
    }
    serde_json::from_slice(bytes).map_err(|e| {
        ApiError::invalid(format!("invalid request body: {e}"))
            .fix("check the field names and types against the API reference in the README")
    })
}

/// The token of an `Authorization: Bearer <token>` header.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The request's authority: the URI's (HTTP/2) or the Host header.
pub fn authority(parts: &hyper::http::request::Parts) -> Option<String> {
    parts.uri.authority().map(|a| a.to_string()).or_else(|| {
        parts
            .headers
            .get(hyper::header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_string)
    })
}

/// Headers as `(name, value)` strings for a script.
pub fn header_pairs(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}
