//! `rehearse --hold-events`: the cut-over as a user runs it while clients keep sending. Real
//! clients (raven 2.0.5 under Sentry 4's Python, the JavaScript raven for Node, and raven 4.0.4
//! under Sentry 6's once it is installed) send an event every 100 ms from before Sentry 4 stops
//! until after Sentry 6 runs; `hold-events` takes Sentry's address the moment Sentry 4 lets go
//! of it, `migrate` runs, Sentry 6 starts and `hold-events --release` hands the address over,
//! `replay-events` sends what was held. Then every event a server answered 200 for is looked up
//! in Sentry 6: exactly once, in its project and its own group, at its own time.

use std::{
    collections::BTreeMap,
    fs,
    io::BufRead,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use xshell::Shell;

use super::{
    run::run_tool,
    seed::{Seeded, REHEARSAL_ZONE},
    server::{sentry4_server, sentry6_server},
};
use crate::{pgcluster::PgCluster, util};

/// Processes started here, killed when dropped (also when a step fails).
struct Children(Vec<(String, Child)>);

impl Children {
    fn spawn(&mut self, name: &str, mut command: Command, log: &Path) -> Result<()> {
        let out = fs::OpenOptions::new().create(true).append(true).open(log)?;
        command
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        self.0.push((name.to_string(), child));
        Ok(())
    }

    /// Waits for every child to exit by itself (within `wait`); those that do not are killed.
    fn wait(&mut self, wait: Duration) -> Result<()> {
        let deadline = Instant::now() + wait;
        for (name, child) in &mut self.0 {
            while child.try_wait()?.is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    bail!("{name} did not stop within {} s", wait.as_secs());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        self.0.clear();
        Ok(())
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for (_, child) in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits until `log` has a line containing `text`.
fn wait_for_line(log: &Path, text: &str, wait: Duration, what: &str) -> Result<Instant> {
    let deadline = Instant::now() + wait;
    loop {
        if fs::read_to_string(log).is_ok_and(|it| it.contains(text)) {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            bail!(
                "{what}: `{text}` not in {} within {} s:\n{}",
                log.display(),
                wait.as_secs(),
                util::log_tail(log, 15)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The seeded DSNs whose key the source db still has (seeding deletes one), pointed at
/// `port`; with each one's project id.
fn dsns_on_port(seeded: &Seeded, sqlite: &Path, port: u16) -> Result<Vec<(i64, String)>> {
    let conn = crate::sqlite::open_read_only(sqlite)?;
    let mut out = Vec::new();
    for d in seeded.state["dsns"]
        .as_array()
        .context("the seeded state has no dsns")?
    {
        let dsn = d["dsn"].as_str().context("no dsn")?;
        let (scheme_auth, rest) = dsn.rsplit_once('@').context("a DSN without @")?;
        let (_, path) = rest.split_once('/').context("a DSN without a project")?;
        let public = scheme_auth
            .rsplit_once("//")
            .and_then(|(_, auth)| auth.split_once(':'))
            .map(|(public, _)| public)
            .context("a DSN without keys")?;
        let kept: i64 = conn.query_row(
            "SELECT count(*) FROM sentry_projectkey WHERE public_key = ?1",
            [public],
            |row| row.get(0),
        )?;
        if kept > 0 {
            out.push((
                d["project_id"].as_i64().context("no project_id")?,
                format!("{scheme_auth}@127.0.0.1:{port}/{path}"),
            ));
        }
    }
    ensure!(
        !out.is_empty(),
        "no seeded DSN has its key in the source db"
    );
    Ok(out)
}

/// One line of keep_sending's output.
#[derive(Debug, serde::Deserialize)]
struct SentEvent {
    client: String,
    version: String,
    dsn: usize,
    event_id: Option<String>,
    timestamp: Option<String>,
    message: String,
    delivered: bool,
    /// Why the client did not deliver it (what raven logged or emitted).
    #[serde(default)]
    error: Option<String>,
    /// When the send began (`at`: when the client had its outcome).
    #[serde(default)]
    started: Option<f64>,
    at: f64,
}

impl SentEvent {
    fn started(&self) -> f64 {
        self.started.unwrap_or(self.at)
    }

    fn error(&self) -> &str {
        self.error.as_deref().unwrap_or("not delivered")
    }
}

/// A connection refused or cut: what a gap in the hand-over does to a client.
fn refused(error: &str) -> bool {
    let error = error.to_ascii_lowercase();
    [
        "refused",
        "reset",
        "broken pipe",
        "aborted",
        "econn",
        "epipe",
        "hang up",
    ]
    .iter()
    .any(|it| error.contains(it))
}

#[allow(clippy::too_many_arguments)]
pub(super) fn cut_over(
    sh: &Shell,
    root: &Path,
    exe: &Path,
    pg_env: &[(&'static str, String)],
    cluster: &PgCluster,
    logs: &Path,
    raven_node: &Path,
    seeded: &Seeded,
    shared_socket: bool,
) -> Result<serde_json::Value> {
    let port = util::free_port()?;
    sh.set_var("SENTRY_WEB_HOST", "127.0.0.1");
    sh.set_var("SENTRY_WEB_PORT", port.to_string());
    let dsns = dsns_on_port(seeded, &root.join("var/sentry.db"), port)?;
    let urls: Vec<&str> = dsns.iter().map(|(_, dsn)| dsn.as_str()).collect();
    fs::write(
        root.join("cutover-dsns.json"),
        serde_json::to_string(&urls)?,
    )?;
    let sent_path = root.join("cutover-events.jsonl");
    let stop = root.join("cutover-stop");
    let _ = fs::remove_file(&stop);
    let clients_log = logs.join("cutover-clients.log");
    let mut clients = Children(Vec::new());
    let mut holder = Children(Vec::new());
    let client = |program: &Path, script: &str, name: &str| {
        let mut command = Command::new(program);
        command
            .current_dir(root)
            .arg(format!("xtask/python/rehearse/{script}"))
            .args([
                "cutover-dsns.json",
                "cutover-events.jsonl",
                "cutover-stop",
                name,
            ]);
        command
    };

    // Sentry 4 up, the raven 2.0.5 client sending to it.
    let mut sentry4 = sentry4_server(sh, port, &logs.join("cutover-sentry4-web.log"))?;
    clients.spawn(
        "raven 2.0.5 client",
        client(&root.join("bin/py"), "keep_sending.py", "raven2"),
        &clients_log,
    )?;
    std::thread::sleep(Duration::from_secs(3));

    // What needs no downtime, while Sentry 4 serves and the client sends: `migrate --prepare`.
    let prepare_log = logs.join("cutover-prepare.log");
    let preparing = Instant::now();
    let (ok, stderr) = run_tool(
        sh,
        exe,
        &["migrate", "--prepare", "--fit-values"],
        root,
        pg_env,
        &prepare_log,
    )?;
    ensure!(
        ok,
        "`migrate --prepare` failed while Sentry 4 served: {stderr}\n{}",
        util::log_tail(&prepare_log, 15)
    );
    ensure!(
        sentry4.is_running(),
        "Sentry 4 stopped during `migrate --prepare` (log {})",
        logs.join("cutover-sentry4-web.log").display()
    );
    println!(
        "    migrate --prepare while Sentry 4 served and raven 2.0.5 sent: {} (buildout-tag1, pg-create-database, pg-upgrade, pg-clear-generated-rows, pg-abstime-shim)",
        util::human_duration(preparing.elapsed())
    );

    // hold-events first (it waits for the address), then Sentry 4 stops; or, with a shared
    // socket, Sentry 4 stops, the rehearsal (as a service manager) listens, and passes the
    // socket to hold-events.
    let hold_log = logs.join("cutover-hold-events.log");
    let mut command = Command::new(exe);
    command
        .current_dir(root)
        .arg("hold-events")
        .env("SENTRY_MIGRATE_ROOT", root)
        .env("SENTRY_WEB_HOST", "127.0.0.1")
        .env("SENTRY_WEB_PORT", port.to_string());
    let stopping = Instant::now();
    let socket = if shared_socket {
        sentry4.stop()?;
        let socket = loop {
            match std::net::TcpListener::bind(("127.0.0.1", port)) {
                Ok(socket) => break socket,
                Err(_) if stopping.elapsed() < Duration::from_secs(30) => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                Err(err) => return Err(err).context("cannot listen where Sentry 4 listened"),
            }
        };
        let mut wrapped = Command::new("python3");
        wrapped
            .current_dir(root)
            .arg("xtask/python/rehearse/socket_activate.py")
            .arg(exe)
            .args(command.get_args())
            .envs(command.get_envs().filter_map(|(k, v)| Some((k, v?))));
        util::pass_listener(&mut wrapped, &socket);
        holder.spawn("hold-events", wrapped, &hold_log)?;
        Some(socket)
    } else {
        holder.spawn("hold-events", command, &hold_log)?;
        wait_for_line(
            &hold_log,
            "is in use",
            Duration::from_secs(60),
            "hold-events",
        )?;
        sentry4.stop()?;
        None
    };
    let stopped = stopping.elapsed();
    let holding = wait_for_line(
        &hold_log,
        "holding Sentry's store requests",
        Duration::from_secs(30),
        "hold-events",
    )?;
    let holding_unix = jiff::Timestamp::now().as_millisecond() as f64 / 1000.0;
    println!(
        "    Sentry 4 stopped in {}; hold-events holds 127.0.0.1:{port}{}",
        util::human_duration(stopped),
        if shared_socket {
            " on a socket the rehearsal owns, as a service manager (LISTEN_FDS)"
        } else {
            ""
        }
    );
    let mut node = client(Path::new("node"), "keep_sending.js", "node");
    node.env("NODE_PATH", raven_node);
    clients.spawn("raven-node client", node, &clients_log)?;
    std::thread::sleep(Duration::from_secs(2));

    // The cut-over itself, as a user runs it.
    let migrate_log = logs.join("cutover-migrate.log");
    let (ok, stderr) = run_tool(
        sh,
        exe,
        &["migrate", "--fit-values"],
        root,
        pg_env,
        &migrate_log,
    )?;
    ensure!(
        ok,
        "`migrate --fit-values` failed while hold-events held the address: {stderr}\n{}",
        util::log_tail(&migrate_log, 15)
    );
    // A client of Sentry 6's era, under Sentry 6's Python (tag 2's bin/py), sends to the holder.
    clients.spawn(
        "raven 4.0.4 client",
        client(&root.join("bin/py"), "keep_sending.py", "raven4"),
        &clients_log,
    )?;
    std::thread::sleep(Duration::from_secs(3));

    // Sentry 6 starts. Its own bind: gunicorn retries every second, and once it has tried and
    // found the address in use, the holder lets go. A shared socket: gunicorn takes it too;
    // once its workers have booted (both take connections then), the holder stops.
    let web6_log = logs.join("cutover-sentry6-web.log");
    let mut sentry6_accepting = f64::MAX;
    let _sentry6 = match &socket {
        Some(socket) => {
            let server = super::server::sentry6_server_on_socket(sh, socket, port, &web6_log)?;
            wait_for_line(
                &web6_log,
                "Booting worker",
                Duration::from_secs(120),
                "Sentry 6",
            )?;
            // From here on a connection may go to Sentry 6's worker as well as the holder.
            sentry6_accepting = jiff::Timestamp::now().as_millisecond() as f64 / 1000.0;
            std::thread::sleep(Duration::from_secs(2));
            server
        }
        None => {
            let server = sentry6_server(sh, port, &web6_log)?;
            wait_for_line(
                &web6_log,
                "Connection in use",
                Duration::from_secs(120),
                "Sentry 6",
            )?;
            server
        }
    };
    let release_log = logs.join("cutover-release.log");
    let (ok, stderr) = run_tool(
        sh,
        exe,
        &["hold-events", "--release"],
        root,
        pg_env,
        &release_log,
    )?;
    ensure!(ok, "`hold-events --release` failed: {stderr}");
    if let Some(line) = fs::read_to_string(&release_log)?
        .lines()
        .find(|line| line.starts_with("hold-events released"))
    {
        println!("    {line}");
    }
    holder.wait(Duration::from_secs(60))?;
    let released = Instant::now();
    let released_unix = jiff::Timestamp::now().as_millisecond() as f64 / 1000.0;
    let state: crate::hold::State =
        serde_json::from_slice(&fs::read(crate::hold::state_path(&root.join("dumps")))?)?;
    let gap_ms = state
        .gap_ms
        .context("hold-events --release measured no gap")?;
    // Sentry 6 answers (its workers booted), then the clients send to it for a while.
    let deadline = Instant::now() + Duration::from_secs(120);
    while std::net::TcpStream::connect(("127.0.0.1", port))
        .ok()
        .and_then(|mut stream| {
            use std::io::{Read, Write};
            stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
            stream.write_all(b"GET /api/store/ HTTP/1.0\r\n\r\n").ok()?;
            let mut answer = [0u8; 12];
            stream.read_exact(&mut answer).ok()
        })
        .is_none()
    {
        ensure!(
            Instant::now() < deadline,
            "Sentry 6 did not answer on {port}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(3));
    fs::write(&stop, "")?;
    clients.wait(Duration::from_secs(60))?;
    let held = crate::hold::spool::read(&crate::hold::spool::path(&root.join("dumps")))?.held;
    println!(
        "    held {} requests from {} to the release; Sentry's address free for {gap_ms} ms",
        held.len(),
        util::human_duration(released.duration_since(holding))
    );

    // The replay, while Sentry 6 runs.
    let replay_log = logs.join("cutover-replay.log");
    let unix = || jiff::Timestamp::now().as_millisecond() as f64 / 1000.0;
    let replay_started = unix();
    let (ok, stderr) = run_tool(sh, exe, &["replay-events"], root, pg_env, &replay_log)?;
    let replay_window = (replay_started, unix());
    ensure!(
        ok,
        "`replay-events` failed: {stderr}\n{}",
        util::log_tail(&replay_log, 15)
    );
    let replayed = fs::read_to_string(&replay_log)?
        .lines()
        .find(|line| line.contains("events held,"))
        .map(str::to_string)
        .context("replay-events printed no summary")?;
    println!("    {}", replayed.trim());
    // Sentry 6 west of UTC dates every event on receipt (replay-events says so): a held
    // event is then dated in the replay's window, one sent to Sentry directly at its own time.
    let offset = jiff::tz::TimeZone::get(REHEARSAL_ZONE)?
        .to_offset(jiff::Timestamp::now())
        .seconds();
    let dated_on_replay = (offset < 0).then_some(replay_window);
    if dated_on_replay.is_some() {
        let note = fs::read_to_string(&replay_log)?
            .lines()
            .find(|line| line.contains("dates: Sentry 6 runs with TIME_ZONE"))
            .map(str::to_string)
            .context(
                "replay-events did not say that Sentry 6 dates the replayed events on receipt",
            )?;
        println!("    {}", note.trim());
    }
    let facts = prove_every_event(cluster, &dsns, &sent_path, &held, gap_ms, dated_on_replay)
        .with_context(|| sentry6_errors(&web6_log))?;
    if shared_socket {
        check_shared_socket(&sent_path, holding_unix, sentry6_accepting, released_unix)?;
    }
    drop(socket);
    Ok(facts)
}

/// What Sentry 6's web server logged as an error (it answers a store request 200 before its
/// eager task saves the event: a failure there is only in its log).
fn sentry6_errors(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text
        .lines()
        .filter(|line| {
            ["Traceback", "Error", "Unable to", "Exception"]
                .iter()
                .any(|it| line.contains(it))
        })
        .collect();
    if lines.is_empty() {
        format!("Sentry 6 logged no error in {}", log.display())
    } else {
        format!(
            "Sentry 6 logged {} error lines in {}, the last: {}",
            lines.len(),
            log.display(),
            lines[lines.len().saturating_sub(10)..].join(" | ")
        )
    }
}

/// With the shared socket, no client may fail from the moment the socket was there (a client
/// that failed before, as Sentry 4 stopped, may skip sends for a second or two: raven's
/// back-off): no connection refused or cut, and nothing answered too late for the client
/// while only the holder took connections. Once Sentry 6's first worker has booted, it takes
/// connections from the same socket too, and a fresh worker's first request (Django loading
/// its URLs and middleware) can outlast raven 4's 1 s timeout: Sentry 6's own start, said
/// with each reason, not blamed on the holder.
fn check_shared_socket(
    sent_path: &Path,
    holding_unix: f64,
    sentry6_accepting: f64,
    released_unix: f64,
) -> Result<()> {
    let sent: Vec<SentEvent> = fs::read_to_string(sent_path)?
        .lines()
        .filter_map(|line| serde_json::from_str::<SentEvent>(line).ok())
        .collect();
    let failed = sent
        .iter()
        .filter(|event| !event.delivered && event.started() > holding_unix + 5.0);
    let (mut ours, mut sentry6) = (Vec::new(), Vec::new());
    for event in failed {
        let line = format!(
            "{} {} sent at {:.3}, {:.3} s to fail: {}",
            event.client,
            event.message,
            event.started(),
            event.at - event.started(),
            event.error()
        );
        if refused(event.error()) || event.started() < sentry6_accepting {
            ours.push(line);
        } else {
            sentry6.push(line);
        }
    }
    ensure!(
        ours.is_empty(),
        "with the shared socket, {} events were not delivered after hold-events held it (Sentry 6 \
         took connections from {sentry6_accepting:.3}, the holder released it at \
         {released_unix:.3}):\n  {}",
        ours.len(),
        ours.join("\n  ")
    );
    if !sentry6.is_empty() {
        println!(
            "    {} events sent once Sentry 6 took connections were not delivered, none refused (Sentry 6's workers starting; the holder released at {released_unix:.3}): {}",
            sentry6.len(),
            sentry6.join("; ")
        );
    }
    Ok(())
}

/// Every event a server answered 200 for is in Sentry 6 exactly once, in its project, in a
/// group of its own message, at the time its client gave it.
fn prove_every_event(
    cluster: &PgCluster,
    dsns: &[(i64, String)],
    sent_path: &Path,
    held: &[crate::hold::spool::Held],
    gap_ms: u64,
    dated_on_replay: Option<(f64, f64)>,
) -> Result<serde_json::Value> {
    let mut sent = Vec::new();
    for line in fs::File::open(sent_path)
        .map(std::io::BufReader::new)
        .with_context(|| format!("the clients wrote no {}", sent_path.display()))?
        .lines()
    {
        sent.push(serde_json::from_str::<SentEvent>(&line?)?);
    }
    let held_ids: BTreeMap<&str, &crate::hold::spool::Held> =
        held.iter().map(|it| (it.event_id.as_str(), it)).collect();
    let mut client = cluster.client("sentry")?;
    #[derive(Default, serde::Serialize)]
    struct Tally {
        version: String,
        sent: u64,
        delivered: u64,
        held: u64,
        in_sentry6: u64,
        not_delivered: u64,
    }
    let mut tally: BTreeMap<String, Tally> = BTreeMap::new();
    let mut problems = Vec::new();
    for event in &sent {
        let entry = tally.entry(event.client.clone()).or_default();
        entry.version = event.version.clone();
        entry.sent += 1;
        let Some(id) = &event.event_id else {
            problems.push(format!(
                "{}: an event without an id: {}",
                event.client, event.message
            ));
            continue;
        };
        let rows = client.query(
            "SELECT m.project_id::int8, g.project_id::int8, g.message, \
                    extract(epoch FROM m.datetime)::float8 \
             FROM sentry_message m JOIN sentry_groupedmessage g ON g.id = m.group_id \
             WHERE m.message_id = $1",
            &[id],
        )?;
        if !event.delivered {
            entry.not_delivered += 1;
            if !rows.is_empty() {
                entry.in_sentry6 += 1;
            }
            continue;
        }
        entry.delivered += 1;
        let was_held = held_ids.get(id.as_str());
        if was_held.is_some() {
            entry.held += 1;
        }
        let project = dsns[event.dsn].0;
        match rows.as_slice() {
            [row] => {
                entry.in_sentry6 += 1;
                let (event_project, group_project, message, epoch): (i64, i64, String, f64) =
                    (row.get(0), row.get(1), row.get(2), row.get(3));
                if event_project != project || group_project != project {
                    problems.push(format!("{id}: in project {event_project} (group's {group_project}), sent to {project}"));
                }
                if !message.contains(&event.message) {
                    problems.push(format!(
                        "{id}: in the group of `{message}`, not its own `{}`",
                        event.message
                    ));
                }
                let own = event
                    .timestamp
                    .as_deref()
                    .and_then(|ts| ts.parse::<jiff::civil::DateTime>().ok())
                    .and_then(|ts| ts.to_zoned_datetime(jiff::tz::TimeZone::UTC).ok())
                    .map(|ts| ts.timestamp().as_millisecond() as f64 / 1000.0);
                let expected = match (was_held, dated_on_replay) {
                    // Dated when replayed.
                    (Some(_), Some((from, to))) => (from - 1.0..=to + 1.0).contains(&epoch),
                    // Dated when received: after its own time, before its client had the answer.
                    (None, Some(_)) => {
                        own.is_some_and(|own| (own - 1.0..=event.at + 1.0).contains(&epoch))
                    }
                    _ => own.is_some_and(|own| (epoch - own).abs() <= 1.0),
                };
                if !expected {
                    problems.push(format!(
                        "{id}: stored at {epoch}, its client's time is {:?}{}",
                        event.timestamp,
                        if was_held.is_some() { " (held)" } else { "" }
                    ));
                }
            }
            [] => problems.push(format!(
                "{id} ({} {}, {}): answered 200{} but not in Sentry 6",
                event.client,
                event.message,
                event.at,
                if was_held.is_some() {
                    " by hold-events"
                } else {
                    ""
                }
            )),
            more => problems.push(format!("{id}: {} times in Sentry 6", more.len())),
        }
    }
    ensure!(
        problems.is_empty(),
        "{} of the events sent through the cut-over are wrong in Sentry 6 (every line: {}):\n  {}",
        problems.len(),
        sent_path.display(),
        problems
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n  ")
    );
    // Delivered twice, an event would be one row (a unique key) but counted twice in its group.
    let counted_twice: Vec<String> = client
        .query(
            "SELECT g.message, g.times_seen::int8, count(m.id) FROM sentry_groupedmessage g \
             JOIN sentry_message m ON m.group_id = g.id WHERE g.message LIKE 'cut-over %' \
             GROUP BY g.id, g.message, g.times_seen HAVING g.times_seen <> count(m.id)",
            &[],
        )?
        .iter()
        .map(|row| {
            let (message, seen, events): (String, i64, i64) = (row.get(0), row.get(1), row.get(2));
            format!("`{message}` seen {seen} times, {events} events")
        })
        .collect();
    ensure!(
        counted_twice.is_empty(),
        "groups count more deliveries than events (an event delivered twice):\n  {}",
        counted_twice.join("\n  ")
    );
    let delivered: u64 = tally.values().map(|it| it.delivered).sum();
    let held_total: u64 = tally.values().map(|it| it.held).sum();
    ensure!(
        held_total > 0,
        "no client event was held: the cut-over did not happen while they sent"
    );
    for name in ["raven2", "node", "raven4"] {
        ensure!(
            tally.get(name).is_some_and(|it| it.held > 0),
            "no event of the {name} client was held"
        );
    }
    let not_delivered: u64 = tally.values().map(|it| it.not_delivered).sum();
    for (name, it) in &tally {
        println!(
            "    {name} ({}): {} sent, {} answered 200 ({} of them held and replayed), all {} in Sentry 6 exactly once, in their project and their own group, dated as Sentry 6 dates them; {} not delivered (no 200: the client dropped them)",
            it.version, it.sent, it.delivered, it.held, it.delivered, it.not_delivered
        );
    }
    Ok(serde_json::json!({
        "clients": tally,
        "delivered": delivered,
        "held": held_total,
        "lost": 0,
        "gap_ms": gap_ms,
        "not_delivered": not_delivered,
    }))
}
