//! The sender with the real endpoint security (`EndpointSecurity` as its
//! `Prepare`): every attempt, retries included, arrives signed with a fresh
//! timestamp that a Standard Webhooks verifier accepts, and the body token
//! is in the payload.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use walhook::batch::{NoDecoration, WorkItem};
use walhook::checkpoint::Checkpoint;
use walhook::config::SigningKey;
use walhook::config::{OnExhausted, Secret, Signing};
use walhook::delivery::EndpointSecurity;
use walhook::delivery::Verifier;
use walhook::delivery::{Endpoint, StrategyWorker, WorkerOptions};
use walhook::lsn::Lsn;

use super::{endpoint_config, fast_retry, rec};
use crate::support::{Receiver, WAIT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_attempt_is_signed_and_verifies() {
    let rx = Receiver::start().await;
    rx.fail_next(1, 500);
    let secret = format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode([7u8; 32])
    );
    let mut config = endpoint_config(&rx.url("/hook"), fast_retry(0, OnExhausted::Block));
    config.signing = Some(Signing {
        secret: vec![Secret::new(secret.clone())],
        include_token: true,
        ..Signing::default()
    });
    let security = EndpointSecurity::new("signed", &config, reqwest::Client::new()).unwrap();
    let endpoint = Endpoint::new("signed", &config, Arc::new(security)).unwrap();
    let checkpoint = Arc::new(Checkpoint::new(1, Lsn(0), |_| {}));
    let (worker, queue) = StrategyWorker::new(WorkerOptions {
        index: 0,
        name: "orders".into(),
        batch_size: 10,
        max_batch_bytes: 1 << 20,
        linger: Duration::from_millis(10),
        max_in_flight: 1,
        ordering: walhook::config::Ordering::Commit,
        retry: config.retry.clone(),
        endpoint: Arc::new(endpoint),
        decorate: Arc::new(NoDecoration),
        checkpoint: checkpoint.clone(),
        state: None,
        boundaries: None,
        shutdown_timeout: Duration::from_secs(5),
        queue_capacity: 10,
    })
    .unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(worker.run(shutdown.clone()));
    queue.send(WorkItem::Record(rec(0x100, 0))).await.unwrap();
    rx.wait_accepted_records(1, WAIT).await;

    let verifier = Verifier::new(vec![SigningKey::parse(&secret).unwrap()]).unwrap();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let requests = rx.requests();
    assert_eq!(requests.len(), 2, "a failure, then the delivery");
    for r in &requests {
        verifier
            .verify_headers(&r.headers, &r.body, now)
            .unwrap_or_else(|e| panic!("signature does not verify: {e}"));
        let body = r.json();
        assert_eq!(r.header("webhook-id"), body["batch"]["id"].as_str());
        assert!(
            body["token"].is_string(),
            "include_token puts a token in the body"
        );
        assert_eq!(body["records"][0]["id"], "0/100:0");
    }
    assert_eq!(
        requests[0].header("webhook-id"),
        requests[1].header("webhook-id")
    );
    shutdown.cancel();
    task.await.unwrap().unwrap();
}
