//! `hold-events` as a user runs it: the real binary on a loopback port, real HTTP requests,
//! the real spool; killed, stalled, filled, and handed over on a shared socket. The real
//! clients and the real Sentry 6 are the rehearsal's (`rehearse --hold-events`).

mod common;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    process::Stdio,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::{hold::*, *};

#[test]
fn requests_are_answered_as_sentry_6_answers_and_only_held_ones_are_on_disk() {
    if skip() {
        return;
    }
    let repo = Repo::new("hold_answers");
    with_keys(&repo);
    let holder = Holder::start(&repo, &["--max-body", "4K"]);
    let port = holder.port;
    let (status, answer) = store(port, &event("e1"));
    assert_eq!(status, 200, "{answer}");
    assert!(answer.ends_with(r#"{"id":"e1"}"#), "{answer}");
    // The project in the path, by slug; no event id: one is made and added for the replay.
    let (status, answer) = http(
        port,
        "POST",
        "/api/web/store/",
        &[("X-Sentry-Auth", V2_AUTH)],
        br#"{"message": "no id"}"#,
    );
    assert_eq!(status, 200, "{answer}");
    let wrong_key = V2_AUTH.replace("pub3", "nope");
    for (path, headers, body, want) in [
        (
            "/api/store/",
            vec![("X-Sentry-Auth", wrong_key.as_str())],
            event("x1").into_bytes(),
            403,
        ),
        (
            "/api/store/",
            vec![("X-Sentry-Auth", V2_AUTH)],
            b"\x00\x01garbage".to_vec(),
            403,
        ),
        ("/api/store/", vec![], event("x2").into_bytes(), 400),
        (
            "/api/1/store/",
            vec![("X-Sentry-Auth", V2_AUTH)],
            event("x3").into_bytes(),
            400,
        ),
        (
            "/api/store/",
            vec![("X-Sentry-Auth", V2_AUTH)],
            vec![b'{'; 5000],
            413,
        ),
        (
            "/admin/",
            vec![("X-Sentry-Auth", V2_AUTH)],
            event("x4").into_bytes(),
            404,
        ),
        ("/api/store/../../etc/passwd", vec![], vec![], 404),
    ] {
        let (status, answer) = http(port, "POST", path, &headers, &body);
        assert_eq!(status, want, "{path}: {answer}");
    }
    let held = spooled(&repo);
    assert_eq!(held.len(), 2);
    assert_eq!(
        (held[0].seq, held[0].event_id.as_str(), held[0].project),
        (1, "e1", 3)
    );
    assert_eq!(held[1].added, ["event_id", "timestamp"]);
    assert_eq!(held[1].event_id.len(), 32);
    let dumps = repo.root.join("dumps");
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dumps.join("held-events.jsonl")), 0o600);
    assert_eq!(mode(&dumps), 0o700);
    // The log names requests, never keys or bodies.
    let log = fs::read_to_string(dumps.join("logs/hold-events.log")).unwrap();
    assert!(log.contains("held #1 event e1 project 3"), "{log}");
    assert!(!log.contains("pub3") && !log.contains("m e1"), "{log}");

    // The hand-over: a stand-in for Sentry 6 retries its bind as gunicorn does (faster).
    let taker = std::thread::spawn(move || loop {
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) {
            return listener;
        }
        std::thread::sleep(Duration::from_millis(20));
    });
    let out = repo.xtask(&["hold-events", "--release"], None);
    assert!(out.ok, "{out:?}");
    assert!(
        out.stdout.contains("refused connections for"),
        "{}",
        out.stdout
    );
    let _sentry6 = taker.join().unwrap();
    let (ok, printed) = holder.finish();
    assert!(ok, "{printed}");
    assert!(printed.contains("This run held 2 requests"), "{printed}");
    let state: serde_json::Value =
        serde_json::from_slice(&fs::read(dumps.join("hold-events.json")).unwrap()).unwrap();
    assert!(state["gap_ms"].as_u64().unwrap() < 1000, "{state}");
}

