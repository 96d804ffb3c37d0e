//! What Sentry 6.4.4's store view decides about a store request, decided the same way from the
//! source db's projects and keys (pure: a request in, an answer out). Read in the 6.4.4 egg:
//! `sentry/web/api.py` (`APIView._dispatch`, `_parse_header`, `StoreView.process`),
//! `sentry/coreapi.py` (`extract_auth_vars`, `project_from_auth_vars`,
//! `decode_and_decompress_data`, `safely_load_json_string`, `validate_data`, `ensure_has_ip`)
//! and `sentry/utils/auth.py` (`parse_auth_header`).
//!
//! What Sentry checks only when it saves (the origin against the project's allowed origins,
//! rate limits, the rest of `validate_data`, which mostly trims and discards) is left to Sentry 6
//! at replay, whose answer the replay records.

use std::{collections::HashMap, io::Read, path::Path};

use anyhow::{Context, Result};
use base64::Engine as _;

/// Sentry 6.4.4's `PROTOCOL_VERSIONS`: the replay's target accepts only these.
pub const PROTOCOL_VERSIONS: [&str; 4] = ["2.0", "3", "4", "5"];

/// Sentry's 1x1 GIF, the answer to a GET store request (`api.py` `PIXEL`).
pub const PIXEL: &[u8] =
    b"GIF89a\x01\x00\x01\x00\x00\xff\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x00;";

/// The headers Sentry's store view reads, kept in the spool and sent again at replay.
pub const KEPT_HEADERS: [&str; 9] = [
    "x-sentry-auth",
    "authorization",
    "content-type",
    "content-encoding",
    "user-agent",
    "origin",
    "referer",
    "x-forwarded-for",
    "x-real-ip",
];

/// The source db's projects and DSN keys: who may store events, as Sentry 6 will see them
/// after the migration (the keys are migrated unchanged).
#[derive(Debug, Default, Clone)]
pub struct Keys {
    /// public key → (secret key, project id)
    keys: HashMap<String, (String, i64)>,
    /// project id → slug
    projects: HashMap<i64, Option<String>>,
}

impl Keys {
    pub fn new(
        projects: impl IntoIterator<Item = (i64, Option<String>)>,
        keys: impl IntoIterator<Item = (String, String, i64)>,
    ) -> Keys {
        Keys {
            projects: projects.into_iter().collect(),
            keys: keys
                .into_iter()
                .map(|(public, secret, project)| (public, (secret, project)))
                .collect(),
        }
    }

    /// `sentry_project` and `sentry_projectkey` of the Sentry 4 SQLite db (only read).
    pub fn from_sqlite(path: &Path) -> Result<Keys> {
        let conn = crate::sqlite::open_read_only(path)?;
        let read = || -> rusqlite::Result<Keys> {
            let projects = conn
                .prepare("SELECT id, slug FROM sentry_project")?
                .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let keys = conn
                .prepare(
                    "SELECT public_key, secret_key, project_id FROM sentry_projectkey \
                     WHERE public_key IS NOT NULL AND project_id IS NOT NULL",
                )?
                .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(Keys::new(projects, keys))
        };
        read().with_context(|| {
            format!(
                "cannot read the projects and DSN keys of {} (sentry_project, sentry_projectkey): \
                 is it a Sentry 4 db? Pass it with --sqlite PATH",
                path.display()
            )
        })
    }

    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// `APIView._get_project_from_id`: digits are an id, anything else a slug.
    fn project(&self, id_or_slug: &str) -> Option<i64> {
        if !id_or_slug.is_empty() && id_or_slug.bytes().all(|b| b.is_ascii_digit()) {
            let id = id_or_slug.parse().ok()?;
            return self.projects.contains_key(&id).then_some(id);
        }
        let mut found = self
            .projects
            .iter()
            .filter(|(_, slug)| slug.as_deref() == Some(id_or_slug));
        match (found.next(), found.next()) {
            (Some((id, _)), None) => Some(*id),
            _ => None,
        }
    }
}

/// A store request as the endpoint received it.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// The raw query string, without `?`.
    pub query: String,
    /// Header names lower-case.
    pub headers: Vec<(String, String)>,
    pub remote_addr: String,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    fn query_pairs(&self) -> Vec<(String, String)> {
        form_urlencoded::parse(self.query.as_bytes())
            .into_owned()
            .collect()
    }
}

