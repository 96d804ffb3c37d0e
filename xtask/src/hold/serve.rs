//! The holding endpoint itself: the accept loop (a bind that waits for Sentry 4 to let go, or
//! the passed socket), one task per connection, each request judged (`store`), spooled and
//! synced (`spool`), then answered; and the stop on SIGTERM that serves what is queued first.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    fs,
    io::Write,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{body::Incoming, server::conn::http1, service::service_fn, Response};
use hyper_util::rt::{TokioIo, TokioTimer};

use super::{
    now_utc, spool, state_path, store, uuid4_hex, Options, State, BODY_TIMEOUT, HEADER_TIMEOUT,
    HOLDER_HEADER,
};
use store::{Keys, Limits, Request, Verdict};

/// Connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 256;
/// Free space the spool always leaves on its file system.
const KEEP_FREE: u64 = 64 << 20;

/// What the holder did, for its progress and summary.
#[derive(Debug, Default)]
pub(super) struct Stats {
    held: u64,
    /// status → count
    answered: BTreeMap<u16, u64>,
    spool_full_said: bool,
}

pub(super) struct Shared {
    pub(super) keys: Keys,
    pub(super) limits: Limits,
    pub(super) max_body: u64,
    pub(super) max_spool: u64,
    pub(super) dumps: PathBuf,
    pub(super) spool: Mutex<spool::Writer>,
    pub(super) stats: Mutex<Stats>,
    pub(super) log: Mutex<fs::File>,
    pub(super) in_flight: AtomicUsize,
}

