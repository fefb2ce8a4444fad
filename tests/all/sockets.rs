//! WebSockets end to end with real clients (tokio-tungstenite): Durable
//! Object sockets with hibernation, and the realtime endpoint.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use crate::support::{temp_dir, Server};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const ROOM: &str = r#"
let constructed = 0;
export class Room {
  state: any;
  constructor(state: any) {
    this.state = state;
    constructed++;
    state.blockConcurrencyWhile(async () => {
      await state.storage.put("constructions", ((await state.storage.get("constructions")) ?? 0) + 1);
    });
  }
  async fetch(req: Request): Promise<Response> {
    const url = new URL(req.url);
    if (req.headers.get("upgrade") === "websocket") {
      const pair = new WebSocketPair();
      const [client, server] = Object.values(pair) as any[];
      if (url.searchParams.get("mode") === "standard") {
        server.accept();
        server.addEventListener("message", (e: MessageEvent) => server.send("echo:" + e.data));
      } else {
        this.state.acceptWebSocket(server, url.searchParams.getAll("tag"));
        server.serializeAttachment({ name: url.searchParams.get("name") });
      }
      return new Response(null, { status: 101, webSocket: client });
    }
    switch (url.pathname) {
      case "/count":
        return Response.json({ all: this.state.getWebSockets().length, tagged: this.state.getWebSockets(url.searchParams.get("tag")).length });
      case "/auto":
        this.state.setWebSocketAutoResponse(new WebSocketRequestResponsePair("ping", "pong"));
        return new Response("ok");
      case "/closes":
        return Response.json((await this.state.storage.get("closes")) ?? []);
      case "/constructions":
        return Response.json(await this.state.storage.get("constructions"));
    }
    return new Response("?", { status: 404 });
  }
  async webSocketMessage(ws: any, message: string | ArrayBuffer) {
    const me = ws.deserializeAttachment();
    if (message === "whoami") {
      ws.send(JSON.stringify({ me, tags: this.state.getTags(ws) }));
      return;
    }
    for (const other of this.state.getWebSockets()) {
      if (other !== ws) other.send(`${me.name}: ${message}`);
    }
  }
  async webSocketClose(ws: any, code: number, reason: string, wasClean: boolean) {
    const closes = (await this.state.storage.get("closes")) ?? [];
    closes.push({ code, reason, wasClean, name: ws.deserializeAttachment()?.name });
    await this.state.storage.put("closes", closes);
  }
}
"#;

async fn deploy_room(s: &Server, access: &str) {
    let res = s
        .api(
            "POST",
            "/v1/shop/durable-objects",
            Some(json!({ "name": "room", "code": ROOM, "access_mode": access })),
        )
        .await;
    assert!(res.status == 200 || res.status == 201, "{}", res.text());
}

fn ws_url(s: &Server, path: &str) -> String {
    format!("{}{path}", s.base.replacen("http://", "ws://", 1))
}

async fn connect(s: &Server, path: &str) -> Ws {
    let (ws, res) = tokio_tungstenite::connect_async(ws_url(s, path))
        .await
        .expect("connect");
    assert_eq!(res.status(), 101);
    ws
}