#[test]
fn a_slow_client_holds_nobody_up() {
    if skip() {
        return;
    }
    let repo = Repo::new("hold_slow");
    with_keys(&repo);
    let holder = Holder::start(&repo, &[]);
    // Headers begun and never ended, and a body promised and never sent.
    let mut stalled_headers = TcpStream::connect(("127.0.0.1", holder.port)).unwrap();
    stalled_headers
        .write_all(b"POST /api/store/ HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let mut stalled_body = TcpStream::connect(("127.0.0.1", holder.port)).unwrap();
    stalled_body
        .write_all(format!("POST /api/store/ HTTP/1.1\r\nHost: x\r\nX-Sentry-Auth: {V2_AUTH}\r\nContent-Length: 100\r\n\r\n{{").as_bytes())
        .unwrap();
    let started = Instant::now();
    let (status, answer) = store(holder.port, &event("fast"));
    assert_eq!(status, 200, "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // The stalled headers are cut off after HEADER_TIMEOUT (10 s); the connection closes.
    stalled_headers
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut rest = Vec::new();
    let _ = stalled_headers.read_to_end(&mut rest);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(9) && waited < Duration::from_secs(25),
        "{waited:?}"
    );
    drop(stalled_body);
    let out = repo.xtask(&["hold-events", "--release", "--wait", "1"], None);
    // Nothing takes the address: said, as an error (events sent now are lost).
    assert!(
        !out.ok && out.stderr.contains("nothing listens on"),
        "{out:?}"
    );
    let (ok, _) = holder.finish();
    assert!(ok);
    assert_eq!(spooled(&repo).len(), 1);
}

#[test]
fn a_killed_holder_has_every_answered_event_on_disk() {
    if skip() {
        return;
    }
    let repo = Repo::new("hold_killed");
    with_keys(&repo);
    let mut holder = Holder::start(&repo, &[]);
    let port = holder.port;
    let answered = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..4)
        .map(|client| {
            let answered = answered.clone();
            std::thread::spawn(move || {
                for n in 0..10_000 {
                    let id = format!("c{client}n{n}");
                    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
                        return;
                    };
                    let body = event(&id);
                    let request = format!(
                        "POST /api/store/ HTTP/1.1\r\nHost: x\r\nX-Sentry-Auth: {V2_AUTH}\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if stream.write_all(request.as_bytes()).is_err() {
                        return;
                    }
                    let mut answer = String::new();
                    let _ = stream.read_to_string(&mut answer);
                    if answer.starts_with("HTTP/1.1 200") {
                        answered.lock().unwrap().push(id);
                    }
                }
            })
        })
        .collect();
    // Kill it mid-stream, with requests being received and written.
    while answered.lock().unwrap().len() < 200 {
        std::thread::sleep(Duration::from_millis(5));
    }
    holder.child.kill().unwrap();
    holder.child.wait().unwrap();
    for client in clients {
        client.join().unwrap();
    }
    let answered = answered.lock().unwrap().clone();
    let held: std::collections::BTreeSet<String> = spooled(&repo)
        .into_iter()
        .map(|held| held.event_id)
        .collect();
    let missing: Vec<_> = answered.iter().filter(|id| !held.contains(*id)).collect();
    assert!(
        missing.is_empty(),
        "answered 200 but not on disk: {missing:?}"
    );
    assert!(answered.len() >= 200);
    // A new holder goes on after the last whole line.
    let before = spooled(&repo).len() as u64;
    let holder = Holder::start(&repo, &[]);
    assert_eq!(store(holder.port, &event("after")).0, 200);
    let last = spooled(&repo).pop().unwrap();
    assert_eq!((last.seq, last.event_id.as_str()), (before + 1, "after"));
    drop(holder);
}

#[test]
fn bad_input_is_refused_with_a_clear_message() {
    if skip() {
        return;
    }
    let repo = Repo::new("hold_bad");
    let out = repo.xtask(
        &[
            "hold-events",
            "--listen",
            "127.0.0.1:1",
            "--max-body",
            "ten",
        ],
        None,
    );
    assert!(
        !out.ok && out.stderr.contains("`ten` is not a size"),
        "{out:?}"
    );
    // The harness's db has no keys (no public_key column): said, not a panic.
    let out = repo.xtask(&["hold-events", "--listen", "127.0.0.1:1"], None);
    assert!(
        !out.ok && out.stderr.contains("cannot read the projects and DSN keys"),
        "{out:?}"
    );
    with_keys(&repo);
    // The address taken by someone else for longer than --wait.
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = busy.local_addr().unwrap().to_string();
    let out = repo.xtask(&["hold-events", "--listen", &address, "--wait", "1"], None);
    assert!(
        !out.ok && out.stderr.contains("is still in use after 1 s"),
        "{out:?}"
    );
    let out = repo.xtask(&["hold-events", "--release"], None);
    assert!(
        !out.ok && out.stderr.contains("nothing to release"),
        "{out:?}"
    );
    let out = repo.xtask(&["hold-events", "--release", "--listen", "x:1"], None);
    assert!(
        !out.ok && out.stderr.contains("--release takes only --wait"),
        "{out:?}"
    );
    // No bin/py and no --listen: the address cannot be read, and says how to give it.
    let out = repo.xtask(&["hold-events"], None);
    assert!(
        !out.ok && out.stderr.contains("--listen HOST:PORT"),
        "{out:?}"
    );
    // A replay while events are still being held is refused.
    let holder = Holder::start(&repo, &[]);
    let out = repo.xtask(&["replay-events", "--to", "127.0.0.1:1"], None);
    assert!(
        !out.ok && out.stderr.contains("still holds Sentry's address"),
        "{out:?}"
    );
    let out = repo.xtask(&["hold-events", "--listen", "127.0.0.1:1"], None);
    assert!(
        !out.ok && out.stderr.contains("another `cargo xtask hold-events`"),
        "{out:?}"
    );
    drop(holder);
}

