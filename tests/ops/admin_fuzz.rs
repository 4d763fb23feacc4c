//! Hostile input to every path and query parameter of every admin route,
//! with and without a valid token, against a running `walhook run`: each
//! answer is 4xx, never 5xx, nothing is recorded, and walhook keeps
//! streaming. Table-driven: each parameter gets the malformed values of its
//! kind (NUL bytes, over-long, not a number, out of range, bad syntax).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::receiver::new_ids;
use crate::support::{free_port, fresh_db, wait_until, Receiver, Walhook, WAIT};

const TOKEN: &str = "fuzz-admin-token-5678";

/// What a path segment or a query value may be sent as (percent-encoded).
const TEXT: &[&str] = &["%00", "items%00", "%00items", "a%00b%00c"];
const PATH_ONLY: &[&str] = &["%FF%FE", "%C0%AF"];
const NUMBER: &[&str] = &[
    "%00",
    "1%00",
    "-1",
    "9223372036854775808",
    "-9223372036854775809",
    "99999999999999999999999999",
    "1e9",
    "0x10",
    "1.5",
    "..",
    "%2e%2e",
    "abc",
    "%20",
];
const FILTER: &[&str] = &[
    "%00",
    "row.id%00%3D%3D1",
    "row.id%20%3D%3D",
    "((((",
    "'%3B%20DROP%20TABLE%20walhook.runs%3B--",
    "row.no_such_column%20%3D%3D%201",
    "new.no_such_column",
];

fn long(n: usize) -> String {
    "x".repeat(n)
}

struct Case {
    method: reqwest::Method,
    path: String,
}

/// Every route with one parameter made hostile, the others valid.
fn cases() -> Vec<Case> {
    use reqwest::Method;
    let mut cases = Vec::new();
    let mut add = |method: Method, path: String| cases.push(Case { method, path });
    let over_long = long(5000);
    let names: Vec<String> = TEXT
        .iter()
        .chain(PATH_ONLY)
        .map(|s| s.to_string())
        .chain([over_long.clone()])
        .collect();
    for name in &names {
        for action in ["pause", "resume", "retry", "runs?mode=async"] {
            add(Method::POST, format!("/strategies/{name}/{action}"));
        }
    }
    let ids: Vec<String> = NUMBER
        .iter()
        .chain(PATH_ONLY)
        .map(|s| s.to_string())
        .chain([long(5000)])
        .collect();
    for id in &ids {
        add(Method::GET, format!("/runs/{id}"));
        add(Method::DELETE, format!("/runs/{id}"));
        add(Method::GET, format!("/dead-letters/{id}"));
        add(Method::DELETE, format!("/dead-letters/{id}"));
        add(Method::POST, format!("/dead-letters/{id}/replay"));
        add(Method::GET, format!("/dead-letters?after={id}"));
        add(Method::GET, format!("/dead-letters?limit={id}"));
        add(
            Method::POST,
            format!("/strategies/items/runs?mode=async&limit={id}"),
        );
        add(Method::POST, format!("/strategies/items/runs?mode={id}"));
    }
    for bad in ["0", "1001", "-5"] {
        add(Method::GET, format!("/dead-letters?limit={bad}"));
    }
    for strategy in TEXT.iter().map(|s| s.to_string()).chain([long(5000)]) {
        add(Method::GET, format!("/dead-letters?strategy={strategy}"));
        add(
            Method::GET,
            format!("/dead-letters?strategy={strategy}&limit=5"),
        );
    }
    for filter in FILTER.iter().map(|s| s.to_string()).chain([long(20_000)]) {
        add(
            Method::POST,
            format!("/strategies/items/runs?mode=async&filter={filter}"),
        );
        add(
            Method::POST,
            format!("/strategies/items/runs?mode=sync&filter={filter}"),
        );
    }
    cases
}

/// Authorization headers that are not the token.
fn bad_tokens() -> Vec<Option<String>> {
    vec![
        None,
        Some("Bearer wrong".into()),
        Some(format!("Bearer {TOKEN}x")),
        Some(format!("Bearer {}", long(16 * 1024))),
        Some(format!("Basic {TOKEN}")),
        Some("Bearer ".into()),
        Some(TOKEN.into()),
    ]
}