/// What the endpoint does with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Spool it, then answer 200 with the event id.
    Hold(Event),
    /// Answer without holding (Sentry answers these without storing anything either).
    Answer(Answer),
}

/// An HTTP answer: status, content type, body, extra headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    pub headers: Vec<(&'static str, String)>,
}

impl Answer {
    fn text(status: u16, message: impl Into<String>) -> Answer {
        let message = message.into();
        let mut headers = Vec::new();
        if status != 200 {
            // `APIView.dispatch`: "easier to inspect the headers" (control characters, which
            // a client can put into a message, cannot go into a header).
            let error = message
                .chars()
                .take(200)
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            headers.push(("x-sentry-error", error));
        }
        Answer {
            status,
            content_type: "text/plain",
            body: message.into_bytes(),
            headers,
        }
    }

    /// With the CORS headers `APIView.dispatch` adds when the request has an origin.
    fn with_origin(mut self, origin: Option<&str>) -> Answer {
        if let Some(origin) = origin {
            let allow = if self.status == 200 { origin } else { "*" };
            self.headers
                .push(("access-control-allow-origin", allow.to_string()));
            self.headers.push((
                "access-control-allow-headers",
                "X-Sentry-Auth, X-Requested-With, Origin, Accept, Content-Type, Authentication"
                    .to_string(),
            ));
            self.headers
                .push(("access-control-allow-methods", "GET, POST, OPTIONS".into()));
        }
        self
    }
}

/// A request to hold: its event id (the client's, or one made as Sentry makes it) and project,
/// and the JSON to send at replay when the client's own body cannot be sent as it came.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub event_id: String,
    pub project: i64,
    /// What was added to the event so that Sentry 6, later, stores what it would have stored
    /// now: `event_id` (missing or over 32 characters), `timestamp` (missing: Sentry would use
    /// the time it received it), `ip_address` (a browser client's address, which Sentry adds
    /// from the connection). Empty: the request is replayed byte for byte.
    pub added: Vec<&'static str>,
    /// The event as JSON when anything was added.
    pub replay_json: Option<Vec<u8>>,
    /// The answer the client gets once the request is on disk.
    pub answer: Answer,
}

/// Sentry's `parse_auth_header`: `Sentry k=v, k=v`; a part without exactly one `=` is an error.
fn parse_auth_header(header: &str) -> Option<HashMap<String, String>> {
    let (_, rest) = header.split_once(' ')?;
    rest.split(',')
        .map(|part| {
            let mut kv = part.trim().split('=');
            match (kv.next(), kv.next(), kv.next()) {
                (Some(k), Some(v), None) => Some((k.to_string(), v.to_string())),
                _ => None,
            }
        })
        .collect()
}

/// Python 2's `base64.b64decode`: characters outside the alphabet are skipped.
fn b64decode_lenient(data: &[u8]) -> Option<Vec<u8>> {
    let kept: Vec<u8> = data
        .iter()
        .copied()
        .filter(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
        .collect();
    base64::engine::general_purpose::STANDARD.decode(kept).ok()
}

/// Sentry's `decode_and_decompress_data` (base64, then zlib if it is zlib), with the decoded
/// size bounded: `Err(true)` over `limit`, `Err(false)` undecodable.
fn decode_body(body: &[u8], limit: usize) -> Result<Vec<u8>, bool> {
    let decoded = b64decode_lenient(body).ok_or(false)?;
    let mut out = Vec::new();
    let mut zlib = flate2::read::ZlibDecoder::new(&decoded[..]).take(limit as u64 + 1);
    match zlib.read_to_end(&mut out) {
        Ok(_) if out.len() > limit => Err(true),
        Ok(_) => Ok(out),
        Err(_) => Ok(decoded),
    }
}

/// The limits the endpoint holds requests to.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The largest event, decoded (a zlib body may not expand beyond it).
    pub max_event_bytes: usize,
}

