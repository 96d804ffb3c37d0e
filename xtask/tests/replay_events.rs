//! `replay-events` as a user runs it, against a recording stand-in for Sentry 6's store
//! endpoint that stores into a real PostgreSQL `sentry_message`, so that the replay's lookups
//! and its final proof read a real database: order, exactly once across a kill, Sentry 6 down,
//! rate-limited and refusing.

mod common;

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    net::TcpListener,
    process::Stdio,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::{hold::*, *};

/// A stand-in for Sentry 6's store endpoint: stores each event's id in the target's
/// `sentry_message` (as Sentry 6 does before it answers), records every delivery, and can be
/// told to stall after storing one event (to kill the replay with its answer not yet given).
struct FakeSentry6 {
    deliveries: Arc<Mutex<Vec<(String, String)>>>,
}

/// What the stand-in answers an event instead of storing it: (event id, status, how often).
type Refusals = Vec<(&'static str, u16, usize)>;

impl FakeSentry6 {
    fn start(repo: &Repo, port: u16, stall_on: Option<&'static str>) -> FakeSentry6 {
        FakeSentry6::start_refusing(repo, port, stall_on, Vec::new())
    }

    fn start_refusing(
        repo: &Repo,
        port: u16,
        stall_on: Option<&'static str>,
        mut refusals: Refusals,
    ) -> FakeSentry6 {
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let deliveries = Arc::new(Mutex::new(Vec::new()));
        let recorded = deliveries.clone();
        let mut client = repo.target_client();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut head = String::new();
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        break;
                    }
                    if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = value.trim().parse().unwrap();
                    }
                    head.push_str(&line);
                    if line == "\r\n" {
                        break;
                    }
                }
                let mut body = vec![0; length];
                reader.read_exact(&mut body).unwrap();
                let event: serde_json::Value = serde_json::from_slice(&body).unwrap();
                let id = event["event_id"].as_str().unwrap().to_string();
                if let Some(refusal) = refusals.iter_mut().find(|(rid, _, n)| *rid == id && *n > 0)
                {
                    refusal.2 -= 1;
                    recorded
                        .lock()
                        .unwrap()
                        .push((format!("refused {id}"), head));
                    let _ = stream.write_all(
                        format!("HTTP/1.1 {} No\r\nX-Sentry-Error: no {id}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", refusal.1).as_bytes(),
                    );
                    continue;
                }
                client
                    .execute(
                        "INSERT INTO sentry_message (message_id, project_id) VALUES ($1, 3) ON CONFLICT DO NOTHING",
                        &[&id],
                    )
                    .unwrap();
                recorded.lock().unwrap().push((id.clone(), head));
                if stall_on == Some(id.as_str()) {
                    std::thread::sleep(Duration::from_secs(120));
                }
                let answer = format!(r#"{{"id": "{id}"}}"#);
                let _ = stream.write_all(
                    format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}", answer.len())
                        .as_bytes(),
                );
            }
        });
        FakeSentry6 { deliveries }
    }

    fn per_event(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for (id, _) in self.deliveries.lock().unwrap().iter() {
            *out.entry(id.clone()).or_default() += 1;
        }
        out
    }
}

/// A target with Sentry 6's events tables (the columns the replay reads).
fn sentry6_target(repo: &Repo) {
    let mut admin = repo.db.cluster.admin_client("postgres");
    admin
        .batch_execute(&format!("CREATE DATABASE \"{}\"", repo.target))
        .unwrap();
    repo.target_client()
        .batch_execute(
            "CREATE TABLE sentry_message (id serial PRIMARY KEY, message_id varchar(32), \
             project_id integer, UNIQUE (project_id, message_id)); \
             CREATE TABLE sentry_eventmapping (id serial PRIMARY KEY, project_id integer, \
             group_id integer, event_id varchar(32), UNIQUE (project_id, event_id))",
        )
        .unwrap();
}

fn hold_events(repo: &Repo, ids: &[&str]) {
    let holder = Holder::start(repo, &[]);
    for id in ids {
        assert_eq!(store(holder.port, &event(id)).0, 200);
    }
    // Not an auth in the header: one in the query, and no event id (the replay sends the JSON).
    let (status, answer) = http(
        holder.port,
        "POST",
        "/api/3/store/?sentry_version=2.0&sentry_client=x&sentry_key=pub3",
        &[],
        br#"{"message": "query auth"}"#,
    );
    assert_eq!(status, 200, "{answer}");
    let out = repo.xtask(&["hold-events", "--release", "--wait", "1"], None);
    assert!(!out.ok, "nothing takes the port here: {out:?}");
    assert!(holder.finish().0);
}