/// The request's answer status; a dropped connection counts as a refusal
/// only when the server answered nothing because the request was too big.
async fn status(http: &reqwest::Client, port: u16, case: &Case, auth: Option<&str>) -> u16 {
    let mut request = http.request(
        case.method.clone(),
        format!("http://127.0.0.1:{port}{}", case.path),
    );
    if let Some(auth) = auth {
        request = request.header(reqwest::header::AUTHORIZATION, auth);
    }
    match request.send().await {
        Ok(response) => response.status().as_u16(),
        Err(err) => panic!(
            "{} {}: no answer: {}",
            case.method,
            &case.path[..case.path.len().min(120)],
            err.without_url()
        ),
    }
}

/// Raw bytes a client library would not send.
async fn raw(port: u16, request: &[u8]) -> String {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    stream.write_all(request).await.expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_admin_requests_are_refused_with_4xx_and_streaming_goes_on() {
    let db = fresh_db("ops_fuzz").await;
    db.psql("CREATE TABLE items (id int PRIMARY KEY, note text)")
        .await;
    let receiver = Receiver::start().await;
    let admin = free_port();
    let config = format!(
        "[source]\nurl = \"{}\"\nslot = \"ops_fuzz\"\npublication = \"ops_fuzz\"\n\n\
         [admin]\nlisten = \"127.0.0.1:{admin}\"\ntoken = \"{TOKEN}\"\n\n\
         [endpoints.hook]\nurl = \"{}\"\n\n\
         [[strategies]]\nname = \"items\"\ntable = \"items\"\nendpoint = \"hook\"\n\
         on_insert = \"true\"\nlinger = \"10ms\"\non_demand = {{ sync = true, async = true }}\n",
        db.url(),
        receiver.url("/hook"),
    );
    let mut walhook = Walhook::run(&config).spawn();
    walhook.wait_streaming(&db, "ops_fuzz").await;
    db.psql("INSERT INTO items VALUES (1, 'before')").await;
    receiver.wait_accepted_records(1, WAIT).await;

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let valid = format!("Bearer {TOKEN}");
    let mut wrong = Vec::new();
    let cases = cases();
    for case in &cases {
        let code = status(&http, admin, case, Some(&valid)).await;
        if !(400..500).contains(&code) {
            wrong.push(format!(
                "{code} {} {} (valid token)",
                case.method,
                &case.path[..case.path.len().min(120)]
            ));
        }
        for auth in bad_tokens() {
            let code = status(&http, admin, case, auth.as_deref()).await;
            if !(400..500).contains(&code) {
                wrong.push(format!(
                    "{code} {} {} ({auth:?})",
                    case.method,
                    &case.path[..case.path.len().min(120)]
                ));
            }
        }
    }
    // Bytes no client library sends: a NUL in the request line, a broken
    // chunked body.
    for request in [
        format!("GET /dead-letters?strategy=\0 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"),
        format!("GET /runs/\01 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"),
        "POST /strategies/items/runs?mode=async HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nZZZ\r\nnot a chunk\r\n\r\n".to_string(),
        // A 1 MB query string, past what the server reads.
        format!("GET /dead-letters?strategy={} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n", long(1 << 20)),
    ] {
        let answer = raw(admin, request.as_bytes()).await;
        let code: u16 = answer
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        if !(400..500).contains(&code) {
            wrong.push(format!("{code} for raw {:?}: {answer:?}", &request[..request.len().min(120)]));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} requests not refused with 4xx:\n{}",
        wrong.len(),
        cases.len() * (1 + bad_tokens().len()) + 4,
        wrong.join("\n")
    );

    // Nothing was recorded or changed, and walhook still streams.
    assert_eq!(
        db.psql("SELECT count(*) FROM walhook.runs").await.trim(),
        "0"
    );
    db.psql("INSERT INTO items VALUES (2, 'after')").await;
    wait_until(WAIT, "the row inserted after the requests", || async {
        new_ids(&receiver.accepted()).contains(&2)
    })
    .await;
    assert!(walhook.is_running());
    let stderr = walhook.stop().await;
    assert!(!stderr.contains("panicked"), "{stderr}");
}
