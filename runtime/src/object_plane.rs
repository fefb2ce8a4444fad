//! `/_do/<name>/<id>[/*rest]` (on `<app>.<domain>`) and
//! `/v1/<app>/_do/<name>/<id>[/*rest]`: checks the class's access mode and
//! delivers the request to the instance.

use std::net::SocketAddr;
use std::time::Instant;

use churn_dispatcher::{AccessMode, CallerType, Invocation};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};

use crate::data_plane::identify;
use crate::error::ApiError;
use crate::host::SharedHost;
use crate::http::{authority, bearer, error_response, header_pairs, read_body, Body};
use crate::run::{invoke_error, to_response};

/// Longest instance id, in bytes.
const MAX_INSTANCE_ID: usize = 256;

fn not_found(app: &str, name: &str) -> ApiError {
    ApiError::not_found(
        "DURABLE_OBJECT_NOT_FOUND",
        format!("no Durable Object class {name:?} in app {app:?}"),
    )
    .fix("deploy it with POST /v1/{app}/durable-objects, or check the URL")
}

/// The `token` query parameter (browsers cannot set headers on WebSockets).
pub fn query_token(query: Option<&str>) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == "token").then(|| {
            percent_encoding::percent_decode_str(v)
                .decode_utf8_lossy()
                .into_owned()
        })
    })
}

/// Serves one request for instance `id` of class `name`; `tail` is the path
/// after the id (the instance sees it as its URL path).
pub async fn serve_object(
    host: &SharedHost,
    req: Request<Incoming>,
    remote: SocketAddr,
    app_id: &str,
    name: &str,
    id: &str,
    tail: &str,
) -> Response<Body> {
    match serve(host, req, remote, app_id, name, id, tail).await {
        Ok(res) => res,
        Err(e) => error_response(&e),
    }
}

fn decode_id(raw: &str) -> Result<String, ApiError> {
    let id = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| ApiError::invalid("the instance id is not valid UTF-8"))?
        .into_owned();
    if id.is_empty() || id.len() > MAX_INSTANCE_ID || id.contains('\0') {
        return Err(ApiError::invalid(format!(
            "instance ids are 1 to {MAX_INSTANCE_ID} bytes with no NUL"
        )));
    }
    Ok(id)
}

#[allow(clippy::too_many_arguments)]
async fn serve(
    host: &SharedHost,
    req: Request<Incoming>,
    remote: SocketAddr,
    app_id: &str,
    name: &str,
    raw_id: &str,
    tail: &str,
) -> Result<Response<Body>, ApiError> {
    let app = host
        .apps
        .get(app_id)
        .ok_or_else(|| not_found(app_id, name))?;
    let object = host
        .apps
        .dispatcher
        .object(app_id, name)
        .ok_or_else(|| not_found(app_id, name))?;
    let id = decode_id(raw_id)?;

    let from_query = query_token(req.uri().query());
    let token = bearer(req.headers()).map(str::to_string).or(from_query);
    let (caller, user_id, auth_error) = identify(host, &app, token.as_deref());
    let allowed = match object.access {
        AccessMode::Public => true,
        AccessMode::Authenticated => caller != CallerType::Anonymous,
        AccessMode::ServiceKey => caller == CallerType::ServiceKey,
    };
    if !allowed {
        let why = match (object.access, auth_error) {
            (_, Some(e)) => format!("the token was refused: {e}"),
            (AccessMode::ServiceKey, None) => {
                "this Durable Object accepts service keys only".to_string()
            }
            _ => "this Durable Object requires a signed-in user".to_string(),
        };
        return Err(
            ApiError::new(StatusCode::UNAUTHORIZED, "AUTH_REQUIRED", why)
                .fix("send Authorization: Bearer <token> (or ?token=<token> for WebSockets)"),
        );
    }

    let upgrade = is_websocket_upgrade(&req);
    let mut req = req;
    let on_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    let socket_key = parts
        .headers
        .get("sec-websocket-key")
        .map(|k| k.as_bytes().to_vec());
    let authority = authority(&parts)
        .unwrap_or_else(|| host.public_base.trim_start_matches("http://").to_string());
    let query = parts
        .uri
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let path = if tail.is_empty() { "/" } else { tail };
    let url = format!("http://{authority}{path}{query}");
    let headers = header_pairs(&parts.headers);
    let body = read_body(body, host.config.max_body_bytes).await?;
    let invocation = Invocation {
        method: parts.method.as_str().to_string(),
        url,
        headers,
        body,
        user_id,
        caller,
        request_id: crate::run::request_id(),
        ip: remote.ip().to_string(),
    };
    let started_at = Instant::now();
    let started = host
        .apps
        .dispatcher
        .invoke_object(&object, &id, invocation)
        .await;
    match started.head {
        Ok(head) if head.status == 101 => {
            let socket = head
                .headers
                .iter()
                .find(|(k, _)| k == "x-churn-websocket")
                .and_then(|(_, v)| v.parse::<u64>().ok());
            match (on_upgrade, socket_key, socket) {
                (Some(on_upgrade), Some(key), Some(socket)) => {
                    Ok(accept_socket(host, &object, id, socket, on_upgrade, &key))
                }
                _ => Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "WEBSOCKET_UPGRADE_REQUIRED",
                    "the Durable Object answered 101, but the request was not a WebSocket upgrade",
                )
                .fix("connect with a WebSocket client (GET with Upgrade: websocket)")),
            }
        }
        Ok(head) => Ok(to_response(head)),
        Err(e) => {
            let api = invoke_error(&e, started_at.elapsed().as_millis() as u64);
            Ok(error_response(&api))
        }
    }
}

