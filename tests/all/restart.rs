//! What survives a restart of the process.

use serde_json::json;

use crate::support::{temp_dir, Server};

#[tokio::test]
async fn deployments_env_and_secrets_survive_a_restart() {
    let dir = temp_dir();
    let s = Server::start(dir.path());
    s.deploy(
        "shop",
        "keep",
        "export function handler(req: Request, ctx: any) { return Response.json({ env: ctx.env, user: ctx.user?.id ?? null }); }",
        json!({ "envVars": { "FN_VAR": "f" } }),
    )
    .await;
    s.api(
        "PATCH",
        "/v1/shop/env",
        Some(json!({ "envVars": { "APP_VAR": "a" } })),
    )
    .await;
    let res = s
        .api(
            "POST",
            "/v1/shop/auth/tokens",
            Some(json!({ "sub": "u9", "ttlSeconds": 600 })),
        )
        .await;
    let token = res.json()["access_token"]
        .as_str()
        .expect("token")
        .to_string();
    let key = s.key.clone();
    s.stop();

    let s = Server::restart(dir.path(), &key);
    let auth = format!("Bearer {token}");
    let res = s
        .http
        .send(
            "GET",
            &s.url("/v1/shop/fn/keep"),
            &[("authorization", &auth)],
            "",
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(
        res.json(),
        json!({ "env": { "APP_VAR": "a", "FN_VAR": "f" }, "user": "u9" })
    );
    let res = s.api("GET", "/v1/shop/functions/keep", None).await;
    assert_eq!(res.json()["version"], 1);
    s.kill();

    // Even after a SIGKILL, what was acknowledged is there.
    let s = Server::restart(dir.path(), &key);
    let res = s
        .deploy_public(
            "shop",
            "keep",
            "export function handler() { return new Response('v2'); }",
        )
        .await;
    assert_eq!(res.json()["version"], 2);
    s.kill();
    let s = Server::restart(dir.path(), &key);
    assert_eq!(s.get("/v1/shop/fn/keep").await.text(), "v2");
}
