//! `store`'s decisions, request by request, against Sentry 6.4.4's.

use base64::Engine as _;

use super::{judge, Keys, Limits, Request, Verdict};

fn keys() -> Keys {
    Keys::new(
        [(1, Some("web".to_string())), (2, Some("api".to_string()))],
        [
            ("pub1".to_string(), "sec1".to_string(), 1),
            ("pub2".to_string(), "sec2".to_string(), 2),
        ],
    )
}

fn post(path: &str, auth: &str, body: &[u8]) -> Request {
    Request {
        method: "POST".into(),
        path: path.into(),
        headers: vec![("x-sentry-auth".into(), auth.into())],
        remote_addr: "10.0.0.7:5555".into(),
        body: body.to_vec(),
        ..Request::default()
    }
}

const LIMITS: Limits = Limits {
    max_event_bytes: 1 << 20,
};

fn verdict(request: &Request) -> Verdict {
    judge(
        &keys(),
        request,
        LIMITS,
        "2026-12-02T04:00:00.000000",
        || "f".repeat(32),
    )
}

fn status(request: &Request) -> u16 {
    match verdict(request) {
        Verdict::Hold(event) => event.answer.status,
        Verdict::Answer(answer) => answer.status,
    }
}

const V2: &str = "Sentry sentry_version=2.0, sentry_client=raven-python/2.0.5, sentry_key=pub1, sentry_timestamp=1, sentry_signature=x";
const V4: &str = "Sentry sentry_version=4, sentry_client=raven-python/4.0.4, sentry_key=pub2, sentry_secret=sec2, sentry_timestamp=1";

