//! The isolate pool against real V8: compile, invoke, read the response.

use std::collections::BTreeMap;
use std::sync::Arc;

use churn_isolates::{
    compile_function, CallerType, CodeKind, FunctionCode, Invocation, InvokeError, IsolatePool,
    Limits, ResponseBody,
};

fn code(src: &str, revision: u64) -> Arc<FunctionCode> {
    let js = compile_function(src).expect("compiles");
    let mut env = BTreeMap::new();
    env.insert("GREETING".to_string(), "hi".to_string());
    Arc::new(FunctionCode {
        app: "app1".into(),
        name: "f".into(),
        revision,
        js: js.into(),
        env,
        limits: Limits::default(),
        kind: CodeKind::Function,
        cpu_micros: Default::default(),
    })
}

fn get(url: &str) -> Invocation {
    Invocation {
        method: "GET".into(),
        url: url.into(),
        headers: vec![("x-test".into(), "1".into())],
        body: Default::default(),
        user_id: Some("u1".into()),
        caller: CallerType::EndUserJwt,
        request_id: "req-1".into(),
        ip: "127.0.0.1".into(),
    }
}

async fn body_of(started: &mut churn_isolates::Started) -> String {
    let mut out = Vec::new();
    let head = started.head.as_mut().expect("head");
    match &mut head.body {
        ResponseBody::Full(bytes) => out.extend_from_slice(bytes),
        ResponseBody::Stream(rx) => {
            while let Some(chunk) = rx.recv().await {
                out.extend_from_slice(&chunk.expect("chunk"));
            }
        }
    }
    String::from_utf8(out).expect("utf8")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_a_handler_with_ctx() {
    let pool = IsolatePool::new();
    let f = code(
        r#"export async function handler(req: Request, ctx: any): Promise<Response> {
            console.log("hello", 42);
            const u = new URL(req.url);
            return Response.json({ path: u.pathname, env: ctx.env.GREETING, user: ctx.user, caller: ctx.caller.type,
              h: req.headers.get("x-test"), typeofDeno: typeof Deno, uuid: crypto.randomUUID().length });
        }"#,
        1,
    );
    let mut started = pool.invoke(&f, None, get("http://h/v1/app1/fn/f/x")).await;
    assert_eq!(started.head.as_ref().map(|h| h.status).ok(), Some(200));
    let body = body_of(&mut started).await;
    assert_eq!(
        body,
        r#"{"path":"/v1/app1/fn/f/x","env":"hi","user":{"id":"u1"},"caller":"end_user_jwt","h":"1","typeofDeno":"undefined","uuid":36}"#
    );
    let done = started.completion.await.expect("completion");
    assert_eq!(done.error, None);
    assert_eq!(done.logs.len(), 1);
    assert_eq!(done.logs[0].message, "hello 42");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throwing_handler_is_a_script_error() {
    let pool = IsolatePool::new();
    let f = code("export function handler() { throw new Error('boom'); }", 1);
    let started = pool.invoke(&f, None, get("http://h/")).await;
    match started.head {
        Err(InvokeError::Script(e)) => assert_eq!(e.message, "boom"),
        Err(other) => panic!("unexpected {other:?}"),
        Ok(_) => panic!("expected an error"),
    }
    let done = started.completion.await.expect("completion");
    assert_eq!(done.error.map(|e| e.message).as_deref(), Some("boom"));
    // The isolate stays usable.
    let f2 = code(
        "export function handler() { return new Response('ok'); }",
        2,
    );
    let mut started = pool.invoke(&f2, None, get("http://h/")).await;
    assert_eq!(body_of(&mut started).await, "ok");
}