async fn next_text(ws: &mut Ws) -> String {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a frame within 10 s")
            .expect("open")
            .expect("frame");
        match frame {
            Message::Text(t) => return t.to_string(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

async fn next_close(ws: &mut Ws) -> Option<CloseFrame> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a frame within 10 s")
        {
            Some(Ok(Message::Close(frame))) => return frame,
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("socket failed before closing: {e}"),
            None => return None,
        }
    }
}

#[tokio::test]
async fn a_chat_room_broadcasts_to_fifty_clients_in_order() {
    let dir = temp_dir();
    let s = Server::start(dir.path());
    deploy_room(&s, "public").await;
    let mut clients = Vec::new();
    for i in 0..50 {
        let tag = if i % 2 == 0 { "even" } else { "odd" };
        clients.push(
            connect(
                &s,
                &format!("/v1/shop/_do/room/lobby?name=c{i}&tag={tag}&tag=all"),
            )
            .await,
        );
    }
    let res = s.get("/v1/shop/_do/room/lobby/count?tag=even").await;
    assert_eq!(res.json(), json!({ "all": 50, "tagged": 25 }));

    // Three senders, five messages each.
    for round in 0..5 {
        for client in clients.iter_mut().take(3) {
            client
                .send(Message::text(format!("m{round}")))
                .await
                .expect("send");
        }
    }
    for (i, client) in clients.iter_mut().enumerate() {
        let expected = if i < 3 { 10 } else { 15 };
        let mut got = Vec::new();
        for _ in 0..expected {
            got.push(next_text(client).await);
        }
        for sender in 0..3 {
            if sender == i {
                assert!(
                    !got.iter().any(|m| m.starts_with(&format!("c{sender}:"))),
                    "no echo to the sender"
                );
                continue;
            }
            let from: Vec<&String> = got
                .iter()
                .filter(|m| m.starts_with(&format!("c{sender}: ")))
                .collect();
            let want: Vec<String> = (0..5).map(|r| format!("c{sender}: m{r}")).collect();
            assert_eq!(from, want.iter().collect::<Vec<_>>(), "client {i}");
        }
    }
}

#[tokio::test]
async fn tags_and_attachments_survive_eviction_and_auto_response_does_not_wake() {
    let dir = temp_dir();
    let s = Server::start_with_env(dir.path(), &[("CHURN_OBJECT_IDLE_MS", "150")]);
    deploy_room(&s, "public").await;
    let mut ws = connect(&s, "/v1/shop/_do/room/h?name=alice&tag=red&tag=blue").await;
    assert_eq!(s.get("/v1/shop/_do/room/h/auto").await.text(), "ok");
    ws.send(Message::text("whoami")).await.expect("send");
    assert_eq!(
        serde_json::from_str::<Value>(&next_text(&mut ws).await).expect("json"),
        json!({ "me": { "name": "alice" }, "tags": ["red", "blue"] })
    );
    let before = s.get("/v1/shop/_do/room/h/constructions").await.json();
    assert_eq!(before, json!(1));

    // Idle: the object leaves memory while the socket stays open.
    tokio::time::sleep(Duration::from_millis(700)).await;
    ws.send(Message::text("ping")).await.expect("send");
    assert_eq!(next_text(&mut ws).await, "pong");
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The auto-response did not build the object: this request does.
    assert_eq!(
        s.get("/v1/shop/_do/room/h/constructions").await.json(),
        json!(2)
    );

    tokio::time::sleep(Duration::from_millis(700)).await;
    ws.send(Message::text("whoami")).await.expect("send");
    assert_eq!(
        serde_json::from_str::<Value>(&next_text(&mut ws).await).expect("json"),
        json!({ "me": { "name": "alice" }, "tags": ["red", "blue"] })
    );
    assert_eq!(
        s.get("/v1/shop/_do/room/h/constructions").await.json(),
        json!(3)
    );
    assert_eq!(s.get("/v1/shop/_do/room/h/count").await.json()["all"], 1);
}

#[tokio::test]
async fn close_codes_reach_web_socket_close() {
    let dir = temp_dir();
    let s = Server::start(dir.path());
    deploy_room(&s, "public").await;
    let mut ws = connect(&s, "/v1/shop/_do/room/c?name=bob").await;
    ws.close(Some(CloseFrame {
        code: CloseCode::from(4000),
        reason: "bye".into(),
    }))
    .await
    .expect("close");
    let _ = next_close(&mut ws).await;
    for _ in 0..100 {
        let closes = s.get("/v1/shop/_do/room/c/closes").await.json();
        if closes.as_array().is_some_and(|a| !a.is_empty()) {
            assert_eq!(
                closes,
                json!([{ "code": 4000, "reason": "bye", "wasClean": true, "name": "bob" }])
            );
            assert_eq!(s.get("/v1/shop/_do/room/c/count").await.json()["all"], 0);
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("webSocketClose never ran");
}

#[tokio::test]
async fn the_standard_accept_model_works() {
    let dir = temp_dir();
    let s = Server::start(dir.path());
    deploy_room(&s, "public").await;
    let mut ws = connect(&s, "/v1/shop/_do/room/std?mode=standard").await;
    ws.send(Message::text("hello")).await.expect("send");
    assert_eq!(next_text(&mut ws).await, "echo:hello");
    ws.send(Message::text("again")).await.expect("send");
    assert_eq!(next_text(&mut ws).await, "echo:again");
}

#[tokio::test]
async fn upgrades_check_the_access_mode() {
    let dir = temp_dir();
    let s = Server::start(dir.path());
    deploy_room(&s, "authenticated").await;
    let res = s
        .api("POST", "/v1/shop/auth/tokens", Some(json!({ "sub": "u1" })))
        .await;
    let token = res.json()["access_token"]
        .as_str()
        .expect("token")
        .to_string();
    for bad in [
        String::new(),
        "?token=forged".to_string(),
        format!("?token={}x", &token[..token.len() - 1]),
    ] {
        match tokio_tungstenite::connect_async(ws_url(&s, &format!("/v1/shop/_do/room/a{bad}")))
            .await
        {
            Err(tokio_tungstenite::tungstenite::Error::Http(res)) => assert_eq!(res.status(), 401),
            other => panic!(
                "expected 401 for {bad:?}, got {:?}",
                other.map(|(_, r)| r.status())
            ),
        }
    }
    let mut ws = connect(&s, &format!("/v1/shop/_do/room/a?name=u1&token={token}")).await;
    ws.send(Message::text("whoami")).await.expect("send");
    assert!(next_text(&mut ws).await.contains("u1"));
}

#[tokio::test]
async fn oversize_messages_close_1009_and_redeploys_close_1012() {
    let dir = temp_dir();
    let s = Server::start(dir.path());
    deploy_room(&s, "public").await;
    let mut big = connect(&s, "/v1/shop/_do/room/big?name=x").await;
    let _ = big
        .send(Message::binary(vec![7u8; 32 * 1024 * 1024 + 1]))
        .await;
    let frame = next_close(&mut big).await.expect("close frame");
    assert_eq!(frame.code, CloseCode::Size);

    let mut ws = connect(&s, "/v1/shop/_do/room/r?name=y").await;
    ws.send(Message::text("whoami")).await.expect("send");
    next_text(&mut ws).await;
    deploy_room(&s, "public").await;
    let frame = next_close(&mut ws).await.expect("close frame");
    assert_eq!(u16::from(frame.code), 1012);
}

const ECHO_EVENT: &str = r#"export async function handler(req: Request, ctx: any) {
    const { event, payload } = await req.json();
    if (payload?.fail) throw new Error("cannot do that");
    return Response.json({ event, got: payload, user: ctx.user?.id ?? null, trigger: req.headers.get("x-churn-trigger") });
}"#;

fn event_trigger(event: &str, auth: &str) -> Value {
    json!({ "trigger": { "type": "websocket", "config": { "event": event, "auth": auth } } })
}

async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let v: Value = serde_json::from_str(&next_text(ws).await).expect("json frame");
        if v["type"] != "heartbeat" {
            return v;
        }
    }
}

