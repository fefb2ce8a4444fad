//! Who may call what: service keys, end-user JWTs, the control API's guard.

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;

use crate::support::{temp_dir, Server};

const WHOAMI: &str = "export function handler(req: Request, ctx: any) { return Response.json({ user: ctx.user, caller: ctx.caller.type }); }";
const IDP_SECRET: &str = "an-external-identity-providers-hs256-secret";

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn sign(secret: &str, claims: serde_json::Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign")
}

async fn call(s: &Server, token: Option<&str>) -> crate::support::Resp {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    s.http
        .send("GET", &s.url("/v1/shop/fn/me"), &headers, "")
        .await
}

async fn mint(s: &Server, sub: &str) -> String {
    let res = s
        .api(
            "POST",
            "/v1/shop/auth/tokens",
            Some(json!({ "sub": sub, "ttlSeconds": 600 })),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert!(res.json()["expires_at"].as_str().is_some());
    res.json()["access_token"]
        .as_str()
        .expect("token")
        .to_string()
}

#[tokio::test]
async fn required_auth_accepts_valid_tokens_and_service_keys_only() {
    let dir = temp_dir();
    let s = Server::start(dir.path());
    // Default trigger: http with auth required.
    let res = s.deploy("shop", "me", WHOAMI, json!({})).await;
    assert_eq!(
        res.json()["triggers"],
        json!([{ "type": "http", "config": { "auth": "required" } }])
    );

    let res = call(&s, None).await;
    assert_eq!(res.status, 401);
    assert_eq!(res.error_code(), "AUTH_REQUIRED");

    let token = mint(&s, "user-42").await;
    let res = call(&s, Some(&token)).await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(
        res.json(),
        json!({ "user": { "id": "user-42" }, "caller": "end_user_jwt" })
    );

    let res = call(&s, Some(&s.key.clone())).await;
    assert_eq!(res.json(), json!({ "user": null, "caller": "service_key" }));

    // Forged: right shape, wrong secret.
    let forged = sign(
        "not-the-apps-secret",
        json!({ "sub": "user-42", "exp": now() + 600 }),
    );
    let res = call(&s, Some(&forged)).await;
    assert_eq!(res.status, 401);
    assert_eq!(res.error_code(), "AUTH_REQUIRED");

    // An identity provider's secret can be trusted; then its expiry is checked.
    let res = s
        .api(
            "PUT",
            "/v1/shop/auth/jwt-secret",
            Some(json!({ "secret": IDP_SECRET })),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    let idp = sign(IDP_SECRET, json!({ "sub": "idp-user", "exp": now() + 600 }));
    assert_eq!(call(&s, Some(&idp)).await.json()["user"]["id"], "idp-user");
    let expired = sign(IDP_SECRET, json!({ "sub": "idp-user", "exp": now() - 30 }));
    let res = call(&s, Some(&expired)).await;
    assert_eq!(res.status, 401);
    assert!(res.text().contains("expired"), "{}", res.text());
    let future = sign(
        IDP_SECRET,
        json!({ "sub": "idp-user", "exp": now() + 600, "nbf": now() + 300 }),
    );
    assert_eq!(call(&s, Some(&future)).await.status, 401);
    let no_exp = sign(IDP_SECRET, json!({ "sub": "idp-user" }));
    assert_eq!(call(&s, Some(&no_exp)).await.status, 401);
    // alg: none is never accepted.
    let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJ4IiwiZXhwIjo5OTk5OTk5OTk5fQ.";
    assert_eq!(call(&s, Some(none)).await.status, 401);
}

#[tokio::test]
async fn auth_none_lets_anyone_in_and_still_reads_valid_tokens() {
    let dir = temp_dir();
    let s = Server::start(dir.path());
    s.deploy_public("shop", "me", WHOAMI).await;
    assert_eq!(
        call(&s, None).await.json(),
        json!({ "user": null, "caller": "anonymous" })
    );
    let token = mint(&s, "u1").await;
    assert_eq!(call(&s, Some(&token)).await.json()["user"]["id"], "u1");
    assert_eq!(
        call(&s, Some("garbage")).await.json()["caller"],
        "anonymous"
    );
}

#[tokio::test]
async fn rotating_the_secret_invalidates_old_tokens() {
    let dir = temp_dir();
    let s = Server::start(dir.path());
    s.deploy("shop", "me", WHOAMI, json!({})).await;
    let old = mint(&s, "u1").await;
    assert_eq!(call(&s, Some(&old)).await.status, 200);
    let res = s.api("POST", "/v1/shop/auth/jwt-secret", None).await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(call(&s, Some(&old)).await.status, 401);
    let new = mint(&s, "u1").await;
    assert_eq!(call(&s, Some(&new)).await.status, 200);
}

#[tokio::test]
async fn the_control_api_needs_a_service_key() {
    let dir = temp_dir();
    let s = Server::start(dir.path());
    let res = s
        .http
        .send("GET", &s.url("/v1/shop/functions"), &[], "")
        .await;
    assert_eq!(res.status, 401);
    assert_eq!(res.error_code(), "AUTH_REQUIRED");
    assert!(res.json()["error"]["remediation"].as_str().is_some());
    let res = s
        .http
        .send(
            "POST",
            &s.url("/v1/shop/functions"),
            &[("authorization", "Bearer churn_sk_wrong")],
            "{}",
        )
        .await;
    assert_eq!(res.status, 401);
    // A user token is not a service key.
    s.deploy("shop", "me", WHOAMI, json!({})).await;
    let token = mint(&s, "u").await;
    let auth = format!("Bearer {token}");
    let res = s
        .http
        .send(
            "GET",
            &s.url("/v1/shop/functions"),
            &[("authorization", &auth)],
            "",
        )
        .await;
    assert_eq!(res.status, 401);
}

#[tokio::test]
async fn keys_create_adds_a_key_the_running_server_accepts() {
    let dir = temp_dir();
    let s = Server::start(dir.path());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_churn"))
        .args(["keys", "create", "--data-dir"])
        .arg(dir.path())
        .output()
        .expect("run churn keys create");
    assert!(out.status.success());
    let key = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(key.starts_with("churn_sk_"), "{key}");
    assert_ne!(key, s.key);
    let auth = format!("Bearer {key}");
    s.deploy_public("shop", "me", WHOAMI).await;
    let res = s
        .http
        .send(
            "GET",
            &s.url("/v1/shop/functions"),
            &[("authorization", &auth)],
            "",
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    let stored =
        std::fs::read_to_string(dir.path().join("host/service-keys.json")).expect("keys file");
    assert!(
        !stored.contains(&key) && !stored.contains(&s.key),
        "keys are stored hashed"
    );
}