/// Whether the request asks to become a WebSocket.
pub fn is_websocket_upgrade<B>(req: &Request<B>) -> bool {
    let has = |name: &str, want: &str| {
        req.headers()
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|v| v.trim().eq_ignore_ascii_case(want))
    };
    req.method() == hyper::Method::GET
        && has("upgrade", "websocket")
        && req.headers().contains_key("sec-websocket-key")
}

/// The `101 Switching Protocols` answer for `key`.
pub fn switching_protocols(key: &[u8]) -> Response<Body> {
    use churn_dispatcher::tokio_tungstenite::tungstenite::handshake::derive_accept_key;
    let mut res = Response::new(crate::http::full(bytes::Bytes::new()));
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = res.headers_mut();
    headers.insert(
        hyper::header::UPGRADE,
        hyper::header::HeaderValue::from_static("websocket"),
    );
    headers.insert(
        hyper::header::CONNECTION,
        hyper::header::HeaderValue::from_static("Upgrade"),
    );
    if let Ok(accept) = hyper::header::HeaderValue::from_str(&derive_accept_key(key)) {
        headers.insert("sec-websocket-accept", accept);
    }
    res
}

/// Completes the handshake and hands the connection to the instance.
fn accept_socket(
    host: &SharedHost,
    object: &churn_dispatcher::DeployedObject,
    instance: String,
    socket: u64,
    on_upgrade: hyper::upgrade::OnUpgrade,
    key: &[u8],
) -> Response<Body> {
    let churn_isolates::CodeKind::DurableObject(binding) = &object.code.kind else {
        return error_response(&ApiError::internal("not a Durable Object"));
    };
    let sockets = binding.sockets.clone();
    let code = object.code.clone();
    let pool = host.apps.dispatcher.pool().clone();
    // On this worker's LocalSet: the session may start isolates here.
    tokio::task::spawn_local(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!("WebSocket upgrade failed: {e}");
                sockets.remove(socket);
                return;
            }
        };
        let stream = churn_dispatcher::tokio_tungstenite::WebSocketStream::from_raw_socket(
            hyper_util::rt::TokioIo::new(upgraded),
            churn_dispatcher::tokio_tungstenite::tungstenite::protocol::Role::Server,
            Some(churn_dispatcher::socket_config()),
        )
        .await;
        churn_dispatcher::serve_object_socket(stream, pool, code, sockets, instance, socket).await;
    });
    switching_protocols(key)
}