#[tokio::test]
async fn realtime_events_run_functions_and_bad_frames_get_errors() {
    let dir = temp_dir();
    let s = Server::start_with_env(dir.path(), &[("CHURN_REALTIME_HEARTBEAT_MS", "300")]);
    let res = s
        .deploy(
            "shop",
            "echo",
            ECHO_EVENT,
            event_trigger("chat.send", "none"),
        )
        .await;
    assert_eq!(res.status, 201, "{}", res.text());
    let res = s
        .deploy(
            "shop",
            "dup",
            ECHO_EVENT,
            event_trigger("chat.send", "none"),
        )
        .await;
    assert_eq!(res.status, 400, "one function per event");

    let mut ws = connect(&s, "/v1/shop/realtime").await;
    assert_eq!(
        next_json(&mut ws).await,
        json!({ "type": "connected", "app_id": "shop", "role": "anonymous" })
    );

    ws.send(Message::text(
        json!({ "type": "event", "event": "chat.send", "payload": { "text": "hi" } }).to_string(),
    ))
    .await
    .expect("send");
    assert_eq!(
        next_json(&mut ws).await,
        json!({ "type": "event_response", "event": "chat.send", "data": { "event": "chat.send", "got": { "text": "hi" }, "user": null, "trigger": "websocket" } })
    );

    let bad: Vec<Message> = vec![
        Message::text("not json"),
        Message::text(json!({ "type": "event" }).to_string()),
        Message::text(json!({ "type": "subscribe", "event": "x" }).to_string()),
        Message::text(json!({ "type": "event", "event": 5 }).to_string()),
        Message::text("x".repeat(2 * 1024 * 1024)),
        Message::binary(vec![1, 2, 3]),
        Message::text(json!({ "type": "event", "event": "nobody.listens" }).to_string()),
        Message::text(
            json!({ "type": "event", "event": "chat.send", "payload": { "fail": true } })
                .to_string(),
        ),
    ];
    for frame in bad {
        ws.send(frame).await.expect("send");
        let reply = next_json(&mut ws).await;
        assert_eq!(reply["type"], "error", "{reply}");
        assert!(reply["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    // Still usable, and heartbeats arrive.
    ws.send(Message::text(
        json!({ "type": "event", "event": "chat.send", "payload": 1 }).to_string(),
    ))
    .await
    .expect("send");
    assert_eq!(next_json(&mut ws).await["data"]["got"], 1);
    let heartbeat: Value = loop {
        let v: Value = serde_json::from_str(&next_text(&mut ws).await).expect("json");
        if v["type"] == "heartbeat" {
            break v;
        }
    };
    assert!(heartbeat["timestamp"].as_str().is_some());
}

#[tokio::test]
async fn realtime_needs_a_token_when_events_need_auth() {
    let dir = temp_dir();
    let s = Server::start(dir.path());
    s.deploy(
        "shop",
        "secure",
        ECHO_EVENT,
        event_trigger("orders.place", "required"),
    )
    .await;
    let mut anonymous = connect(&s, "/v1/shop/realtime").await;
    let frame = next_close(&mut anonymous).await.expect("close frame");
    assert_eq!(frame.code, CloseCode::Policy);

    let res = s
        .api(
            "POST",
            "/v1/shop/auth/tokens",
            Some(json!({ "sub": "carol" })),
        )
        .await;
    let token = res.json()["access_token"]
        .as_str()
        .expect("token")
        .to_string();
    let mut ws = connect(&s, &format!("/v1/shop/realtime?token={token}")).await;
    assert_eq!(next_json(&mut ws).await["role"], "authenticated");
    ws.send(Message::text(
        json!({ "type": "event", "event": "orders.place", "payload": {} }).to_string(),
    ))
    .await
    .expect("send");
    assert_eq!(next_json(&mut ws).await["data"]["user"], "carol");
    assert_eq!(s.get("/v1/nosuch/realtime").await.status, 404);
}