/// Sentry 6's decisions, in its order, for one request received at `received` (UTC, as
/// raven writes `timestamp`: `YYYY-MM-DDTHH:MM:SS.ffffff`); `new_event_id` makes an id as
/// `uuid.uuid4().hex` does, when the event has none.
pub fn judge(
    keys: &Keys,
    request: &Request,
    limits: Limits,
    received: &str,
    new_event_id: impl FnOnce() -> String,
) -> Verdict {
    let refuse = |status, message: String| Verdict::Answer(Answer::text(status, message));
    // urls.py: ^api/store/$ and ^api/(?P<project_id>[\w_-]+)/store/$; nothing else is served.
    let path_project = match store_path(&request.path) {
        Some(project) => project,
        None => return refuse(404, "Not found: sentry-migrate hold-events serves only the store endpoints (/api/store/, /api/<project>/store/)".into()),
    };
    if !matches!(request.method.as_str(), "GET" | "POST" | "OPTIONS") {
        let mut answer = Answer::text(405, "Method not allowed");
        answer.headers.push(("allow", "GET, POST, OPTIONS".into()));
        return Verdict::Answer(answer);
    }
    let project = match path_project {
        None => None,
        Some(id) => match keys.project(id) {
            Some(project) => Some(project),
            None => return refuse(400, format!("Invalid project_id: u'{id}'")),
        },
    };
    // The origin: Origin, else Referer.
    let origin = request.header("origin").or(request.header("referer"));
    let done = |answer: Answer| Verdict::Answer(answer.with_origin(origin));
    if origin.is_some() && project.is_none() {
        // Sentry answers 200 and stores nothing.
        return done(Answer::text(
            200,
            "Your client must be upgraded for CORS support.",
        ));
    }
    if request.method == "OPTIONS" {
        let mut answer = Answer::text(200, "");
        answer.headers.push(("allow", "GET, POST, OPTIONS".into()));
        return done(answer);
    }
    let auth_header = [
        request.header("x-sentry-auth"),
        request.header("authorization"),
    ]
    .into_iter()
    .flatten()
    .find(|value| value.starts_with("Sentry"));
    let auth: HashMap<String, String> = match auth_header {
        Some(header) => match parse_auth_header(header) {
            Some(auth) => auth,
            None => return done(Answer::text(400, "Invalid auth header")),
        },
        None => request
            .query_pairs()
            .into_iter()
            .filter(|(key, _)| key.starts_with("sentry_"))
            .collect(),
    };
    if auth.is_empty() {
        return done(Answer::text(
            400,
            "Client/server version mismatch: Unsupported client",
        ));
    }
    let version = auth.get("sentry_version").map_or("1.0", String::as_str);
    if !PROTOCOL_VERSIONS.contains(&version) {
        return done(Answer::text(
            400,
            format!("Client/server version mismatch: Unsupported protocol version ({version})"),
        ));
    }
    let client = auth
        .get("sentry_client")
        .map(String::as_str)
        .or(request.header("user-agent"));
    if client.is_none_or(str::is_empty) {
        return done(Answer::text(
            400,
            "Client request error: Missing client version identifier",
        ));
    }
    let Some((secret, key_project)) = auth.get("sentry_key").and_then(|key| keys.keys.get(key))
    else {
        return done(Answer::text(403, "Invalid api key"));
    };
    if auth
        .get("sentry_secret")
        .is_some_and(|given| given != secret)
    {
        return done(Answer::text(403, "Invalid api key"));
    }
    let project = match project {
        None => *key_project,
        Some(project) if project == *key_project => project,
        Some(_) => return done(Answer::text(400, "Project ID mismatch")),
    };
    // Auth(...).version: int(float(version)); 3 and later need the secret server side.
    if !version.starts_with('2') && origin.is_none() && !auth.contains_key("sentry_secret") {
        return done(Answer::text(
            400,
            "Missing required attribute in authentication header: sentry_secret",
        ));
    }
    let data = if request.method == "GET" {
        request
            .query_pairs()
            .into_iter()
            .find(|(key, _)| key == "sentry_data")
            .map(|(_, value)| value.into_bytes())
            .unwrap_or_default()
    } else {
        request.body.clone()
    };
    let json = if data.starts_with(b"{") {
        data
    } else {
        match decode_body(&data, limits.max_event_bytes) {
            Ok(json) => json,
            Err(true) => {
                return done(Answer::text(
                    413,
                    format!(
                        "Event too large: over {} bytes once decompressed",
                        limits.max_event_bytes
                    ),
                ))
            }
            Err(false) => {
                return done(Answer::text(
                    403,
                    "Bad data decoding request (Error, Incorrect padding)",
                ))
            }
        }
    };
    let mut event = match serde_json::from_slice::<serde_json::Value>(&json) {
        Ok(serde_json::Value::Object(event)) => event,
        Ok(_) => {
            return done(Answer::text(
                400,
                "Bad data: the event is not a JSON object",
            ))
        }
        Err(err) => {
            return done(Answer::text(
                403,
                format!("Bad data reconstructing object (ValueError, {err})"),
            ))
        }
    };
    // validate_data: the project named in the event must be the key's.
    if let Some(named) = event.get("project").filter(|it| !is_falsy(it)) {
        let named = match named {
            serde_json::Value::String(text) => text.clone(),
            other => other.to_string(),
        };
        let slug = keys.projects.get(&project).cloned().flatten();
        if named != project.to_string() && Some(&named) != slug.as_ref() {
            return done(Answer::text(403, "Invalid credentials"));
        }
    }
    if event
        .get("message")
        .is_some_and(|m| !is_falsy(m) && !m.is_string())
    {
        return done(Answer::text(400, "Invalid value for message"));
    }
    let mut added = Vec::new();
    let event_id = match event.get("event_id") {
        Some(serde_json::Value::String(id)) if !id.is_empty() && id.chars().count() <= 32 => {
            id.clone()
        }
        Some(id) if !is_falsy(id) && !id.is_string() => {
            return done(Answer::text(400, "Invalid value for event_id"))
        }
        _ => {
            let id = new_event_id();
            event.insert("event_id".into(), id.clone().into());
            added.push("event_id");
            id
        }
    };
    if !event.contains_key("timestamp") {
        event.insert("timestamp".into(), received.into());
        added.push("timestamp");
    }
    if origin.is_some() && !has_ip(&event) {
        // ensure_has_ip: a browser client's address, from the connection.
        let ip = request
            .remote_addr
            .rsplit_once(':')
            .map_or(request.remote_addr.as_str(), |(host, _)| {
                host.trim_matches(['[', ']'])
            });
        // Sentry has resolved the aliases (`user`) by then: the one the client used gets it.
        let key = if event.contains_key("user") && !event.contains_key("sentry.interfaces.User") {
            "user"
        } else {
            "sentry.interfaces.User"
        };
        let user = event.entry(key).or_insert_with(|| serde_json::json!({}));
        if let Some(user) = user.as_object_mut() {
            user.insert("ip_address".into(), ip.into());
            added.push("ip_address");
        }
    }
    let replay_json =
        (!added.is_empty()).then(|| serde_json::to_vec(&event).expect("a JSON value serializes"));
    let answer = if request.method == "GET" {
        Answer {
            status: 200,
            content_type: "image/gif",
            body: PIXEL.to_vec(),
            headers: vec![("x-sentry-id", event_id.clone())],
        }
    } else {
        Answer {
            status: 200,
            content_type: "application/json",
            body: serde_json::to_vec(&serde_json::json!({ "id": event_id })).expect("json"),
            headers: vec![],
        }
    };
    Verdict::Hold(Event {
        event_id,
        project,
        added,
        replay_json,
        answer: answer.with_origin(origin),
    })
}

