//! A Durable Object WebSocket session: relays the client's frames to the
//! instance's mailbox (one event at a time, like requests) and the instance's
//! sends to the client. The host answers pings, completes close handshakes,
//! answers the instance's auto-response without waking it, and closes with
//! 1009 a message over the size limit.

use std::sync::Arc;

use churn_isolates::{Event, FunctionCode, IsolatePool, Outgoing, SocketMessage, SocketRegistry};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

/// Largest message a client may send (32 MiB).
pub const MAX_MESSAGE: usize = 32 * 1024 * 1024;

/// The protocol settings for sockets the host serves. The read buffer is
/// small (it grows for large messages) so that idle sockets stay cheap.
pub fn socket_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE))
}

/// Serves one Durable Object socket until either side closes it.
pub async fn serve_object_socket<S>(
    stream: WebSocketStream<S>,
    pool: IsolatePool,
    code: Arc<FunctionCode>,
    sockets: Arc<SocketRegistry>,
    instance: String,
    id: u64,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Some(mut outgoing) = sockets.take_outgoing(id) else {
        return;
    };
    let (mut sink, mut incoming) = stream.split();
    let mut last = None;
    let mut deliver = |event: Event| {
        if matches!(event, Event::SocketClose { .. }) {
            sockets.mark_closed(id);
        }
        last = Some(pool.deliver(&code, instance.clone(), event));
    };
    let mut closing = false;
    let mut told_instance = false;
    loop {
        tokio::select! {
            out = outgoing.recv(), if !closing => {
                let message = match out {
                    Some(Outgoing::Text(t)) => Message::text(t),
                    Some(Outgoing::Binary(b)) => Message::binary(b),
                    Some(Outgoing::Close(code, reason)) => {
                        closing = true;
                        Message::Close(Some(CloseFrame {
                            code: CloseCode::from(code),
                            reason: reason.into(),
                        }))
                    }
                    // The class was retired and its registry dropped.
                    None => {
                        closing = true;
                        Message::Close(Some(CloseFrame {
                            code: CloseCode::Away,
                            reason: "going away".into(),
                        }))
                    }
                };
                if sink.send(message).await.is_err() {
                    break;
                }
            }
            frame = incoming.next() => {
                match frame {
                    Some(Ok(Message::Text(text))) => {
                        let text = text.to_string();
                        match sockets.auto_response(&instance) {
                            Some((request, response)) if request == text => {
                                if sink.send(Message::text(response)).await.is_err() {
                                    break;
                                }
                            }
                            _ => deliver(Event::SocketMessage {
                                socket: id,
                                message: SocketMessage::Text(text),
                            }),
                        }
                    }
                    Some(Ok(Message::Binary(data))) => deliver(Event::SocketMessage {
                        socket: id,
                        message: SocketMessage::Binary(data),
                    }),
                    Some(Ok(Message::Close(frame))) => {
                        let (code, reason) = frame
                            .map(|f| (u16::from(f.code), f.reason.to_string()))
                            .unwrap_or((1005, String::new()));
                        deliver(Event::SocketClose { socket: id, code, reason, was_clean: true });
                        told_instance = true;
                        // tungstenite answers the close; drain until it ends.
                        while let Some(Ok(_)) = incoming.next().await {}
                        break;
                    }
                    Some(Ok(_)) => {} // ping/pong: answered by tungstenite
                    Some(Err(WsError::Capacity(_))) => {
                        let _ = sink
                            .send(Message::Close(Some(CloseFrame {
                                code: CloseCode::Size,
                                reason: "message too big".into(),
                            })))
                            .await;
                        deliver(Event::SocketClose {
                            socket: id,
                            code: 1009,
                            reason: "message too big".into(),
                            was_clean: false,
                        });
                        told_instance = true;
                        break;
                    }
                    Some(Err(e)) => {
                        deliver(Event::SocketError { socket: id, message: e.to_string() });
                        deliver(Event::SocketClose { socket: id, code: 1006, reason: String::new(), was_clean: false });
                        told_instance = true;
                        break;
                    }
                    None => {
                        if !closing {
                            deliver(Event::SocketClose { socket: id, code: 1006, reason: String::new(), was_clean: false });
                            told_instance = true;
                        }
                        break;
                    }
                }
            }
        }
    }
    if closing && !told_instance {
        deliver(Event::SocketClose {
            socket: id,
            code: 1000,
            reason: String::new(),
            was_clean: true,
        });
    }
    // Keep tags and attachment readable until the instance has handled the
    // close.
    if let Some(done) = last {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(30), done).await;
    }
    sockets.remove(id);
}
