//! The holding endpoint's harness: a source db with DSN keys, `hold-events` started on a
//! loopback port (killed when dropped), HTTP requests, the spool read back.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    process::{Child, Stdio},
    time::Duration,
};

use super::Repo;

/// The repo's source db with real project slugs and DSN keys (the harness's has none).
pub fn with_keys(repo: &Repo) {
    let conn = rusqlite::Connection::open(repo.root.join("var/sentry.db")).unwrap();
    conn.execute_batch(
        "DROP TABLE sentry_project; DROP TABLE sentry_projectkey;
         CREATE TABLE sentry_project (id integer PRIMARY KEY, name text, slug text);
         CREATE TABLE sentry_projectkey (id integer PRIMARY KEY, project_id integer,
             public_key varchar(32), secret_key varchar(32), user_id integer);
         INSERT INTO sentry_project VALUES (1, 'Sentry (Internal)', 'sentry'), (3, 'web', 'web');
         INSERT INTO sentry_projectkey VALUES (2, 1, 'pub1', 'sec1', NULL), (5, 3, 'pub3', 'sec3', 1);",
    )
    .unwrap();
}

pub const V2_AUTH: &str = "Sentry sentry_version=2.0, sentry_client=raven-python/2.0.5, sentry_key=pub3, sentry_timestamp=1";

pub struct Holder {
    pub child: Child,
    pub port: u16,
    pub stdout: BufReader<std::process::ChildStdout>,
}

impl Holder {
    pub fn start(repo: &Repo, extra: &[&str]) -> Holder {
        let port = xtask::util::free_port().unwrap();
        Holder::start_on(repo, port, extra)
    }

    pub fn start_on(repo: &Repo, port: u16, extra: &[&str]) -> Holder {
        let listen = format!("127.0.0.1:{port}");
        let mut args = vec!["hold-events", "--listen", &listen];
        args.extend_from_slice(extra);
        let mut child = repo
            .command(&args, None)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        loop {
            line.clear();
            assert!(
                stdout.read_line(&mut line).unwrap() > 0,
                "hold-events ended before holding"
            );
            if line.contains("holding Sentry's store requests") {
                break;
            }
        }
        Holder {
            child,
            port,
            stdout,
        }
    }

    /// Everything it printed until it exited, and whether it exited 0.
    pub fn finish(mut self) -> (bool, String) {
        let mut rest = String::new();
        self.stdout.read_to_string(&mut rest).unwrap();
        (self.child.wait().unwrap().success(), rest)
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request on its own connection: (status, headers and body as text).
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let _ = stream.write_all(body);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|it| it.parse().ok())
        .unwrap_or(0);
    (status, answer)
}

pub fn store(port: u16, body: &str) -> (u16, String) {
    http(
        port,
        "POST",
        "/api/store/",
        &[("X-Sentry-Auth", V2_AUTH)],
        body.as_bytes(),
    )
}

pub fn event(id: &str) -> String {
    format!(r#"{{"event_id": "{id}", "message": "m {id}", "timestamp": "2026-12-01T10:00:00"}}"#)
}

pub fn spooled(repo: &Repo) -> Vec<xtask::hold::spool::Held> {
    xtask::hold::spool::read(&repo.root.join("dumps/held-events.jsonl"))
        .unwrap()
        .held
}
