//! A real webhook receiver on 127.0.0.1:0, over HTTP or HTTPS: it records
//! every request (arrival time, path, headers, body) and answers 200 unless
//! told otherwise (N failures, a 429 with Retry-After, a redirect, a slow
//! answer, a random latency and failure rate like a real endpoint's, or a
//! rule over the payload). It counts the requests it is answering at once.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

/// One request as it arrived.
#[derive(Debug, Clone)]
pub(crate) struct Received {
    pub(crate) at: Instant,
    pub(crate) path_and_query: String,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    /// The status this receiver answered.
    pub(crate) answered: u16,
}

impl Received {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("request body is JSON")
    }

    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// `records[].id` of the payload.
    pub(crate) fn record_ids(&self) -> Vec<String> {
        self.json()["records"]
            .as_array()
            .expect("records array")
            .iter()
            .map(|r| r["id"].as_str().expect("record id").to_string())
            .collect()
    }

    /// `records[].new.id` of the payload.
    pub(crate) fn new_ids(&self) -> Vec<i64> {
        self.json()["records"]
            .as_array()
            .expect("records array")
            .iter()
            .map(|r| r["new"]["id"].as_i64().expect("new.id"))
            .collect()
    }
}

/// `records[].new.id` of these requests' payloads, in order.
pub(crate) fn new_ids(requests: &[Received]) -> Vec<i64> {
    requests.iter().flat_map(Received::new_ids).collect()
}

/// A scripted answer.
#[derive(Debug, Clone)]
pub(crate) enum Reply {
    Status(u16),
    /// 429 (or another status) with a `Retry-After` value.
    RetryAfter(u16, String),
    /// 307 to the given path on this receiver.
    Redirect(String),
    /// A status with this body.
    Body(u16, String),
}

/// Decides the status for a payload (`None`: the usual answer).
type Rule = Arc<dyn Fn(&Value) -> Option<u16> + Send + Sync>;

#[derive(Default)]
struct Shared {
    arrivals: AtomicUsize,
    /// Requests being answered now, and the most at once since the last reset.
    in_flight: AtomicUsize,
    peak_in_flight: AtomicUsize,
    /// Arrival numbers (0-based) of the requests being answered now.
    unanswered: Mutex<std::collections::BTreeSet<usize>>,
    /// Random latency (low, high) and failure rate (probability, status).
    latency: Mutex<Option<(Duration, Duration)>>,
    failures: Mutex<Option<(f64, u16)>>,
    rule: Mutex<Option<Rule>>,
    requests: Mutex<Vec<Received>>,
    script: Mutex<VecDeque<Reply>>,
    delay: Mutex<Duration>,
    /// TLS handshakes that failed (HTTPS only).
    tls_failures: Mutex<Vec<String>>,
}

/// The running receiver (stops with the test's runtime).
#[derive(Clone)]
pub(crate) struct Receiver {
    addr: SocketAddr,
    scheme: &'static str,
    shared: Arc<Shared>,
}

impl Receiver {
    /// An HTTP receiver.
    pub(crate) async fn start() -> Receiver {
        Receiver::start_on("127.0.0.1".parse().expect("address")).await
    }

    /// An HTTP receiver on `ip` (another interface than loopback, for a
    /// walhook in a network namespace).
    pub(crate) async fn start_on(ip: std::net::IpAddr) -> Receiver {
        let (tcp, receiver) = Receiver::bind_on("http", ip).await;
        let app = receiver.app();
        tokio::spawn(async move {
            let _ = axum::serve(tcp, app).await;
        });
        receiver
    }

    /// An HTTPS receiver with this server configuration (certificate,
    /// client certificate verification); handshakes that fail are recorded.
    pub(crate) async fn start_tls(config: rustls::ServerConfig) -> Receiver {
        let (tcp, receiver) = Receiver::bind("https").await;
        let listener = TlsListener {
            tcp,
            acceptor: TlsAcceptor::from(Arc::new(config)),
            shared: receiver.shared.clone(),
        };
        let app = receiver.app();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        receiver
    }

    async fn bind(scheme: &'static str) -> (TcpListener, Receiver) {
        Receiver::bind_on(scheme, "127.0.0.1".parse().expect("address")).await
    }

    async fn bind_on(scheme: &'static str, ip: std::net::IpAddr) -> (TcpListener, Receiver) {
        let tcp = TcpListener::bind((ip, 0)).await.expect("bind receiver");
        let addr = tcp.local_addr().expect("receiver address");
        let receiver = Receiver {
            addr,
            scheme,
            shared: Arc::default(),
        };
        (tcp, receiver)
    }

    fn app(&self) -> Router {
        Router::new()
            .fallback(handle)
            .with_state(self.shared.clone())
    }

