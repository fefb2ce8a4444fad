//! Deploying Durable Object classes: every validation rule's code, and every
//! access mode checked with real credentials.

use serde_json::json;

use crate::support::{temp_dir, Server};

#[tokio::test]
async fn every_validation_rule_has_its_code() {
    let dir = temp_dir();
    let s = Server::start(dir.path());
    let class = "export class Room { async fetch() { return new Response('x'); } }";
    let cases = [
        (json!({ "name": "Bad_Name", "code": class }), "INVALID_NAME"),
        (
            json!({ "name": "room", "code": "class Room {}" }),
            "NO_EXPORTED_CLASS",
        ),
        (
            json!({ "name": "room", "code": "export class A {} export class B {}" }),
            "MULTIPLE_EXPORTED_CLASSES",
        ),
        (
            json!({ "name": "room", "code": "export class A {} export function f() {}" }),
            "MULTIPLE_EXPORTED_CLASSES",
        ),
        (
            json!({ "name": "room", "code": "export default class Room {}" }),
            "EXPORT_DEFAULT_NOT_SUPPORTED",
        ),
        (
            json!({ "name": "room", "code": "import x from 'node:fs';\nexport class Room {}" }),
            "DISALLOWED_IMPORT",
        ),
        (
            json!({ "name": "room", "code": class, "access_mode": "everyone" }),
            "INVALID_ACCESS_MODE",
        ),
        (
            json!({ "name": "room", "code": format!("{class}\n//{}", "x".repeat(5 * 1024 * 1024)) }),
            "SOURCE_TOO_LARGE",
        ),
    ];
    for (body, code) in cases {
        let res = s.api("POST", "/v1/shop/durable-objects", Some(body)).await;
        assert_eq!(res.status, 400, "{code}: {}", res.text());
        assert_eq!(res.error_code(), code);
    }
    for i in 0..5 {
        let res = s
            .api(
                "POST",
                "/v1/shop/durable-objects",
                Some(json!({ "name": format!("room{i}"), "code": class })),
            )
            .await;
        assert_eq!(res.status, 201, "{}", res.text());
    }
    let res = s
        .api(
            "POST",
            "/v1/shop/durable-objects",
            Some(json!({ "name": "room5", "code": class })),
        )
        .await;
    assert_eq!(res.error_code(), "TOO_MANY_CLASSES");
    // Redeploying an existing class is not a sixth class.
    let res = s
        .api(
            "POST",
            "/v1/shop/durable-objects",
            Some(json!({ "name": "room4", "code": class })),
        )
        .await;
    assert_eq!(res.status, 200);

    // Four classes of 3 MiB fit the per-class limit but not the bundle.
    let dir2 = temp_dir();
    let s2 = Server::start(dir2.path());
    let big = format!("{class}\n//{}", "x".repeat(3 * 1024 * 1024));
    for i in 0..3 {
        let res = s2
            .api(
                "POST",
                "/v1/shop/durable-objects",
                Some(json!({ "name": format!("big{i}"), "code": big })),
            )
            .await;
        assert_eq!(res.status, 201, "{}", res.text());
    }
    let res = s2
        .api(
            "POST",
            "/v1/shop/durable-objects",
            Some(json!({ "name": "big3", "code": big })),
        )
        .await;
    assert_eq!(res.error_code(), "BUNDLE_TOO_LARGE");
}

#[tokio::test]
async fn access_modes_check_real_credentials() {
    let dir = temp_dir();
    let s = Server::start(dir.path());
    let class = "export class Who { async fetch(req: Request) { return new Response('in'); } }";
    for (name, mode) in [
        ("pub", "public"),
        ("auth", "authenticated"),
        ("keyed", "service_key"),
    ] {
        let res = s
            .api(
                "POST",
                "/v1/shop/durable-objects",
                Some(json!({ "name": name, "code": class, "access_mode": mode })),
            )
            .await;
        assert_eq!(res.status, 201, "{}", res.text());
    }
    let res = s
        .api("POST", "/v1/shop/auth/tokens", Some(json!({ "sub": "u1" })))
        .await;
    let token = res.json()["access_token"]
        .as_str()
        .expect("token")
        .to_string();
    let forged = format!("{}x", &token[..token.len() - 1]);
    let status = |name: &'static str, header: Option<String>, query: Option<String>| {
        let s = &s;
        async move {
            let mut path = format!("/v1/shop/_do/{name}/i1");
            if let Some(q) = query {
                path.push_str(&format!("?token={q}"));
            }
            let headers: Vec<(&str, String)> = header
                .iter()
                .map(|h| ("authorization", format!("Bearer {h}")))
                .collect();
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            s.http.send("GET", &s.url(&path), &headers, "").await.status
        }
    };
    assert_eq!(status("pub", None, None).await, 200);
    assert_eq!(status("auth", None, None).await, 401);
    assert_eq!(status("auth", Some(forged.clone()), None).await, 401);
    assert_eq!(status("auth", Some(token.clone()), None).await, 200);
    assert_eq!(status("auth", None, Some(token.clone())).await, 200);
    assert_eq!(status("keyed", None, None).await, 401);
    assert_eq!(status("keyed", Some(token.clone()), None).await, 401);
    assert_eq!(
        status("keyed", Some("churn_sk_forged".into()), None).await,
        401
    );
    assert_eq!(status("keyed", Some(s.key.clone()), None).await, 200);
}
