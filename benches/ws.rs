//! WebSocket benchmarks against the release binary (run with one command:
//! `. ../shared/v8/env.sh && cargo bench --bench ws`; it needs about 10,100 open files
//! per process: `ulimit -n` must be at least that):
//!
//! - broadcast fan-out: 1,000 clients in one Durable Object room, one sender
//!   bursts messages; deliveries per second and p99 delivery latency;
//! - echo round trip: one client, sequential round trips, p50 and p99;
//! - 10,000 idle connected sockets: the host's resident memory before/after.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

const ROOM: &str = r#"export class Room {
  state: any;
  constructor(state: any) { this.state = state; }
  async fetch(req: Request) {
    const [client, server] = Object.values(new WebSocketPair()) as any[];
    this.state.acceptWebSocket(server);
    return new Response(null, { status: 101, webSocket: client });
  }
  webSocketMessage(ws: any, message: string) {
    if (message.startsWith("echo:")) { ws.send(message); return; }
    for (const other of this.state.getWebSockets()) if (other !== ws) other.send(message);
  }
}"#;

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .unwrap_or(0.0)
        / 1024.0
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(url: &str) -> Ws {
    for _ in 0..50 {
        if let Ok((ws, _)) = tokio_tungstenite::connect_async(url).await {
            return ws;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("cannot connect to {url}");
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let dir = std::env::temp_dir().join(format!("churn-ws-bench-{}", std::process::id()));
    let mut child = Command::new(env!("CARGO_BIN_EXE_churn"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&dir)
        .env("CHURN_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("start churn");
    let pid = child.id();
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let (mut base, mut key) = (String::new(), String::new());
    for line in lines.by_ref() {
        let line = line.expect("line");
        if let Some(k) = line.split("store it now): ").nth(1) {
            key = k.trim().to_string();
        }
        if let Some(u) = line.strip_prefix("listening on ") {
            base = u.trim().to_string();
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    let deploy = serde_json::json!({ "name": "room", "code": ROOM, "access_mode": "public" });
    let status = Command::new("curl")
        .args([
            "-sf",
            "-X",
            "POST",
            &format!("{base}/v1/bench/durable-objects"),
        ])
        .args([
            "-H",
            &format!("authorization: Bearer {key}"),
            "-H",
            "content-type: application/json",
        ])
        .args(["-d", &deploy.to_string(), "-o", "/dev/null"])
        .status()
        .expect("curl");
    assert!(status.success(), "deploy failed");
    let ws_base = base.replacen("http://", "ws://", 1);
    println!(
        "machine: {} cores; churn pid {pid}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );

    // Echo round trips.
    let mut echo = connect(&format!("{ws_base}/v1/bench/_do/room/echo")).await;
    let mut rtts = Vec::new();
    for i in 0..3000 {
        let t = Instant::now();
        echo.send(Message::text(format!("echo:{i}")))
            .await
            .expect("send");
        loop {
            if let Some(Ok(Message::Text(_))) = echo.next().await {
                break;
            }
        }
        if i >= 100 {
            rtts.push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
    rtts.sort_by(f64::total_cmp);
    println!(
        "echo round trip (2,900 sequential): p50 {:.3} ms, p99 {:.3} ms",
        percentile(&rtts, 0.5),
        percentile(&rtts, 0.99)
    );

    // Fan-out: 1,000 receivers, one sender bursting 100 messages.
    const RECEIVERS: usize = 1000;
    const MESSAGES: usize = 100;
    let start = Instant::now();
    let mut receivers = Vec::new();
    for _ in 0..RECEIVERS {
        receivers.push(connect(&format!("{ws_base}/v1/bench/_do/room/fan")).await);
    }
    let mut sender = connect(&format!("{ws_base}/v1/bench/_do/room/fan")).await;
    let mut tasks = Vec::new();
    for mut ws in receivers {
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(MESSAGES);
            let mut last = Duration::ZERO;
            while latencies.len() < MESSAGES {
                match ws.next().await {
                    Some(Ok(Message::Text(t))) => {
                        let sent: u128 = t.as_str().parse().unwrap_or(0);
                        let now = start.elapsed();
                        latencies.push((now.as_nanos().saturating_sub(sent)) as f64 / 1e6);
                        last = now;
                    }
                    Some(Ok(_)) => {}
                    _ => break,
                }
            }
            (latencies, last, ws)
        }));
    }
    let first_send = start.elapsed();
    for _ in 0..MESSAGES {
        sender
            .send(Message::text(start.elapsed().as_nanos().to_string()))
            .await
            .expect("send");
    }
    let mut all = Vec::new();
    let mut last = Duration::ZERO;
    let mut sockets = Vec::new();
    for t in tasks {
        let (lat, l, ws) = t.await.expect("receiver");
        all.extend(lat);
        last = last.max(l);
        sockets.push(ws);
    }
    all.sort_by(f64::total_cmp);
    let secs = (last - first_send).as_secs_f64();
    println!(
        "fan-out ({RECEIVERS} clients, {MESSAGES} messages burst): {} deliveries in {:.2} s = {:.0} deliveries/s; latency p50 {:.1} ms, p99 {:.1} ms",
        all.len(),
        secs,
        all.len() as f64 / secs,
        percentile(&all, 0.5),
        percentile(&all, 0.99)
    );
    drop(sockets);
    drop(sender);
    drop(echo);
    tokio::time::sleep(Duration::from_secs(2)).await;

    // 10,000 idle sockets over 100 instances.
    let before = rss_mib(pid);
    let mut idle = Vec::new();
    for i in 0..10_000 {
        idle.push(connect(&format!("{ws_base}/v1/bench/_do/room/idle{}", i % 100)).await);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_mib(pid);
    println!(
        "10,000 idle sockets: host RSS {before:.1} MiB -> {after:.1} MiB ({:.1} KiB per socket)",
        (after - before) * 1024.0 / 10_000.0
    );
    drop(idle);
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