impl Shared {
    fn log(&self, line: &str) {
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(log, "{} {line}", now_utc().0);
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As gunicorn binds: a port some connections of Sentry 4 left in TIME_WAIT is free.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn serve(
    shared: Arc<Shared>,
    addr: SocketAddr,
    inherited: Option<std::net::TcpListener>,
    address: &str,
    from: &str,
    already: usize,
    options: &Options,
) -> Result<()> {
    let started = Instant::now();
    let mut said_waiting = false;
    let socket_passed = inherited.is_some();
    let listener = loop {
        if let Some(listener) = inherited {
            break tokio::net::TcpListener::from_std(listener)?;
        }
        match bind(addr) {
            Ok(listener) => break listener,
            Err(err) if err.kind() == std::io::ErrorKind::AddrInUse => {
                if started.elapsed() > options.wait {
                    bail!(
                        "{address} is still in use after {} s: stop Sentry 4 (or whatever \
                         listens there: `ss -ltnp 'sport = :{}'`), then run hold-events again",
                        options.wait.as_secs(),
                        addr.port()
                    );
                }
                if !said_waiting {
                    println!(
                        "hold-events: {address} is in use (Sentry 4 still runs?): taking it the \
                         moment it is free (waiting up to {} s; stop Sentry 4 now)",
                        options.wait.as_secs()
                    );
                    said_waiting = true;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Err(err) => {
                return Err(err).with_context(|| {
                    format!("cannot listen on {address}: give another --listen HOST:PORT")
                })
            }
        }
    };
    let bound_after = started.elapsed();
    // Before anyone can learn the pid from the state file: `--release`'s SIGTERM must find the
    // handler in place.
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let state = State {
        pid: std::process::id(),
        address: address.to_string(),
        started: now_utc().0,
        released: None,
        gap_ms: None,
        socket_passed,
    };
    let state_file = state_path(&shared.dumps);
    crate::util::write_atomic(&state_file, &serde_json::to_vec_pretty(&state)?, 0o600)?;
    println!(
        "hold-events: holding Sentry's store requests on {address} ({from}){}; spool {} ({} \
         held before); answers as Sentry 6 would. Hand the address to Sentry 6 with `cargo \
         xtask hold-events --release` right after starting it; then `cargo xtask replay-events`.",
        if said_waiting {
            format!(", taken {} ms after waiting began", bound_after.as_millis())
        } else {
            String::new()
        },
        shared.dumps.join("held-events.jsonl").display(),
        already
    );
    shared.log(&format!("listening on {address} pid {}", state.pid));
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut progress = tokio::time::interval(Duration::from_secs(10));
    let mut last_progress = (0, 0);
    loop {
        let permit = tokio::select! {
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            _ = progress.tick() => {
                let now = counts(&shared);
                if now != last_progress {
                    println!("hold-events: {} held, {} answered without holding", now.0, now.1);
                    last_progress = now;
                }
                continue;
            }
            permit = permits.clone().acquire_owned() => permit.expect("never closed"),
        };
        let (stream, remote) = tokio::select! {
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    shared.log(&format!("accept failed: {err}"));
                    continue;
                }
            },
        };
        spawn_connection(&shared, stream, remote, Some(permit));
    }
    // Connections the kernel already queued for this listener are served, not reset by its
    // close (a shared socket's queue stays for Sentry 6).
    if !socket_passed {
        while let Ok(Ok((stream, remote))) =
            tokio::time::timeout(Duration::ZERO, listener.accept()).await
        {
            spawn_connection(&shared, stream, remote, None);
        }
    }
    // The address first: Sentry 6 may be waiting for it.
    drop(listener);
    let released = now_utc().0;
    shared.log("released the address");
    let mut state = state;
    state.released = Some(released);
    if let Err(err) = serde_json::to_vec_pretty(&state)
        .map_err(anyhow::Error::from)
        .and_then(|json| crate::util::write_atomic(&state_file, &json, 0o600))
    {
        // The requests being received still finish; --release then times out and says so.
        shared.log(&format!(
            "cannot record the release in {}: {err:#}",
            state_file.display()
        ));
    }
    // Requests being received finish (each is bounded by the timeouts).
    let deadline = Instant::now() + HEADER_TIMEOUT + BODY_TIMEOUT;
    while shared.in_flight.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let stats = shared.stats.lock().unwrap_or_else(|e| e.into_inner());
    let total = shared
        .spool
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .next_seq()
        - 1;
    let answered: Vec<String> = stats
        .answered
        .iter()
        .map(|(status, n)| format!("{status} ×{n}"))
        .collect();
    println!(
        "hold-events: released {address}. This run held {} requests ({} in the spool); \
         answered without holding: {}. Next: `cargo xtask replay-events` once Sentry 6 runs.",
        stats.held,
        total,
        if answered.is_empty() {
            "none".to_string()
        } else {
            answered.join(", ")
        }
    );
    Ok(())
}

/// Serves one connection (one request) in a task of its own.
fn spawn_connection(
    shared: &Arc<Shared>,
    stream: tokio::net::TcpStream,
    remote: SocketAddr,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
) {
    let shared = shared.clone();
    shared.in_flight.fetch_add(1, Ordering::SeqCst);
    tokio::spawn(async move {
        let service = service_fn(|request| handle(shared.clone(), remote, request));
        let _ = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .keep_alive(false)
            .serve_connection(TokioIo::new(stream), service)
            .await;
        shared.in_flight.fetch_sub(1, Ordering::SeqCst);
        drop(permit);
    });
}

fn counts(shared: &Shared) -> (u64, u64) {
    let stats = shared.stats.lock().unwrap_or_else(|e| e.into_inner());
    (stats.held, stats.answered.values().sum())
}

type Body = Full<Bytes>;

fn respond(answer: store::Answer) -> Response<Body> {
    let mut response = Response::builder()
        .status(answer.status)
        .header("content-type", answer.content_type)
        // Tells an answer of the holder from Sentry's, on a socket they share.
        .header(HOLDER_HEADER, "hold-events");
    for (name, value) in answer.headers {
        response = response.header(name, value);
    }
    response
        .body(Full::new(Bytes::from(answer.body)))
        .unwrap_or_else(|_| {
            let mut response = Response::new(Full::new(Bytes::new()));
            *response.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
            response
        })
}

async fn handle(
    shared: Arc<Shared>,
    remote: SocketAddr,
    request: hyper::Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let (received, received_naive) = now_utc();
    let method = request.method().as_str().to_string();
    let path = request.uri().path().to_string();
    let query = request.uri().query().unwrap_or("").to_string();
    let headers: Vec<(String, String)> = store::KEPT_HEADERS
        .iter()
        .filter_map(|name| {
            let value = request.headers().get(*name)?.to_str().ok()?;
            Some((name.to_string(), value.to_string()))
        })
        .collect();
    let answer_only = |shared: &Shared, answer: store::Answer, why: &str| {
        let mut stats = shared.stats.lock().unwrap_or_else(|e| e.into_inner());
        *stats.answered.entry(answer.status).or_default() += 1;
        drop(stats);
        shared.log(&format!("{remote} {method} {path} {} {why}", answer.status));
        Ok(respond(answer))
    };
    let text = |status: u16, message: &str| store::Answer {
        status,
        content_type: "text/plain",
        body: message.as_bytes().to_vec(),
        headers: vec![("x-sentry-error", message.to_string())],
    };
    // Nothing but the store endpoints, before any body is read.
    if store::store_path(&path).is_none() {
        let verdict = store::judge(
            &shared.keys,
            &Request {
                path: path.clone(),
                method: method.clone(),
                ..Request::default()
            },
            shared.limits,
            &received_naive,
            uuid4_hex,
        );
        if let Verdict::Answer(answer) = verdict {
            return answer_only(&shared, answer, "not a store endpoint");
        }
    }
    let declared = request
        .headers()
        .get("content-length")
        .and_then(|it| it.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|len| len > shared.max_body) {
        let message = format!("Request too large: over {} bytes", shared.max_body);
        return answer_only(&shared, text(413, &message), "too large (Content-Length)");
    }
    let limited = Limited::new(
        request.into_body(),
        usize::try_from(shared.max_body).unwrap_or(usize::MAX),
    );
    let body = match tokio::time::timeout(BODY_TIMEOUT, limited.collect()).await {
        Ok(Ok(body)) => body.to_bytes().to_vec(),
        Ok(Err(err)) if err.is::<http_body_util::LengthLimitError>() => {
            let message = format!("Request too large: over {} bytes", shared.max_body);
            return answer_only(&shared, text(413, &message), "too large");
        }
        Ok(Err(_)) => {
            return answer_only(&shared, text(400, "Bad request body"), "body broken off")
        }
        Err(_) => {
            return answer_only(
                &shared,
                text(408, "Request timeout: the body took too long"),
                "slow body",
            )
        }
    };
    let request = Request {
        method: method.clone(),
        path: path.clone(),
        query: query.clone(),
        headers: headers.clone(),
        remote_addr: remote.to_string(),
        body,
    };
    let event = match store::judge(
        &shared.keys,
        &request,
        shared.limits,
        &received_naive,
        uuid4_hex,
    ) {
        Verdict::Answer(answer) => {
            let why = String::from_utf8_lossy(&answer.body)
                .chars()
                .take(120)
                .collect::<String>();
            return answer_only(&shared, answer, &why);
        }
        Verdict::Hold(event) => event,
    };
    let held = spool::Held {
        seq: 0,
        received,
        remote_addr: request.remote_addr.clone(),
        method: method.clone(),
        path: path.clone(),
        query,
        headers,
        body: spool::encode(&request.body),
        event_id: event.event_id.clone(),
        project: event.project,
        added: event.added.iter().map(|it| it.to_string()).collect(),
        replay_json: event.replay_json.as_deref().map(spool::encode),
    };
    let appended = {
        let shared = shared.clone();
        tokio::task::spawn_blocking(move || append(&shared, held)).await
    };
    match appended {
        Ok(Ok(seq)) => {
            shared.stats.lock().unwrap_or_else(|e| e.into_inner()).held += 1;
            shared.log(&format!(
                "{remote} {} {path} 200 held #{seq} event {} project {}",
                request.method, event.event_id, event.project
            ));
            Ok(respond(event.answer))
        }
        Ok(Err(err)) => {
            let cause = format!("{err:#}");
            {
                let mut stats = shared.stats.lock().unwrap_or_else(|e| e.into_inner());
                if !stats.spool_full_said {
                    eprintln!(
                        "hold-events: cannot hold events: {cause}: clients get 503 until this is fixed"
                    );
                    stats.spool_full_said = true;
                }
            }
            // The client learns that it was not held, not where or why (paths, free space).
            let public = if cause.contains("the spool is full") {
                "sentry-migrate hold-events cannot hold this event: the spool is full"
            } else {
                "sentry-migrate hold-events cannot hold this event now"
            };
            answer_only(&shared, text(503, public), &cause)
        }
        Err(join) => answer_only(
            &shared,
            text(503, "sentry-migrate hold-events failed to write the spool"),
            &format!("spool write panicked: {join}"),
        ),
    }
}

/// Appends under the spool's lock, within the spool's limits; the client is answered after.
fn append(shared: &Shared, held: spool::Held) -> Result<u64> {
    let mut writer = shared.spool.lock().unwrap_or_else(|e| e.into_inner());
    let size =
        held.body.len() as u64 + held.replay_json.as_ref().map_or(0, |it| it.len() as u64) + 1024;
    if writer.len() + size > shared.max_spool {
        bail!(
            "the spool is full ({} of --max-spool {}): replay it, or start hold-events with a \
             larger --max-spool",
            crate::util::human_bytes(writer.len()),
            crate::util::human_bytes(shared.max_spool)
        );
    }
    let free = crate::util::free_bytes(&shared.dumps)?;
    if free < KEEP_FREE + size {
        bail!(
            "the disk holding {} has {} free; hold-events keeps {} free",
            shared.dumps.display(),
            crate::util::human_bytes(free),
            crate::util::human_bytes(KEEP_FREE)
        );
    }
    writer.append(held)
}
