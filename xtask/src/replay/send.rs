//! One held request sent to Sentry 6 over HTTP/1.1 (hyper), on a connection of its own, as the
//! client sent it: method, path, query, the headers Sentry reads and the body, byte for byte;
//! or, when `hold-events` had to add to the event (`spool::Held::replay_json`), that JSON as a
//! POST with the client's auth.

use std::{net::SocketAddr, time::Duration};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;

use crate::hold::spool::Held;

/// How long Sentry 6 may take to answer one event (it stores it before answering).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);
/// How much of an answer is kept.
const ANSWER_BYTES: usize = 64 << 10;

pub struct Target {
    address: String,
    addr: SocketAddr,
    runtime: tokio::runtime::Runtime,
}

/// What became of one send.
#[derive(Debug)]
pub enum Sent {
    /// Sentry (or a proxy in front of it) answered.
    Answer { status: u16, answer: String },
    /// Nothing listens, or the connection failed before the request went out: not sent.
    Down(String),
    /// The request went out and no answer came: it may have been stored.
    Unanswered(String),
}

impl Sent {
    pub fn describe(&self) -> String {
        match self {
            Sent::Answer { status, answer } => format!("{status} {answer}"),
            Sent::Down(why) | Sent::Unanswered(why) => why.clone(),
        }
    }
}

impl Target {
    pub fn new(address: &str) -> Result<Target> {
        let addr = std::net::ToSocketAddrs::to_socket_addrs(address)
            .with_context(|| format!("cannot resolve {address}: give --to HOST:PORT"))?
            .next()
            .with_context(|| format!("{address} resolves to no address"))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        Ok(Target {
            address: address.to_string(),
            addr,
            runtime,
        })
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    pub fn send(&self, held: &Held) -> Result<Sent> {
        let request = build(held, &self.address)?;
        Ok(self.runtime.block_on(send(self.addr, request)))
    }
}

/// The request to send for `held`.
fn build(held: &Held, host: &str) -> Result<hyper::Request<Full<Bytes>>> {
    let replay_json = held.replay_json_bytes()?;
    let (method, query, body, skip): (&str, String, Vec<u8>, &[&str]) = match replay_json {
        None => (
            held.method.as_str(),
            held.query.clone(),
            held.body_bytes()?,
            &[],
        ),
        Some(json) => {
            // The auth stays in the query when it came there; the event goes in the body.
            let query = form_urlencoded::Serializer::new(String::new())
                .extend_pairs(
                    form_urlencoded::parse(held.query.as_bytes())
                        .filter(|(k, _)| k != "sentry_data"),
                )
                .finish();
            (
                "POST",
                query,
                json,
                &["content-type", "content-encoding"][..],
            )
        }
    };
    let uri = if query.is_empty() {
        held.path.clone()
    } else {
        format!("{}?{query}", held.path)
    };
    let mut request = hyper::Request::builder()
        .method(method)
        .uri(uri)
        .header("host", host);
    for (name, value) in &held.headers {
        if !skip.contains(&name.as_str()) {
            request = request.header(name, value);
        }
    }
    if !skip.is_empty() {
        request = request.header("content-type", "application/json");
    }
    request
        .header("content-length", body.len())
        .body(Full::new(Bytes::from(body)))
        .with_context(|| format!("held request #{} does not make an HTTP request", held.seq))
}

async fn send(addr: SocketAddr, request: hyper::Request<Full<Bytes>>) -> Sent {
    let stream =
        match tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
            .await
        {
            Ok(Ok(stream)) => stream,
            Ok(Err(err)) => return Sent::Down(format!("cannot connect: {err}")),
            Err(_) => return Sent::Down("connecting timed out".into()),
        };
    let (mut sender, connection) =
        match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await {
            Ok(it) => it,
            Err(err) => return Sent::Down(format!("HTTP handshake failed: {err}")),
        };
    let connection = tokio::spawn(connection);
    let answered = tokio::time::timeout(ANSWER_TIMEOUT, async {
        let response = sender.send_request(request).await?;
        let status = response.status().as_u16();
        let error = response
            .headers()
            .get("x-sentry-error")
            .and_then(|it| it.to_str().ok())
            .map(str::to_string);
        let body = Limited::new(response.into_body(), ANSWER_BYTES)
            .collect()
            .await
            .map(|body| body.to_bytes())
            .unwrap_or_default();
        let answer =
            error.unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(300).collect());
        Ok::<_, hyper::Error>((status, answer))
    })
    .await;
    connection.abort();
    match answered {
        Ok(Ok((status, answer))) => Sent::Answer { status, answer },
        Ok(Err(err)) if err.is_canceled() => Sent::Down(format!("not sent: {err}")),
        Ok(Err(err)) => Sent::Unanswered(format!("no answer: {err}")),
        Err(_) => Sent::Unanswered(format!("no answer within {} s", ANSWER_TIMEOUT.as_secs())),
    }
}