/// The hand-over a service manager makes possible: hold-events and Sentry 6 take the same
/// listening socket (systemd's LISTEN_FDS, which Sentry 6's gunicorn 0.17.4 reads too), which
/// stays open throughout: `--release` waits for Sentry 6 to answer on it, then stops the holder,
/// and a client sending all along is never refused.
#[test]
fn a_shared_socket_is_handed_over_without_one_refused_connection() {
    if skip() {
        return;
    }
    let repo = Repo::new("hold_socket");
    with_keys(&repo);
    let socket = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = socket.local_addr().unwrap().port();
    let wrapper = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/rehearse/socket_activate.py");
    let command = repo.command(&[], None);
    let mut wrapped = Command::new("python3");
    wrapped
        .arg(&wrapper)
        .arg(env!("CARGO_BIN_EXE_xtask"))
        .arg("hold-events");
    for (key, value) in command.get_envs() {
        match value {
            Some(value) => wrapped.env(key, value),
            None => wrapped.env_remove(key),
        };
    }
    xtask::util::pass_listener(&mut wrapped, &socket);
    let mut child = wrapped.stdout(Stdio::piped()).spawn().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("holding Sentry's store requests") {
        line.clear();
        assert!(
            stdout.read_line(&mut line).unwrap() > 0,
            "hold-events ended"
        );
    }
    assert!(line.contains("LISTEN_FDS"), "{line}");
    let holder = Holder {
        child,
        port,
        stdout,
    };
    let (status, answer) = store(port, &event("s1"));
    assert_eq!(status, 200);
    assert!(answer.contains("x-sentry-migrate: hold-events"), "{answer}");
    // A client sending all along; every connection must be taken by one or the other.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sender = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (mut ok, mut refused, mut n) = (0, 0, 0);
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                n += 1;
                match TcpStream::connect(("127.0.0.1", port)) {
                    Ok(mut stream) => {
                        stream
                            .set_read_timeout(Some(Duration::from_secs(10)))
                            .unwrap();
                        let body = event(&format!("s-all-along-{n}"));
                        let request = format!("POST /api/store/ HTTP/1.1\r\nHost: x\r\nX-Sentry-Auth: {V2_AUTH}\r\nContent-Length: {}\r\n\r\n{body}", body.len());
                        let _ = stream.write_all(request.as_bytes());
                        let mut answer = String::new();
                        let _ = stream.read_to_string(&mut answer);
                        if answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200")
                        {
                            ok += 1;
                        }
                    }
                    Err(_) => refused += 1,
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            (ok, refused, n)
        })
    };
    // "Sentry 6" starts on the same socket after a while and answers 200 without the header.
    // (The socket is non-blocking: its holder made it so, for all who share it, as gunicorn does.)
    let shared = socket.try_clone().unwrap();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(500));
        loop {
            let mut stream = match shared.accept() {
                Ok((stream, _)) => stream,
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                }
                Err(_) => return,
            };
            stream.set_nonblocking(false).unwrap();
            let mut buffer = [0u8; 4096];
            let _ = stream.read(&mut buffer);
            let _ = stream.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n{}");
        }
    });
    let out = repo.xtask(&["hold-events", "--release", "--wait", "30"], None);
    assert!(out.ok, "{out:?}");
    assert!(
        out.stdout.contains("no connection was refused"),
        "{}",
        out.stdout
    );
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (ok, refused, n) = sender.join().unwrap();
    assert_eq!(refused, 0, "{refused} of {n} connections refused");
    // Every connection answered 200, by the holder or by "Sentry 6" (the holder's queue is
    // served, the shared socket's stays for Sentry 6).
    assert!(ok == n && n > 20, "{ok} of {n} answered 200");
    let (exited, printed) = holder.finish();
    assert!(exited, "{printed}");
    assert!(spooled(&repo).len() >= 2);
}

#[test]
fn a_full_spool_answers_503_and_holds_nothing_more() {
    if skip() {
        return;
    }
    let repo = Repo::new("hold_full");
    with_keys(&repo);
    let holder = Holder::start(&repo, &["--max-spool", "3K"]);
    let statuses: Vec<u16> = (0..6)
        .map(|n| store(holder.port, &event(&format!("f{n}"))).0)
        .collect();
    let held = spooled(&repo).len();
    assert!((1..6).contains(&held), "{held} held: {statuses:?}");
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        held,
        "{statuses:?}"
    );
    assert!(statuses[held..].iter().all(|s| *s == 503), "{statuses:?}");
    let (_, answer) = store(holder.port, &event("f9"));
    assert!(answer.contains("the spool is full"), "{answer}");
    assert!(
        fs::metadata(repo.root.join("dumps/held-events.jsonl"))
            .unwrap()
            .len()
            <= 3 << 10
    );
}