    /// `http(s)://127.0.0.1:PORT/path`.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}://{}{path}", self.scheme, self.addr)
    }

    /// The next answers, in order (then 200 again).
    pub(crate) fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.shared.script.lock().unwrap().extend(replies);
    }

    /// Answer `status` to the next `n` requests.
    pub(crate) fn fail_next(&self, n: usize, status: u16) {
        self.script(std::iter::repeat_n(Reply::Status(status), n));
    }

    /// Wait this long before answering each request.
    pub(crate) fn set_delay(&self, delay: Duration) {
        *self.shared.delay.lock().unwrap() = delay;
    }

    /// Wait a random time in `[low, high]` before answering each request
    /// (a real endpoint's latency).
    pub(crate) fn set_latency(&self, low: Duration, high: Duration) {
        *self.shared.latency.lock().unwrap() = Some((low, high));
    }

    /// Answer `status` to a random `rate` (0 to 1) of requests; `None` stops.
    pub(crate) fn set_failure_rate(&self, failures: Option<(f64, u16)>) {
        *self.shared.failures.lock().unwrap() = failures;
    }

    /// Answer what `rule` says for a payload (before scripts and random
    /// failures); `None` removes it.
    pub(crate) fn set_rule(&self, rule: Option<Rule>) {
        *self.shared.rule.lock().unwrap() = rule;
    }

    /// Requests being answered now.
    pub(crate) fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::SeqCst)
    }

    /// The most requests answered at once since the last
    /// [`Receiver::reset_peak`] (or the start).
    pub(crate) fn peak_in_flight(&self) -> usize {
        self.shared.peak_in_flight.load(Ordering::SeqCst)
    }

    /// Starts counting the peak again from the requests in flight now.
    pub(crate) fn reset_peak(&self) {
        self.shared
            .peak_in_flight
            .store(self.in_flight(), Ordering::SeqCst);
    }

    /// Whether every one of the first `n` requests to arrive has been
    /// answered (later ones may still be in flight).
    pub(crate) fn answered_first(&self, n: usize) -> bool {
        self.shared
            .unanswered
            .lock()
            .unwrap()
            .first()
            .is_none_or(|&oldest| oldest >= n)
    }

    /// Requests that have arrived, answered or not yet.
    pub(crate) fn arrivals(&self) -> usize {
        self.shared.arrivals.load(Ordering::SeqCst)
    }

    /// Requests answered so far, in arrival order.
    pub(crate) fn requests(&self) -> Vec<Received> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// Requests answered 2xx.
    pub(crate) fn accepted(&self) -> Vec<Received> {
        self.requests()
            .into_iter()
            .filter(|r| (200..300).contains(&r.answered))
            .collect()
    }

    /// Record ids of all accepted requests, in arrival order.
    pub(crate) fn accepted_record_ids(&self) -> Vec<String> {
        self.accepted()
            .iter()
            .flat_map(|r| r.record_ids())
            .collect()
    }

    /// `records[]` of every accepted request, in arrival order.
    pub(crate) fn accepted_records(&self) -> Vec<Value> {
        self.accepted()
            .iter()
            .flat_map(|r| r.json()["records"].as_array().cloned().unwrap_or_default())
            .collect()
    }

    /// Why TLS handshakes failed, in order.
    pub(crate) fn tls_failures(&self) -> Vec<String> {
        self.shared.tls_failures.lock().unwrap().clone()
    }

    pub(crate) async fn wait_requests(&self, n: usize, timeout: Duration) {
        let what = format!("{n} requests");
        super::wait_until(timeout, &what, || async { self.requests().len() >= n }).await;
    }

    pub(crate) async fn wait_accepted_records(&self, n: usize, timeout: Duration) {
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
    let arrival = shared.arrivals.fetch_add(1, Ordering::SeqCst);
    shared.unanswered.lock().unwrap().insert(arrival);
    let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    shared.peak_in_flight.fetch_max(now, Ordering::SeqCst);
    let mut delay = *shared.delay.lock().unwrap();
    if let Some((low, high)) = *shared.latency.lock().unwrap() {
        delay += rand::random_range(low..=high);
    }
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let ruled = match shared.rule.lock().unwrap().clone() {
        Some(rule) => serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| rule(&v)),
        None => None,
    };
    let scripted = || shared.script.lock().unwrap().pop_front();
    let random = || match *shared.failures.lock().unwrap() {
        Some((rate, status)) if rand::random_bool(rate.clamp(0.0, 1.0)) => Some(status),
        _ => None,
    };
    let reply = match ruled {
        Some(status) => Reply::Status(status),
        None => scripted()
            .or_else(|| random().map(Reply::Status))
            .unwrap_or(Reply::Status(200)),
    };
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
        Reply::Body(s, text) => (s, (StatusCode::from_u16(s).unwrap(), text).into_response()),
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
    shared.unanswered.lock().unwrap().remove(&arrival);
    shared.in_flight.fetch_sub(1, Ordering::SeqCst);
    response
}

/// A TLS listener for axum: handshakes in `accept`, records failures.
struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                continue;
            };
            match self.acceptor.accept(tcp).await {
                Ok(tls) => return (tls, addr),
                Err(err) => self
                    .shared
                    .tls_failures
                    .lock()
                    .unwrap()
                    .push(err.to_string()),
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}
