//! Failed attempts: backoff, Retry-After, exhaustion (block, dead_letter),
//! 401 with fresh credentials, and shutdown with a batch in flight. Real
//! HTTP receiver; the checkpoint test streams from the real PostgreSQL.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderValue, AUTHORIZATION};
use walhook::config::OnExhausted;
use walhook::delivery::{Attempt, BoxFuture, Prepare, PrepareError};
use walhook::delivery::{DeliveryState, Endpoint, StrategyWorker, WorkerOptions};
use walhook::lsn::Lsn;
use walhook::state::StateStore;

use super::{endpoint_config, fast_retry, rec, Pipeline, Setup};
use crate::support::{fresh_db, wait_until, Receiver, Reply, WAIT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_failures_back_off_then_deliver_without_loss_or_early_ack() {
    let rx = Receiver::start().await;
    rx.fail_next(5, 500);
    let p = Pipeline::start("dlv_retry", Setup::default(), &rx.url("/hook")).await;
    p.db.psql("INSERT INTO items VALUES (1, 'a'), (2, 'b'), (3, 'c')")
        .await;

    // While the receiver fails, the slot must not pass the batch.
    rx.wait_requests(1, WAIT).await;
    let commit_lsn: Lsn = rx.requests()[0].json()["batch"]["last_lsn"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let mut saw_retrying = false;
    loop {
        // Read the slot first: if no 2xx has been answered after that read,
        // the batch was undelivered when Postgres reported the position.
        let confirmed = p.db.confirmed_flush(&p.slot).await.expect("slot");
        if !rx.accepted().is_empty() {
            break;
        }
        assert!(
            confirmed <= commit_lsn,
            "confirmed_flush_lsn {confirmed} passed the undelivered batch at {commit_lsn}"
        );
        let status = p.worker.status.snapshot();
        if status.state == DeliveryState::Retrying {
            saw_retrying = true;
            let error = status.last_error.clone().unwrap_or_default();
            assert!(
                error.starts_with("endpoint test (127.0.0.1:")
                    && error.ends_with("): HTTP 500 Internal Server Error"),
                "{error}"
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(saw_retrying, "/status showed the retries");

    let requests = rx.requests();
    assert_eq!(requests.len(), 6, "5 failures, then the success");
    let ids: Vec<&str> = requests
        .iter()
        .map(|r| r.header("webhook-id").unwrap())
        .collect();
    assert!(
        ids.iter().all(|id| *id == ids[0]),
        "one batch id across attempts"
    );
    assert!(requests
        .iter()
        .all(|r| r.record_ids() == requests[0].record_ids()));
    // Wait n is between initial * 2^n (100 ms, 200, 400, 800, 1600) and
    // twice that (capped at max = 2 s): never sooner than `initial`.
    for (n, pair) in requests.windows(2).enumerate() {
        let gap = pair[1].at - pair[0].at;
        let floor = Duration::from_millis(100 << n);
        let ceiling = (floor * 2).min(Duration::from_secs(2));
        assert!(gap >= floor, "wait {n} was {gap:?}, below {floor:?}");
        assert!(
            gap <= ceiling + Duration::from_millis(500),
            "wait {n} was {gap:?}, above its ceiling {ceiling:?}"
        );
    }
    assert_eq!(rx.accepted_record_ids().len(), 3, "nothing lost");
    wait_until(
        WAIT,
        "confirmed_flush_lsn past the delivered batch",
        || async { p.db.confirmed_flush(&p.slot).await.expect("slot") > commit_lsn },
    )
    .await;
    let status = p.worker.status.snapshot();
    assert_eq!(status.last_error, None);
    assert!(status.last_success.is_some());
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_seconds_delays_the_next_attempt() {
    let rx = Receiver::start().await;
    rx.script([Reply::RetryAfter(429, "2".into())]);
    let w = Setup::default().start(&rx.url("/hook"));
    w.send_tx(vec![rec(0x100, 0)], Lsn(0x200)).await;
    rx.wait_accepted_records(1, WAIT).await;
    let r = rx.requests();
    assert_eq!(r.len(), 2);
    let gap = r[1].at - r[0].at;
    assert!(gap >= Duration::from_secs(2), "retried after {gap:?}");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_http_date_delays_the_next_attempt() {
    let rx = Receiver::start().await;
    let at = SystemTime::now() + Duration::from_secs(4);
    rx.script([Reply::RetryAfter(503, httpdate::fmt_http_date(at))]);
    let w = Setup::default().start(&rx.url("/hook"));
    w.send_tx(vec![rec(0x100, 0)], Lsn(0x200)).await;
    rx.wait_accepted_records(1, WAIT).await;
    let r = rx.requests();
    let gap = r[1].at - r[0].at;
    // The date has whole seconds: at least 3 s of the 4 remain.
    assert!(gap >= Duration::from_secs(2), "retried after {gap:?}");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_keeps_retrying_and_holds_the_checkpoint() {
    let rx = Receiver::start().await;
    rx.fail_next(4, 503);
    let w = Setup {
        retry: fast_retry(2, OnExhausted::Block),
        ..Setup::default()
    }
    .start(&rx.url("/hook"));
    w.send_tx(vec![rec(0x100, 0)], Lsn(0x200)).await;
    wait_until(WAIT, "the strategy to show as blocked", || async {
        w.status.snapshot().state == DeliveryState::Blocked
    })
    .await;
    assert_eq!(w.checkpoint.acked(), Lsn(0), "held while blocked");
    rx.wait_accepted_records(1, WAIT).await;
    assert_eq!(rx.requests().len(), 5);
    wait_until(WAIT, "the checkpoint after delivery", || async {
        w.checkpoint.acked() == Lsn(0x200)
    })
    .await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_stored_and_later_batches_flow() {
    let url = fresh_db("dlv_dead").await.url();
    let state = StateStore::connect(&url, "walhook-state")
        .await
        .expect("state store");
    state.ensure_schema().await.expect("schema");
    let rx = Receiver::start().await;
    rx.fail_next(2, 500);
    let w = Setup {
        retry: fast_retry(2, OnExhausted::DeadLetter),
        state: Some(state.clone()),
        ..Setup::default()
    }
    .start(&rx.url("/hook"));
    w.send_tx(vec![rec(0x100, 0), rec(0x100, 1)], Lsn(0x200))
        .await;
    wait_until(WAIT, "the first batch to be dead-lettered", || async {
        w.status.snapshot().dead_lettered_batches == 1
    })
    .await;
    assert_eq!(
        w.checkpoint.acked(),
        Lsn(0x200),
        "a dead letter counts as done"
    );
    w.send_tx(vec![rec(0x300, 0)], Lsn(0x400)).await;
    rx.wait_accepted_records(1, WAIT).await;
    assert_eq!(
        rx.accepted_record_ids(),
        ["0/300:0"],
        "the later batch flowed"
    );
    wait_until(WAIT, "the checkpoint past both transactions", || async {
        w.checkpoint.acked() == Lsn(0x400)
    })
    .await;

    let failed_id = rx.requests()[0].header("webhook-id").unwrap().to_string();
    let letters = state
        .list_dead_letters(Some("orders"), 0, 10)
        .await
        .unwrap();
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    assert_eq!(letter.batch_id, failed_id);
    assert_eq!(letter.strategy, "orders");
    assert_eq!(letter.first_lsn, "0/100");
    assert_eq!(letter.attempts, 2);
    assert_eq!(letter.last_status, Some(500));
    let error = letter.last_error.clone().unwrap_or_default();
    assert!(error.ends_with("HTTP 500 Internal Server Error"), "{error}");
    let full = state.get_dead_letter(letter.id).await.unwrap().unwrap();
    let payload: serde_json::Value = serde_json::from_str(&full.payload).unwrap();
    assert_eq!(payload["batch"]["id"], failed_id.as_str());
    assert_eq!(payload["records"][1]["id"], "0/100:1");
    w.stop().await;
}

/// A preparer that hands out a new token each time it is told of a 401.
struct Tokens {
    generation: AtomicUsize,
}

impl Prepare for Tokens {
    fn prepare<'a>(&'a self, attempt: &'a mut Attempt) -> BoxFuture<'a, Result<(), PrepareError>> {
        Box::pin(async move {
            let g = self.generation.load(Ordering::SeqCst);
            let value = HeaderValue::from_str(&format!("Bearer t{g}")).unwrap();
            attempt.headers.insert(AUTHORIZATION, value);
            Ok(())
        })
    }

    fn unauthorized(&self) -> bool {
        self.generation.fetch_add(1, Ordering::SeqCst);
        true
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_is_retried_at_once_with_fresh_credentials() {
    let rx = Receiver::start().await;
    rx.fail_next(1, 401);
    let endpoint = Endpoint::new(
        "test",
        &endpoint_config(&rx.url("/hook"), fast_retry(0, OnExhausted::Block)),
        Arc::new(Tokens {
            generation: AtomicUsize::new(0),
        }),
    )
    .unwrap();
    let checkpoint = Arc::new(walhook::checkpoint::Checkpoint::new(1, Lsn(0), |_| {}));
    let (worker, queue) = StrategyWorker::new(WorkerOptions {
        index: 0,
        name: "orders".into(),
        batch_size: 10,
        max_batch_bytes: 1 << 20,
        linger: Duration::from_millis(10),
        max_in_flight: 1,
        ordering: walhook::config::Ordering::Commit,
        retry: fast_retry(0, OnExhausted::Block),
        endpoint: Arc::new(endpoint),
        decorate: Arc::new(walhook::batch::NoDecoration),
        checkpoint: checkpoint.clone(),
        state: None,
        boundaries: None,
        shutdown_timeout: Duration::from_secs(5),
        queue_capacity: 10,
    })
    .unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(worker.run(shutdown.clone()));
    queue
        .send(walhook::batch::WorkItem::Record(rec(0x100, 0)))
        .await
        .unwrap();
    rx.wait_accepted_records(1, WAIT).await;
    let r = rx.requests();
    assert_eq!(r.len(), 2);
    assert_eq!(r[0].header("authorization"), Some("Bearer t0"));
    assert_eq!(r[1].header("authorization"), Some("Bearer t1"));
    assert!(
        r[1].at - r[0].at < Duration::from_secs(1),
        "retried at once, without backoff"
    );
    assert!(r[1].header("webhook-timestamp").is_some());
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_the_batch_in_flight() {
    let rx = Receiver::start().await;
    rx.set_delay(Duration::from_millis(800));
    let w = Setup::default().start(&rx.url("/hook"));
    w.send_tx(vec![rec(0x100, 0)], Lsn(0x200)).await;
    wait_until(WAIT, "the request to arrive", || async {
        rx.arrivals() == 1
    })
    .await;
    let checkpoint = w.checkpoint.clone();
    w.stop().await;
    assert_eq!(rx.accepted_record_ids(), ["0/100:0"]);
    assert_eq!(checkpoint.acked(), Lsn(0x200), "delivered before stopping");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_does_not_wait_out_a_backoff() {
    let rx = Receiver::start().await;
    rx.script([Reply::RetryAfter(503, "3600".into())]);
    let w = Setup::default().start(&rx.url("/hook"));
    w.send_tx(vec![rec(0x100, 0)], Lsn(0x200)).await;
    rx.wait_requests(1, WAIT).await;
    let checkpoint = w.checkpoint.clone();
    let stopped = std::time::Instant::now();
    w.stop().await;
    assert!(stopped.elapsed() < Duration::from_secs(5));
    assert_eq!(checkpoint.acked(), Lsn(0), "not delivered: not acked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_answer_times_out_and_is_retried() {
    let rx = Receiver::start().await;
    rx.set_delay(Duration::from_secs(3));
    let w = Setup {
        timeout: Duration::from_millis(500),
        ..Setup::default()
    }
    .start(&rx.url("/hook"));
    w.send_tx(vec![rec(0x100, 0)], Lsn(0x200)).await;
    wait_until(WAIT, "the timeout to show in /status", || async {
        w.status.snapshot().last_error.is_some()
    })
    .await;
    let error = w.status.snapshot().last_error.unwrap_or_default();
    assert!(error.ends_with("): timed out after 500ms"), "{error}");
    assert_eq!(w.checkpoint.acked(), Lsn(0));
    rx.set_delay(Duration::ZERO);
    wait_until(WAIT, "delivery after the receiver speeds up", || async {
        w.checkpoint.acked() == Lsn(0x200)
    })
    .await;
    assert!(rx.arrivals() >= 2);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_is_a_failed_attempt_whose_error_hides_the_url() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let w = Setup::default().start(&format!("http://127.0.0.1:{port}/hook?api_key=SECRET123"));
    w.send_tx(vec![rec(0x100, 0)], Lsn(0x200)).await;
    wait_until(WAIT, "a failed attempt in /status", || async {
        w.status.snapshot().attempts >= 1
    })
    .await;
    let error = w.status.snapshot().last_error.unwrap();
    assert!(error.contains("connect"), "{error}");
    // The endpoint and its host are named; the URL's path and query are not.
    assert!(
        error.starts_with(&format!("endpoint test (127.0.0.1:{port}): ")),
        "{error}"
    );
    assert!(
        !error.contains("SECRET123") && !error.contains("/hook"),
        "{error}"
    );
    assert_eq!(w.checkpoint.acked(), Lsn(0));
    w.stop().await;
}
