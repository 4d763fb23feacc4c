//! The admin server over real HTTP: health, readiness, status, metrics, the
//! bearer-token gate, commands through a test `Control`, dead letters in a
//! real state schema, and `walhook run` refusing an unprotected listen.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use walhook::admin::{
    self, AdminState, BoxFuture, Control, ControlError, RunMode, RunReply, RunRequest,
    StrategyState, StrategyStatus,
};
use walhook::config::Secret;
use walhook::lsn::Lsn;
use walhook::source::{SourceState, SourceStatus};
use walhook::state::StateStore;

use crate::support::{fresh_db, wait_until, Walhook};

const TOKEN: &str = "adm1n-t0ken-for-tests";

/// Records every command it receives.
#[derive(Default)]
struct TestControl {
    calls: Mutex<Vec<String>>,
}

impl TestControl {
    fn log(&self, call: String) {
        self.calls.lock().expect("lock").push(call);
    }
    fn calls(&self) -> Vec<String> {
        self.calls.lock().expect("lock").clone()
    }
}

impl Control for TestControl {
    fn pause<'a>(&'a self, strategy: &'a str) -> BoxFuture<'a, Result<(), ControlError>> {
        Box::pin(async move {
            if strategy != "orders" {
                return Err(ControlError::NotFound(format!("no strategy {strategy}")));
            }
            self.log(format!("pause {strategy}"));
            Ok(())
        })
    }
    fn resume<'a>(&'a self, strategy: &'a str) -> BoxFuture<'a, Result<(), ControlError>> {
        Box::pin(async move {
            self.log(format!("resume {strategy}"));
            Ok(())
        })
    }
    fn start_run<'a>(
        &'a self,
        strategy: &'a str,
        request: RunRequest,
    ) -> BoxFuture<'a, Result<RunReply, ControlError>> {
        Box::pin(async move {
            self.log(format!(
                "run {strategy} {:?} {:?}",
                request.mode, request.limit
            ));
            Ok(match request.mode.unwrap_or(RunMode::Async) {
                RunMode::Sync => RunReply::Completed(json!({ "records": 7 })),
                RunMode::Async => RunReply::Started { id: 41 },
            })
        })
    }
    fn run(&self, id: i64) -> BoxFuture<'_, Result<Value, ControlError>> {
        Box::pin(async move {
            if id == 41 {
                Ok(json!({ "id": 41, "state": "running" }))
            } else {
                Err(ControlError::NotFound(format!("no run {id}")))
            }
        })
    }
    fn replay_dead_letter(&self, id: i64) -> BoxFuture<'_, Result<Value, ControlError>> {
        Box::pin(async move {
            self.log(format!("replay {id}"));
            Ok(json!({ "id": id, "replayed": true }))
        })
    }
}

