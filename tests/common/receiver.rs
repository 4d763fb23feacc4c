//! A real HTTP webhook receiver on 127.0.0.1:0 for integration tests: it
//! records every request (arrival time, path, headers, body) and answers
//! 200 unless told otherwise (N failures, a 429 with Retry-After, a
//! redirect, a slow answer).
#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;

/// One request as it arrived.
#[derive(Debug, Clone)]
pub struct Received {
    pub at: Instant,
    pub path_and_query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The status this receiver answered.
    pub answered: u16,
}

impl Received {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("request body is JSON")
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// `records[].id` of the payload.
    pub fn record_ids(&self) -> Vec<String> {
        self.json()["records"]
            .as_array()
            .expect("records array")
            .iter()
            .map(|r| r["id"].as_str().expect("record id").to_string())
            .collect()
    }
}

/// A scripted answer.
#[derive(Debug, Clone)]
pub enum Reply {
    Status(u16),
    /// 429 (or another status) with a `Retry-After` value.
    RetryAfter(u16, String),
    /// 307 to the given path on this receiver.
    Redirect(String),
}

#[derive(Default)]
struct Shared {
    arrivals: std::sync::atomic::AtomicUsize,
    requests: Mutex<Vec<Received>>,
    script: Mutex<VecDeque<Reply>>,
    delay: Mutex<Duration>,
}

/// The running receiver (stops with the test's runtime).
#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let shared = Arc::new(Shared::default());
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let addr = listener.local_addr().expect("receiver address");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver { addr, shared }
    }

    /// `http://127.0.0.1:PORT/path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The next answers, in order (then 200 again).
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.shared.script.lock().unwrap().extend(replies);
    }

    /// Answer `status` to the next `n` requests.
    pub fn fail_next(&self, n: usize, status: u16) {
        self.script(std::iter::repeat_n(Reply::Status(status), n));
    }

    /// Wait this long before answering each request.
    pub fn set_delay(&self, delay: Duration) {
        *self.shared.delay.lock().unwrap() = delay;
    }

    /// Requests that have arrived, answered or not yet.
    pub fn arrivals(&self) -> usize {
        self.shared
            .arrivals
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn requests(&self) -> Vec<Received> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// Requests answered 2xx.
    pub fn accepted(&self) -> Vec<Received> {
        self.requests()
            .into_iter()
            .filter(|r| (200..300).contains(&r.answered))
            .collect()
    }

    /// Record ids of all accepted requests, in arrival order.
    pub fn accepted_record_ids(&self) -> Vec<String> {
        self.accepted()
            .iter()
            .flat_map(|r| r.record_ids())
            .collect()
    }

    pub async fn wait_requests(&self, n: usize, timeout: Duration) {
        let what = format!("{n} requests");
        super::wait_until(timeout, &what, || async { self.requests().len() >= n }).await;
    }

    pub async fn wait_accepted_records(&self, n: usize, timeout: Duration) {
        let what = format!("{n} accepted records");
        super::wait_until(timeout, &what, || async {
            self.accepted_record_ids().len() >= n
        })
        .await;
    }
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let at = Instant::now();
    shared
        .arrivals
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let delay = *shared.delay.lock().unwrap();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let reply = shared
        .script
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or(Reply::Status(200));
    let (status, response) = match reply {
        Reply::Status(s) => (s, StatusCode::from_u16(s).unwrap().into_response()),
        Reply::RetryAfter(s, value) => {
            let mut r = StatusCode::from_u16(s).unwrap().into_response();
            r.headers_mut()
                .insert("retry-after", HeaderValue::from_str(&value).unwrap());
            (s, r)
        }
        Reply::Redirect(path) => {
            let mut r = StatusCode::TEMPORARY_REDIRECT.into_response();
            r.headers_mut()
                .insert("location", HeaderValue::from_str(&path).unwrap());
            (307, r)
        }
    };
    shared.requests.lock().unwrap().push(Received {
        at,
        path_and_query: uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        headers,
        body,
        answered: status,
    });
    response
}