/// Python's truth value of a JSON value.
fn is_falsy(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::Null => true,
        serde_json::Value::Bool(b) => !b,
        serde_json::Value::Number(n) => n.as_f64() == Some(0.0),
        serde_json::Value::String(s) => s.is_empty(),
        serde_json::Value::Array(a) => a.is_empty(),
        serde_json::Value::Object(o) => o.is_empty(),
    }
}

/// `ensure_has_ip`'s test, on the interfaces under their names or their aliases
/// (`coreapi.py` `INTERFACE_ALIASES`: `request`, `user`).
fn has_ip(event: &serde_json::Map<String, serde_json::Value>) -> bool {
    let truthy = |v: Option<&serde_json::Value>| v.is_some_and(|v| !is_falsy(v));
    let interface = |name: &str, alias: &str| event.get(name).or(event.get(alias));
    truthy(
        interface("sentry.interfaces.Http", "request")
            .and_then(|http| http.get("env"))
            .and_then(|env| env.get("REMOTE_ADDR")),
    ) || truthy(interface("sentry.interfaces.User", "user").and_then(|user| user.get("ip_address")))
}

/// `Some(None)` for `/api/store/`, `Some(Some(project))` for `/api/<project>/store/` (`[\w-]+`).
pub fn store_path(path: &str) -> Option<Option<&str>> {
    let rest = path.strip_prefix("/api/")?;
    if rest == "store/" {
        return Some(None);
    }
    let project = rest.strip_suffix("/store/")?;
    let word = |c: char| c.is_alphanumeric() || c == '_' || c == '-';
    (!project.is_empty() && project.chars().all(word)).then_some(Some(project))
}

#[cfg(test)]
mod tests;