struct Server {
    base: String,
    source: watch::Sender<SourceStatus>,
    strategies: Arc<Mutex<Vec<StrategyStatus>>>,
    control: Arc<TestControl>,
    shutdown: CancellationToken,
    http: reqwest::Client,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Server {
    async fn start(token: Option<&str>, dead_letters: Option<StateStore>) -> Server {
        let prom = walhook::telemetry::install_recorder().expect("recorder");
        let (source, rx) = watch::channel(SourceStatus::default());
        let strategies = Arc::new(Mutex::new(Vec::<StrategyStatus>::new()));
        let control = Arc::new(TestControl::default());
        let snapshot = strategies.clone();
        let state = AdminState {
            slot: "walhook".into(),
            source: rx,
            strategies: Arc::new(move || snapshot.lock().expect("lock").clone()),
            control: Some(control.clone()),
            dead_letters,
            token: token.map(Secret::new),
            prom,
            console: None,
            slot_watch: None,
            workers: None,
        };
        let shutdown = CancellationToken::new();
        let listener = admin::bind("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("bind the admin address");
        let addr = listener.local_addr().expect("local address");
        tokio::spawn(admin::serve(listener, state, shutdown.clone()));
        let base = format!("http://{addr}");
        Server {
            base,
            source,
            strategies,
            control,
            shutdown,
            http: reqwest::Client::new(),
        }
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("request");
        let status = response.status().as_u16();
        (status, response.text().await.expect("body"))
    }

    /// Sends `method path` with `Authorization: Bearer <bearer>` when given.
    async fn call(&self, method: &str, path: &str, bearer: Option<&str>) -> (u16, String) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = bearer {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        (status, response.text().await.expect("body"))
    }
}

const MUTATING: [(&str, &str); 9] = [
    ("POST", "/strategies/orders/pause"),
    ("POST", "/strategies/orders/resume"),
    ("POST", "/strategies/orders/runs?mode=async"),
    ("GET", "/runs"),
    ("GET", "/runs/41"),
    ("GET", "/dead-letters"),
    ("GET", "/dead-letters/1"),
    ("POST", "/dead-letters/1/replay"),
    ("DELETE", "/dead-letters/1"),
];

#[tokio::test]
async fn health_readiness_status_and_metrics() {
    let server = Server::start(None, None).await;
    assert_eq!(server.get("/healthz").await, (200, "ok\n".to_string()));

    assert_eq!(
        server.get("/readyz").await,
        (503, "connecting\n".to_string())
    );
    server
        .source
        .send_modify(|s| s.state = SourceState::Standby);
    // A healthy standby is ready for the orchestrator; /activez says it
    // does not stream.
    assert_eq!(
        server.get("/readyz").await,
        (200, "ready: standby\n".to_string())
    );
    assert_eq!(server.get("/activez").await, (503, "standby\n".to_string()));
    server.source.send_replace(SourceStatus {
        state: SourceState::Streaming,
        received_lsn: Lsn(0x1_0000_0200),
        acked_lsn: Lsn(0x1_0000_0100),
        server_wal_end: Lsn(0x1_0000_0300),
        last_error: None,
        ..Default::default()
    });
    assert_eq!(server.get("/readyz").await, (200, "ready\n".to_string()));
    assert_eq!(server.get("/activez").await, (200, "active\n".to_string()));

    server
        .strategies
        .lock()
        .expect("lock")
        .push(StrategyStatus {
            name: "orders".into(),
            state: StrategyState::Failing,
            queue_records: 12,
            last_success: None,
            last_error: Some("HTTP 503 from endpoint orders_api".into()),
            attempts: 4,
            in_flight: 1,
            pause_reason: None,
            progress: Default::default(),
            ..Default::default()
        });
    // An endpoint outage degrades a streaming instance; it stays ready and active.
    assert_eq!(
        server.get("/readyz").await,
        (
            200,
            "ready: degraded: strategy orders failing: HTTP 503 from endpoint orders_api\n"
                .to_string()
        )
    );
    assert_eq!(server.get("/activez").await, (200, "active\n".to_string()));

    let (code, body) = server.get("/status").await;
    assert_eq!(code, 200);
    let status: Value = serde_json::from_str(&body).expect("status is JSON");
    assert_eq!(status["slot"], "walhook");
    assert_eq!(status["state"], "streaming");
    assert_eq!(status["acked_lsn"], "1/100");
    assert_eq!(status["received_lsn"], "1/200");
    assert_eq!(status["lag_bytes"], 0x200);
    let orders = &status["strategies"][0];
    assert_eq!(orders["name"], "orders");
    assert_eq!(orders["state"], "failing");
    assert_eq!(orders["queue_records"], 12);
    assert_eq!(orders["attempts"], 4);
    assert_eq!(orders["last_error"], "HTTP 503 from endpoint orders_api");
    assert_eq!(orders["last_success"], Value::Null);

    // The recorder is the process's: a table name no other test's router counts.
    metrics::counter!(walhook::telemetry::EVENTS_TOTAL, "table" => "public.admin_orders", "op" => "insert")
        .increment(3);
    let (code, body) = server.get("/metrics").await;
    assert_eq!(code, 200);
    assert!(
        body.contains("# HELP walhook_events_total "),
        "no HELP for events_total in:\n{body}"
    );
    assert!(
        body.contains("walhook_events_total{table=\"public.admin_orders\",op=\"insert\"} 3"),
        "{body}"
    );
    assert!(body.contains("# HELP walhook_build_info "), "{body}");
}

#[tokio::test]
async fn mutating_endpoints_need_the_token() {
    let server = Server::start(Some(TOKEN), None).await;
    for (method, path) in MUTATING {
        let (code, body) = server.call(method, path, None).await;
        assert_eq!(code, 401, "{method} {path} without a token: {body}");
        let (code, body) = server.call(method, path, Some("wrong-token")).await;
        assert_eq!(code, 401, "{method} {path} with a wrong token: {body}");
        let (code, body) = server.call(method, path, Some(&format!("{TOKEN}x"))).await;
        assert_eq!(code, 401, "{method} {path} with a longer token: {body}");
    }
    assert!(
        server.control.calls().is_empty(),
        "no command may run without the token: {:?}",
        server.control.calls()
    );

    let (code, body) = server
        .call("POST", "/strategies/orders/pause", Some(TOKEN))
        .await;
    assert_eq!(
        (code, body.as_str()),
        (200, r#"{"state":"paused","strategy":"orders"}"#)
    );
    let (code, _) = server
        .call("POST", "/strategies/nope/pause", Some(TOKEN))
        .await;
    assert_eq!(code, 404);
    let (code, _) = server
        .call("POST", "/strategies/orders/resume", Some(TOKEN))
        .await;
    assert_eq!(code, 200);
    let (code, body) = server
        .call(
            "POST",
            "/strategies/orders/runs?mode=async&limit=5",
            Some(TOKEN),
        )
        .await;
    assert_eq!(code, 202, "{body}");
    let started: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(started["id"], 41);
    assert_eq!(started["status_url"], "/runs/41");
    let (code, body) = server
        .call("POST", "/strategies/orders/runs?mode=sync", Some(TOKEN))
        .await;
    assert_eq!((code, body.as_str()), (200, r#"{"records":7}"#));
    let (code, _) = server
        .call(
            "POST",
            "/strategies/orders/runs?mode=sometimes",
            Some(TOKEN),
        )
        .await;
    assert_eq!(code, 400);
    let (code, body) = server.call("GET", "/runs/41", Some(TOKEN)).await;
    assert_eq!(
        (code, body.as_str()),
        (200, r#"{"id":41,"state":"running"}"#)
    );
    let (code, _) = server.call("GET", "/runs/42", Some(TOKEN)).await;
    assert_eq!(code, 404);
    let (code, _) = server
        .call("POST", "/dead-letters/9/replay", Some(TOKEN))
        .await;
    assert_eq!(code, 200);
    // No state schema wired in this server: 503, not a crash.
    let (code, _) = server.call("GET", "/dead-letters", Some(TOKEN)).await;
    assert_eq!(code, 503);

    assert_eq!(
        server.control.calls(),
        vec![
            "pause orders",
            "resume orders",
            "run orders Some(Async) Some(5)",
            "run orders Some(Sync) None",
            "replay 9"
        ]
    );
}

#[tokio::test]
async fn without_a_token_the_api_is_disabled() {
    let server = Server::start(None, None).await;
    for (method, path) in MUTATING {
        let (code, body) = server.call(method, path, Some(TOKEN)).await;
        assert_eq!(code, 403, "{method} {path}");
        assert!(body.contains("disabled: set [admin].token"), "{body}");
    }
    assert!(server.control.calls().is_empty());
}

#[tokio::test]
async fn dead_letters_without_the_state_schema_say_run_setup() {
    let url = fresh_db("ops_admin_noschema").await.url();
    let store = StateStore::connect(&url, "walhook-admin")
        .await
        .expect("connect");
    let server = Server::start(Some(TOKEN), Some(store)).await;
    for path in ["/dead-letters", "/dead-letters/1"] {
        let (code, body) = server.call("GET", path, Some(TOKEN)).await;
        assert_eq!(code, 503, "{path}: {body}");
        assert!(body.contains("run walhook setup"), "{path}: {body}");
    }
}

#[tokio::test]
async fn dead_letters_are_listed_paged_and_deleted() {
    let db = fresh_db("ops_admin_dl").await;
    db.psql(include_str!("../../sql/state.sql")).await;
    db.psql(
        "INSERT INTO walhook.dead_letters (strategy, batch_id, first_lsn, last_lsn, payload, last_status, last_error, attempts)
         SELECT CASE WHEN i % 2 = 0 THEN 'orders' ELSE 'users' END, 'b' || i, '0/16B3748', '0/16B3A10',
                jsonb_build_object('strategy', 'x', 'records', jsonb_build_array(i)), 500, 'HTTP 500', 3
         FROM generate_series(1, 5) AS i",
    )
    .await;
    let store = StateStore::connect(&db.url(), "walhook-admin")
        .await
        .expect("connect");
    let server = Server::start(Some(TOKEN), Some(store)).await;

    let (code, body) = server
        .call("GET", "/dead-letters?strategy=orders&limit=1", Some(TOKEN))
        .await;
    assert_eq!(code, 200, "{body}");
    let page: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(page["dead_letters"].as_array().map(Vec::len), Some(1));
    assert_eq!(page["dead_letters"][0]["id"], 2);
    assert_eq!(page["dead_letters"][0]["batch_id"], "b2");
    assert_eq!(page["dead_letters"][0]["first_lsn"], "0/16B3748");
    assert_eq!(page["dead_letters"][0]["last_status"], 500);
    assert_eq!(page["next_after"], 2);
    let (_, body) = server
        .call(
            "GET",
            "/dead-letters?strategy=orders&after=2&limit=1",
            Some(TOKEN),
        )
        .await;
    let page: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(page["dead_letters"][0]["id"], 4);
    let (_, body) = server
        .call("GET", "/dead-letters?strategy=orders&after=4", Some(TOKEN))
        .await;
    let page: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(page["dead_letters"], json!([]));
    assert_eq!(page["next_after"], Value::Null);

    let (code, body) = server.call("GET", "/dead-letters/3", Some(TOKEN)).await;
    assert_eq!(code, 200);
    let letter: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(letter["payload"]["records"], json!([3]));

    let (code, _) = server.call("DELETE", "/dead-letters/3", Some(TOKEN)).await;
    assert_eq!(code, 200);
    let (code, _) = server.call("DELETE", "/dead-letters/3", Some(TOKEN)).await;
    assert_eq!(code, 404);
    let (code, _) = server.call("GET", "/dead-letters/abc", Some(TOKEN)).await;
    assert_eq!(code, 400);
    let left = db
        .psql("SELECT string_agg(id::text, ',' ORDER BY id) FROM walhook.dead_letters")
        .await;
    assert_eq!(left, "1,2,4,5");

    // The admin connection is ended (as by a database restart): it reconnects.
    // (Only this database's: other tests' walhooks have admin connections too.)
    let ended = db
        .psql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = 'walhook-admin' AND datname = current_database()",
        )
        .await;
    assert_eq!(ended, "t", "one admin connection was ended");
    wait_until(
        Duration::from_secs(10),
        "the dead-letter list to answer again",
        || async { server.call("GET", "/dead-letters", Some(TOKEN)).await.0 == 200 },
    )
    .await;
}

#[tokio::test]
async fn run_refuses_a_public_admin_listen_without_a_token() {
    let out = Walhook::command(&["run", "-c", "config.toml"])
        .config(
            "[source]\nurl = \"postgres://walhook@127.0.0.1:1/db\"\n\n[admin]\nlisten = \"0.0.0.0:9187\"\n",
        )
        .output()
        .await;
    let stderr = &out.stderr;
    assert_eq!(out.code(), Some(2), "{stderr}");
    assert!(stderr.contains("admin.token is not set"), "{stderr}");
    // And the server itself refuses, should a caller skip validation.
    let listener = admin::bind("0.0.0.0:0".parse().expect("addr"))
        .await
        .expect("bind");
    let (_tx, rx) = watch::channel(SourceStatus::default());
    let state = AdminState {
        slot: "walhook".into(),
        source: rx,
        strategies: Arc::new(Vec::new),
        control: None,
        dead_letters: None,
        token: None,
        prom: walhook::telemetry::install_recorder().expect("recorder"),
        console: None,
        slot_watch: None,
        workers: None,
    };
    let result = tokio::time::timeout(
        Duration::from_secs(5),
        admin::serve(listener, state, CancellationToken::new()),
    )
    .await
    .expect("serve returns at once");
    assert!(matches!(result, Err(admin::AdminError::Unprotected(_))));
}

/// The admin server fed by a real source: ready once streaming, metrics and
/// status following the positions the source reports.
#[tokio::test]
async fn readiness_and_metrics_follow_a_real_source() {
    use walhook::decode::SourceEvent;
    use walhook::source::{Source, SourceOptions};

    let db = fresh_db("ops_admin_source").await;
    db.psql("CREATE TABLE t (id int PRIMARY KEY); CREATE PUBLICATION p_admin FOR TABLE t;")
        .await;
    let (source, ack, status) = Source::new(SourceOptions::new(
        db.url(),
        "s_admin",
        vec!["p_admin".into()],
    ));
    let shutdown = CancellationToken::new();
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let source_task = tokio::spawn(source.run(tx, shutdown.clone()));
    // The consumer: acknowledge every transaction at once.
    tokio::spawn(async move {
        while let Some(event) = rx.recv().await {
            if let SourceEvent::Commit { end_lsn, .. } = event {
                ack.ack(end_lsn);
            }
        }
    });
    let prom = walhook::telemetry::install_recorder().expect("recorder");
    let upkeep = walhook::telemetry::spawn_upkeep(prom.clone(), status.clone(), shutdown.clone());
    let state = AdminState {
        slot: "s_admin".into(),
        source: status,
        strategies: Arc::new(Vec::new),
        control: None,
        dead_letters: None,
        token: None,
        prom,
        console: None,
        slot_watch: None,
        workers: None,
    };
    let listener = admin::bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local address");
    tokio::spawn(admin::serve(listener, state, shutdown.clone()));
    let http = reqwest::Client::new();
    let get = |path: &'static str| {
        let http = http.clone();
        async move {
            let response = http
                .get(format!("http://{addr}{path}"))
                .send()
                .await
                .expect("request");
            let code = response.status().as_u16();
            (code, response.text().await.expect("body"))
        }
    };

    wait_until(Duration::from_secs(20), "/readyz to say ready", || async {
        get("/readyz").await == (200, "ready\n".to_string())
    })
    .await;
    db.psql("INSERT INTO t VALUES (1)").await;
    let target: Lsn = db.current_wal_lsn().await;
    wait_until(
        Duration::from_secs(20),
        "/status to show the insert acked",
        || async {
            let (_, body) = get("/status").await;
            let status: Value = serde_json::from_str(&body).expect("json");
            status["acked_lsn"]
                .as_str()
                .and_then(|s| s.parse::<Lsn>().ok())
                .is_some_and(|acked| acked >= target)
        },
    )
    .await;
    let (_, metrics) = get("/metrics").await;
    let gauge = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in:\n{metrics}"))
    };
    assert!(gauge("walhook_acked_lsn") >= target.0 as f64, "{metrics}");
    assert!(
        gauge("walhook_received_lsn") >= target.0 as f64,
        "{metrics}"
    );
    assert_eq!(gauge("walhook_standby"), 0.0);
    assert!(
        metrics.contains("# HELP walhook_replication_lag_bytes "),
        "{metrics}"
    );

    shutdown.cancel();
    source_task
        .await
        .expect("source task")
        .expect("source stops cleanly");
    upkeep.await.expect("upkeep task");
}
