//! Request and response bodies: binary safety, streaming, size limits, and
//! work that continues after the response (`waitUntil`).

use std::time::Duration;

use http_body_util::BodyExt;
use serde_json::json;

use crate::support::{temp_dir, Gate, Server};

#[tokio::test]
async fn binary_bodies_round_trip_byte_for_byte() {
    let dir = temp_dir();
    let s = Server::start(dir.path());
    s.deploy_public(
        "shop",
        "bin",
        "export async function handler(req: Request) { const b = new Uint8Array(await req.arrayBuffer()); const out = new Uint8Array(b.length); for (let i = 0; i < b.length; i++) out[i] = b[b.length - 1 - i]; return new Response(out, { headers: { 'content-type': 'application/octet-stream' } }); }",
    )
    .await;
    let input: Vec<u8> = (0..70_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let res = s
        .http
        .send("POST", &s.url("/v1/shop/fn/bin"), &[], input.clone())
        .await;
    assert_eq!(res.status, 200);
    let mut expected = input;
    expected.reverse();
    assert_eq!(res.body.to_vec(), expected);
    assert_eq!(res.headers["content-type"], "application/octet-stream");
}

#[tokio::test]
async fn a_streamed_response_arrives_as_it_is_produced() {
    let dir = temp_dir();
    let s = Server::start(dir.path());
    let gate = Gate::start().await;
    let code = format!(
        r#"export function handler() {{
            const enc = new TextEncoder();
            const body = new ReadableStream({{
                async start(controller) {{
                    controller.enqueue(enc.encode("first;"));
                    // The second piece waits until the test has read the first.
                    await fetch("{}/wait/stream");
                    controller.enqueue(enc.encode("second;"));
                    controller.close();
                }},
            }});
            return new Response(body, {{ headers: {{ "content-type": "text/plain" }} }});
        }}"#,
        gate.base
    );
    s.deploy_public("shop", "stream", &code).await;
    let res = s
        .http
        .request("GET", &s.url("/v1/shop/fn/stream"), &[], "")
        .await;
    assert_eq!(res.status(), 200);
    assert!(res.headers().get("content-length").is_none());
    let mut body = res.into_body();
    let first = body
        .frame()
        .await
        .expect("frame")
        .expect("ok")
        .into_data()
        .expect("data");
    assert_eq!(&first[..], b"first;");
    gate.open("stream");
    let mut rest = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.expect("frame").into_data() {
            rest.extend_from_slice(&data);
        }
    }
    assert_eq!(rest, b"second;");
}

#[tokio::test]
async fn wait_until_work_completes_after_the_response() {
    let dir = temp_dir();
    let s = Server::start(dir.path());
    let gate = Gate::start().await;
    let code = format!(
        r#"export function handler(req: Request, ctx: any) {{
            ctx.waitUntil((async () => {{
                await fetch("{0}/wait/later");
                await fetch("{0}/hit/done");
                console.log("background finished");
            }})());
            return new Response("responded");
        }}"#,
        gate.base
    );
    s.deploy_public("shop", "later", &code).await;
    // The response comes back while the background work is still blocked.
    let res = s.get("/v1/shop/fn/later").await;
    assert_eq!(res.text(), "responded");
    assert_eq!(gate.hits("done"), 0);
    gate.open("later");
    let logs = s.logs("shop", "later", 1).await;
    assert_eq!(gate.hits("done"), 1);
    assert_eq!(logs[0]["logs"][0]["message"], "background finished");
}

#[tokio::test]
async fn bodies_over_the_limit_are_refused_with_413() {
    let dir = temp_dir();
    let s = Server::start_with_env(dir.path(), &[("CHURN_MAX_BODY_BYTES", "1000")]);
    s.deploy_public("shop", "sink", "export async function handler(req: Request) { return new Response(String((await req.arrayBuffer()).byteLength)); }").await;
    let res = s
        .http
        .send("POST", &s.url("/v1/shop/fn/sink"), &[], vec![1u8; 1000])
        .await;
    assert_eq!(res.text(), "1000");
    let res = s
        .http
        .send("POST", &s.url("/v1/shop/fn/sink"), &[], vec![1u8; 1001])
        .await;
    assert_eq!(res.status, 413);
    assert_eq!(res.error_code(), "PAYLOAD_TOO_LARGE");
    // The host is fine afterwards.
    tokio::time::sleep(Duration::from_millis(1)).await;
    let res = s
        .http
        .send("POST", &s.url("/v1/shop/fn/sink"), &[], "x")
        .await;
    assert_eq!(res.json(), json!(1));
}