#[test]
fn a_raven_2_event_is_held_byte_for_byte() {
    let body = br#"{"event_id": "abc", "message": "m", "timestamp": "2026-01-01T00:00:00"}"#;
    let Verdict::Hold(event) = verdict(&post("/api/store/", V2, body)) else {
        panic!("not held")
    };
    assert_eq!((event.event_id.as_str(), event.project), ("abc", 1));
    assert!(event.added.is_empty() && event.replay_json.is_none());
    assert_eq!(event.answer.body, br#"{"id":"abc"}"#);
}

#[test]
fn a_zlib_base64_body_is_decoded_and_a_missing_id_and_time_added() {
    use std::io::Write;
    let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    zlib.write_all(br#"{"message": "m", "project": "api"}"#)
        .unwrap();
    let body = base64::engine::general_purpose::STANDARD.encode(zlib.finish().unwrap());
    let Verdict::Hold(event) = verdict(&post("/api/2/store/", V4, body.as_bytes())) else {
        panic!("not held")
    };
    assert_eq!(event.event_id, "f".repeat(32));
    assert_eq!(event.added, ["event_id", "timestamp"]);
    let json: serde_json::Value =
        serde_json::from_slice(event.replay_json.as_deref().unwrap()).unwrap();
    assert_eq!(json["timestamp"], "2026-12-02T04:00:00.000000");
    assert_eq!(json["event_id"], "f".repeat(32));
    assert_eq!(json["message"], "m");
}

#[test]
fn keys_projects_and_versions_are_refused_as_sentry_6_refuses_them() {
    let body = br#"{"message": "m"}"#;
    let wrong_key = V2.replace("pub1", "nope");
    let wrong_secret = V4.replace("sec2", "bad");
    let no_secret = V4.replace(", sentry_secret=sec2", "");
    let v1 = V2.replace("2.0", "1.0");
    for (path, auth, want) in [
        ("/api/store/", wrong_key.as_str(), 403),
        ("/api/store/", wrong_secret.as_str(), 403),
        ("/api/store/", no_secret.as_str(), 400),
        ("/api/store/", v1.as_str(), 400),
        ("/api/store/", "Sentry broken", 400),
        ("/api/store/", "Sentry a=b=c", 400),
        ("/api/2/store/", V2, 400),   // the key is project 1's
        ("/api/99/store/", V2, 400),  // no such project
        ("/api/web/store/", V2, 200), // a slug
        ("/api/1/store/", V2, 200),
    ] {
        assert_eq!(status(&post(path, auth, body)), want, "{path} {auth}");
    }
    let mut no_auth = post("/api/store/", V2, body);
    no_auth.headers.clear();
    assert_eq!(status(&no_auth), 400);
    let mut in_query = no_auth.clone();
    in_query.query = "sentry_version=2.0&sentry_client=x&sentry_key=pub1".into();
    assert_eq!(status(&in_query), 200);
}

#[test]
fn garbage_bodies_and_other_paths_are_answered_and_not_held() {
    for (body, want) in [
        (&b"not base64 at all!"[..], 403),
        (b"{not json", 403),
        (b"[1, 2]", 403), // base64 of nothing useful
        (br#"{"message": 5}"#, 400),
        (br#"{"message": "m", "project": "3"}"#, 403),
        (br#"{"message": "m", "event_id": 7}"#, 400),
    ] {
        assert_eq!(
            status(&post("/api/store/", V2, body)),
            want,
            "{}",
            String::from_utf8_lossy(body)
        );
    }
    for path in ["/", "/api/", "/api/1/store", "/admin/", "/api/a b/store/"] {
        assert_eq!(status(&post(path, V2, b"{}")), 404, "{path}");
    }
    let mut put = post("/api/store/", V2, b"{}");
    put.method = "PUT".into();
    assert_eq!(status(&put), 405);
}

#[test]
fn a_zlib_bomb_is_refused_by_its_decoded_size() {
    use std::io::Write;
    let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    zlib.write_all(&vec![b' '; 2 << 20]).unwrap();
    let body = base64::engine::general_purpose::STANDARD.encode(zlib.finish().unwrap());
    assert_eq!(status(&post("/api/store/", V2, body.as_bytes())), 413);
}

#[test]
fn a_browser_get_is_held_with_its_address_and_answered_with_the_pixel() {
    let request = Request {
        method: "GET".into(),
        path: "/api/1/store/".into(),
        query: "sentry_version=4&sentry_client=raven-js&sentry_key=pub1&sentry_data=%7B%22message%22%3A%22m%22%2C%22event_id%22%3A%22e1%22%2C%22timestamp%22%3A%222026-01-01T00%3A00%3A00%22%7D".into(),
        headers: vec![("origin".into(), "http://app.example".into())],
        remote_addr: "[::1]:4000".into(),
        body: vec![],
    };
    let Verdict::Hold(event) = verdict(&request) else {
        panic!("not held")
    };
    assert_eq!(event.answer.content_type, "image/gif");
    assert_eq!(event.added, ["ip_address"]);
    let json: serde_json::Value =
        serde_json::from_slice(event.replay_json.as_deref().unwrap()).unwrap();
    assert_eq!(json["sentry.interfaces.User"]["ip_address"], "::1");
    assert!(event
        .answer
        .headers
        .contains(&("access-control-allow-origin", "http://app.example".into())));
    // A client's `user` alias gets the address, not a second User interface.
    let mut aliased = request.clone();
    aliased.query = aliased.query.replace(
        "%7B%22message",
        "%7B%22user%22%3A%7B%22id%22%3A7%7D%2C%22message",
    );
    let Verdict::Hold(event) = verdict(&aliased) else {
        panic!("not held")
    };
    let json: serde_json::Value =
        serde_json::from_slice(event.replay_json.as_deref().unwrap()).unwrap();
    assert_eq!(
        json["user"],
        serde_json::json!({"id": 7, "ip_address": "::1"})
    );
    assert!(json.get("sentry.interfaces.User").is_none());
    // A newline in what comes back in a header is not a header.
    let mut bad_version = request.clone();
    bad_version.query = "sentry_version=%0Aevil&sentry_key=pub1".into();
    let Verdict::Answer(answer) = verdict(&bad_version) else {
        panic!("held")
    };
    assert!(
        answer.headers.iter().all(|(_, v)| !v.contains('\n')),
        "{answer:?}"
    );
    // Without a project in the path, Sentry stores nothing and says so with a 200.
    let mut legacy = request.clone();
    legacy.path = "/api/store/".into();
    assert!(matches!(verdict(&legacy), Verdict::Answer(a) if a.status == 200));
}
