//! `walhook receive` (the binary): verifies signatures, prints batches or
//! records, counts in `--null` mode, and prints totals when stopped.

use walhook::delivery::EndpointSecurity;
use walhook::delivery::{Attempt, Prepare};

use super::{attempt, endpoint, send, WHSEC, WHSEC_2};
use crate::support::{Walhook, WAIT};

/// A running `walhook receive` and how many of its stdout lines were read.
struct ReceiveProcess {
    walhook: Walhook,
    read: usize,
    url: String,
}

impl ReceiveProcess {
    async fn start(args: &[&str]) -> ReceiveProcess {
        let args: Vec<&str> = ["receive", "--listen", "127.0.0.1:0"]
            .into_iter()
            .chain(args.iter().copied())
            .collect();
        let walhook = Walhook::command(&args).env("WALHOOK_LOG", "warn").spawn();
        let mut receiver = ReceiveProcess {
            walhook,
            read: 0,
            url: String::new(),
        };
        let first = receiver.next_line().await;
        let addr = first
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {first:?}"));
        receiver.url = format!("http://{addr}/hooks/orders");
        receiver
    }

    /// The next line it prints.
    async fn next_line(&mut self) -> String {
        let n = self.read + 1;
        self.walhook
            .wait_lines(WAIT, "a line from the receiver", |lines| lines.len() >= n)
            .await;
        self.read = n;
        self.walhook.lines()[n - 1].clone()
    }

    /// Sends SIGINT, waits for the exit; returns the lines not yet read.
    async fn stop(mut self) -> Vec<String> {
        self.walhook.signal(libc::SIGINT);
        let status = self.walhook.wait_exit(WAIT).await;
        assert!(status.success(), "{status:?}");
        self.walhook.lines()[self.read..].to_vec()
    }
}

async fn signed(batch_id: &str, secret: &str) -> Attempt {
    let config = endpoint(&format!(
        "url = \"http://127.0.0.1:1/hook\"\nsigning = {{ secret = \"{secret}\" }}"
    ));
    let security = EndpointSecurity::new("hook", &config, reqwest::Client::new()).unwrap();
    let mut attempt = attempt(batch_id);
    security.prepare(&mut attempt).await.unwrap();
    attempt
}

#[tokio::test]
async fn verifies_signatures_and_prints_one_line_per_batch() {
    let mut receiver = ReceiveProcess::start(&["--secret", WHSEC]).await;
    let http = reqwest::Client::new();

    let good = signed("batch-1", WHSEC).await;
    let response = send(&http, &receiver.url, &good).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        receiver.next_line().await,
        "strategy=big_orders batch=batch-1 size=1 first_lsn=0/16B3748 last_lsn=0/16B3748"
    );

    // The same request with one value changed in the body.
    let mut changed = good.clone();
    changed.body = String::from_utf8(good.body.to_vec())
        .unwrap()
        .replace("150.5", "1.5")
        .into();
    let response = send(&http, &receiver.url, &changed).await.unwrap();
    assert_eq!(response.status(), 401);
    assert!(response
        .text()
        .await
        .unwrap()
        .contains("no signature matches"));

    // Signed six minutes ago.
    let mut stale = attempt("batch-2");
    stale.timestamp -= 360;
    let config = endpoint(&format!(
        "url = \"http://127.0.0.1:1/hook\"\nsigning = {{ secret = \"{WHSEC}\" }}"
    ));
    EndpointSecurity::new("hook", &config, reqwest::Client::new())
        .unwrap()
        .prepare(&mut stale)
        .await
        .unwrap();
    let response = send(&http, &receiver.url, &stale).await.unwrap();
    assert_eq!(response.status(), 401);

    // Another secret, and no signature at all.
    let other = signed("batch-3", WHSEC_2).await;
    assert_eq!(
        send(&http, &receiver.url, &other).await.unwrap().status(),
        401
    );
    let mut unsigned = attempt("batch-4");
    unsigned.headers.remove("webhook-signature");
    assert_eq!(
        send(&http, &receiver.url, &unsigned)
            .await
            .unwrap()
            .status(),
        401
    );

    let rest = receiver.stop().await;
    let total = rest.last().unwrap();
    assert!(
        total.starts_with("total: 1 batches, 1 records,") && total.ends_with("4 rejected"),
        "{rest:?}"
    );
}