#[test]
fn the_replay_sends_each_event_once_in_order_and_resumes_after_a_kill() {
    if skip() {
        return;
    }
    let repo = Repo::new("replay_kill");
    with_keys(&repo);
    sentry6_target(&repo);
    let ids = ["r1", "r2", "r3", "r4", "r5"];
    hold_events(&repo, &ids);
    let port = xtask::util::free_port().unwrap();
    let to = format!("127.0.0.1:{port}");
    let sentry6 = FakeSentry6::start(&repo, port, Some("r3"));
    let mut replay = repo
        .command(&["replay-events", "--to", &to], None)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // r3 is stored and its answer not yet given: the moment to kill the replay.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !sentry6.per_event().contains_key("r3") {
        assert!(Instant::now() < deadline, "r3 never arrived");
        std::thread::sleep(Duration::from_millis(10));
    }
    replay.kill().unwrap();
    replay.wait().unwrap();
    // Sentry 6 "restarts" on another port; the re-run resumes.
    let port = xtask::util::free_port().unwrap();
    let to = format!("127.0.0.1:{port}");
    let restarted = FakeSentry6::start(&repo, port, None);
    let out = repo.xtask(&["replay-events", "--to", &to], None);
    assert!(out.ok, "{out:?}");
    assert!(
        out.stdout.contains("resuming: 2 of 6 done before"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains(
            "6 events held, 5 replayed (1 found already stored), 0 refused by Sentry 6, 0 lost"
        ),
        "{}",
        out.stdout
    );
    // Each event delivered exactly once over both runs, in arrival order.
    let mut order: Vec<String> = sentry6
        .deliveries
        .lock()
        .unwrap()
        .iter()
        .map(|(id, _)| id.clone())
        .collect();
    order.extend(
        restarted
            .deliveries
            .lock()
            .unwrap()
            .iter()
            .map(|(id, _)| id.clone()),
    );
    assert_eq!(&order[..5], &ids[..]);
    assert_eq!(order.len(), 6, "{order:?}");
    let mut all = sentry6.per_event();
    for (id, n) in restarted.per_event() {
        *all.entry(id).or_default() += n;
    }
    assert!(all.values().all(|n| *n == 1), "{all:?}");
    // The query-auth request went as JSON with its auth still in the query.
    let (_, head) = restarted.deliveries.lock().unwrap().last().unwrap().clone();
    assert!(
        head.contains("sentry_key=pub3") && head.contains("application/json"),
        "{head}"
    );
    // A third run has nothing left to send.
    let out = repo.xtask(&["replay-events", "--to", &to], None);
    assert!(out.ok && out.stdout.contains("resuming: 6 of 6"), "{out:?}");
    assert_eq!(restarted.deliveries.lock().unwrap().len(), 3);
}

#[test]
fn the_replay_waits_while_sentry_6_is_down_and_says_so() {
    if skip() {
        return;
    }
    let repo = Repo::new("replay_down");
    with_keys(&repo);
    sentry6_target(&repo);
    hold_events(&repo, &["d1", "d2"]);
    let port = xtask::util::free_port().unwrap();
    let to = format!("127.0.0.1:{port}");
    let replay = repo
        .command(&["replay-events", "--to", &to, "--wait", "60"], None)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let sentry6 = FakeSentry6::start(&repo, port, None);
    let out = replay.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("Sentry 6 does not answer at"), "{stdout}");
    assert!(stdout.contains("3 events held, 3 replayed"), "{stdout}");
    assert_eq!(sentry6.per_event().len(), 3);
    // Down for longer than --wait: stops, and names the resume.
    let repo = Repo::new("replay_gone");
    with_keys(&repo);
    sentry6_target(&repo);
    hold_events(&repo, &["g1"]);
    let out = repo.xtask(
        &["replay-events", "--to", "127.0.0.1:1", "--wait", "1"],
        None,
    );
    assert!(
        !out.ok
            && out
                .stderr
                .contains("run `cargo xtask replay-events` again: it resumes at #1"),
        "{out:?}"
    );
}

#[test]
fn sentry_6_rate_limits_are_waited_out_and_refusals_reported_not_retried() {
    if skip() {
        return;
    }
    let repo = Repo::new("replay_refused");
    with_keys(&repo);
    sentry6_target(&repo);
    hold_events(&repo, &["q1", "q2", "q3"]);
    let port = xtask::util::free_port().unwrap();
    let to = format!("127.0.0.1:{port}");
    // q1: rate-limited twice, then stored; q2: refused for good.
    let sentry6 =
        FakeSentry6::start_refusing(&repo, port, None, vec![("q1", 429, 2), ("q2", 400, 100)]);
    let out = repo.xtask(&["replay-events", "--to", &to], None);
    assert!(!out.ok, "{out:?}");
    assert!(
        out.stdout.contains("4 events held, 3 replayed"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("refused: #2 event q2 project 3: 400 no q2"),
        "{}",
        out.stdout
    );
    assert!(
        out.stderr.contains("Sentry 6 refused 1 held events"),
        "{}",
        out.stderr
    );
    let deliveries: Vec<String> = sentry6
        .deliveries
        .lock()
        .unwrap()
        .iter()
        .map(|(id, _)| id.clone())
        .collect();
    assert_eq!(
        &deliveries[..4],
        ["refused q1", "refused q1", "q1", "refused q2"],
        "{deliveries:?}"
    );
    // A re-run sends nothing again: the refusal is recorded.
    let before = sentry6.deliveries.lock().unwrap().len();
    let out = repo.xtask(&["replay-events", "--to", &to], None);
    assert!(
        !out.ok && out.stdout.contains("resuming: 4 of 4"),
        "{out:?}"
    );
    assert_eq!(sentry6.deliveries.lock().unwrap().len(), before);
}
