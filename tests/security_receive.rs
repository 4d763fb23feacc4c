//! `walhook receive` (the binary): verifies signatures, prints batches or
//! records, counts in `--null` mode, and prints totals when stopped.

mod security_common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;

use security_common::{attempt, endpoint, send, WHSEC, WHSEC_2};
use walhook::delivery::prepare::{Attempt, Prepare};
use walhook::delivery::security::EndpointSecurity;

const WAIT: Duration = Duration::from_secs(20);

/// A running `walhook receive` and its stdout lines.
struct ReceiveProcess {
    child: Child,
    lines: Receiver<String>,
    url: String,
}

impl ReceiveProcess {
    fn start(args: &[&str]) -> ReceiveProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_walhook"))
            .args(["receive", "--listen", "127.0.0.1:0"])
            .args(args)
            .env("WALHOOK_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let first = lines.recv_timeout(WAIT).expect("the receiver starts");
        let addr = first
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {first:?}"));
        ReceiveProcess {
            url: format!("http://{addr}/hooks/orders"),
            child,
            lines,
        }
    }

    fn next_line(&self) -> String {
        self.lines
            .recv_timeout(WAIT)
            .expect("a line from the receiver")
    }

    /// Sends SIGINT, waits for the exit; returns the remaining lines.
    fn stop(mut self) -> Vec<String> {
        // SAFETY: signalling our own child process by its pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGINT);
        }
        let status = self.child.wait().unwrap();
        assert!(status.success(), "{status:?}");
        let mut rest = Vec::new();
        loop {
            match self.lines.recv_timeout(WAIT) {
                Ok(line) => rest.push(line),
                Err(RecvTimeoutError::Disconnected) => return rest,
                Err(RecvTimeoutError::Timeout) => panic!("stdout not closed"),
            }
        }
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
    let receiver = ReceiveProcess::start(&["--secret", WHSEC]);
    let http = reqwest::Client::new();

    let good = signed("batch-1", WHSEC).await;
    let response = send(&http, &receiver.url, &good).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        receiver.next_line(),
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

    let rest = receiver.stop();
    let total = rest.last().unwrap();
    assert!(
        total.starts_with("total: 1 batches, 1 records,") && total.ends_with("4 rejected"),
        "{rest:?}"
    );
}

#[tokio::test]
async fn records_mode_prints_each_record() {
    let receiver = ReceiveProcess::start(&["--records"]);
    let http = reqwest::Client::new();
    let batch = attempt("batch-1");
    assert_eq!(
        send(&http, &receiver.url, &batch).await.unwrap().status(),
        200
    );
    let line = receiver.next_line();
    let record: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(record["id"], "0/16B3748:0");
    assert_eq!(record["new"]["amount"], 150.5);
    receiver.stop();
}

#[tokio::test]
async fn null_mode_only_counts() {
    let receiver = ReceiveProcess::start(&["--null", "--secret", WHSEC]);
    let http = reqwest::Client::new();
    for i in 0..25 {
        let batch = signed(&format!("batch-{i}"), WHSEC).await;
        assert_eq!(
            send(&http, &receiver.url, &batch).await.unwrap().status(),
            200
        );
    }
    let rest = receiver.stop();
    assert_eq!(rest.len(), 1, "{rest:?}");
    assert!(
        rest[0].starts_with("total: 25 batches, 25 records,") && rest[0].ends_with(", 0 rejected"),
        "{rest:?}"
    );
}

#[test]
fn a_bad_secret_is_a_usage_error_that_does_not_show_it() {
    let output = Command::new(env!("CARGO_BIN_EXE_walhook"))
        .args(["receive", "--listen", "127.0.0.1:0", "--secret", WHSEC])
        .args(["--secret", "whsec_dG9vLXNob3J0LXNlY3JldA=="])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--secret #2"), "{stderr}");
    assert!(stderr.contains("at least 24 bytes"), "{stderr}");
    assert!(!stderr.contains("dG9vLXNob3J0"), "{stderr}");
    assert!(!stderr.contains("MfKQ9r8G"), "{stderr}");
}

#[tokio::test]
async fn accepts_a_batch_from_the_sender_and_rejects_it_changed() {
    use std::sync::Arc;
    use walhook::batch::{payload::build, NoDecoration, QueuedRecord};
    use walhook::lsn::Lsn;

    let receiver = ReceiveProcess::start(&["--secret", WHSEC]);
    let config = endpoint(&format!(
        "url = \"{}\"\nsigning = {{ secret = \"{WHSEC}\" }}",
        receiver.url
    ));
    let security =
        Arc::new(EndpointSecurity::new("hook", &config, reqwest::Client::new()).unwrap());
    let sender = walhook::delivery::Endpoint::new("hook", &config, security).unwrap();
    let record = QueuedRecord {
        commit_lsn: Lsn(0x16B_3748),
        index: 0,
        commit_time: 0,
        json: br#"{"id":"0/16B3748:0","op":"insert","new":{"amount":150.5}}"#.to_vec(),
    };
    let batch = build(&Arc::from("big_orders"), vec![record], None, &NoDecoration);
    let result = sender.attempt(&batch).await;
    assert!(result.delivered(), "{result:?}");
    assert_eq!(
        receiver.next_line(),
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
    assert!(receiver.next_line().contains(&batch.id));
    changed.body = String::from_utf8(batch.body.to_vec())
        .unwrap()
        .replace("150.5", "15.5")
        .into();
    let response = send(&http, &receiver.url, &changed).await.unwrap();
    assert_eq!(response.status(), 401);
    receiver.stop();
}