#[tokio::test]
async fn records_mode_prints_each_record() {
    let mut receiver = ReceiveProcess::start(&["--records"]).await;
    let http = reqwest::Client::new();
    let batch = attempt("batch-1");
    assert_eq!(
        send(&http, &receiver.url, &batch).await.unwrap().status(),
        200
    );
    let line = receiver.next_line().await;
    let record: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(record["id"], "0/16B3748:0");
    assert_eq!(record["new"]["amount"], 150.5);
    receiver.stop().await;
}

#[tokio::test]
async fn null_mode_only_counts() {
    let receiver = ReceiveProcess::start(&["--null", "--secret", WHSEC]).await;
    let http = reqwest::Client::new();
    for i in 0..25 {
        let batch = signed(&format!("batch-{i}"), WHSEC).await;
        assert_eq!(
            send(&http, &receiver.url, &batch).await.unwrap().status(),
            200
        );
    }
    let rest = receiver.stop().await;
    assert_eq!(rest.len(), 1, "{rest:?}");
    assert!(
        rest[0].starts_with("total: 25 batches, 25 records,") && rest[0].ends_with(", 0 rejected"),
        "{rest:?}"
    );
}

#[tokio::test]
async fn a_bad_secret_is_a_usage_error_that_does_not_show_it() {
    let output = Walhook::command(&[
        "receive",
        "--listen",
        "127.0.0.1:0",
        "--secret",
        WHSEC,
        "--secret",
        "whsec_dG9vLXNob3J0LXNlY3JldA==",
    ])
    .output()
    .await;
    assert_eq!(output.code(), Some(2));
    let stderr = &output.stderr;
    assert!(stderr.contains("--secret #2"), "{stderr}");
    assert!(stderr.contains("at least 24 bytes"), "{stderr}");
    assert!(!stderr.contains("dG9vLXNob3J0"), "{stderr}");
    assert!(!stderr.contains("MfKQ9r8G"), "{stderr}");
}

#[tokio::test]
async fn accepts_a_batch_from_the_sender_and_rejects_it_changed() {
    use std::sync::Arc;
    use walhook::batch::{build, NoDecoration, QueuedRecord};
    use walhook::lsn::Lsn;

    let mut receiver = ReceiveProcess::start(&["--secret", WHSEC]).await;
    let config = endpoint(&format!(
        "url = \"{}\"\nsigning = {{ secret = \"{WHSEC}\" }}",
        receiver.url
    ));
    let security =
        Arc::new(EndpointSecurity::new("hook", &config, reqwest::Client::new()).unwrap());
    let sender = walhook::delivery::Endpoint::new("hook", &config, security).unwrap();
    let record = QueuedRecord::new(
        Lsn(0x16B_3748),
        0,
        0,
        br#"{"id":"0/16B3748:0","op":"insert","new":{"amount":150.5}}"#.to_vec(),
    );
    let batch = build(&Arc::from("big_orders"), vec![record], &NoDecoration);
    let result = sender.attempt(&batch).await;
    assert!(result.delivered(), "{result:?}");
    assert_eq!(
        receiver.next_line().await,
        format!(
            "strategy=big_orders batch={} size=1 first_lsn=0/16B3748 last_lsn=0/16B3748",
            batch.id
        )
    );

    // The same batch signed as the sender signs it is accepted again; with
    // a value changed under that signature it is refused.
    let mut changed = attempt(&batch.id);
    changed.body = batch.body.clone();
    EndpointSecurity::new("hook", &config, reqwest::Client::new())
        .unwrap()
        .prepare(&mut changed)
        .await
        .unwrap();
    let http = reqwest::Client::new();
    assert_eq!(
        send(&http, &receiver.url, &changed).await.unwrap().status(),
        200
    );
    assert!(receiver.next_line().await.contains(&batch.id));
    changed.body = String::from_utf8(batch.body.to_vec())
        .unwrap()
        .replace("150.5", "15.5")
        .into();
    let response = send(&http, &receiver.url, &changed).await.unwrap();
    assert_eq!(response.status(), 401);
    receiver.stop().await;
}
