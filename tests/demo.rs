//! `walhook demo` as a newcomer runs it: batches from all three strategies,
//! exit 0, and no PostgreSQL left behind.

use std::time::Duration;

use crate::support::{Walhook, WAIT};

fn port_of(output: &str) -> u16 {
    let line = output
        .lines()
        .find(|l| l.contains("PostgreSQL") && l.contains("127.0.0.1:"))
        .unwrap_or_else(|| panic!("no PostgreSQL line in:\n{output}"));
    let after = line.split("127.0.0.1:").nth(1).unwrap();
    after
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

fn cluster_is_gone(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(500),
    )
    .is_err()
}

#[tokio::test]
async fn demo_shows_batches_from_every_strategy_and_leaves_nothing_running() {
    let mut demo = Walhook::command(&["demo"])
        .env("WALHOOK_LOG", "warn")
        .spawn();
    let status = demo.wait_exit(Duration::from_secs(120)).await;
    let stdout = demo.stdout();
    let stderr = demo.stderr();
    assert!(
        status.success(),
        "exit {status:?}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    for strategy in ["big_orders", "status_changes", "cancellations"] {
        assert!(
            stdout
                .lines()
                .any(|l| l.contains('←') && l.contains(strategy) && l.contains("batch of")),
            "no batch from {strategy}:\n{stdout}"
        );
    }
    assert!(stdout.contains("big_orders      5 records"), "{stdout}");
    assert!(stdout.contains("status_changes  3 records"), "{stdout}");
    assert!(stdout.contains("cancellations   2 records"), "{stdout}");
    assert!(!stdout.contains("bad signature"), "{stdout}");
    assert!(
        cluster_is_gone(port_of(&stdout)),
        "the demo's PostgreSQL still listens"
    );
}

#[tokio::test]
async fn ctrl_c_stops_the_demo_cleanly() {
    let mut demo = Walhook::command(&["demo"])
        .env("WALHOOK_LOG", "warn")
        .spawn();
    // Interrupt as soon as the cluster is up (its line is printed).
    demo.wait_lines(WAIT, "the demo's database line", |lines| {
        lines.iter().any(|l| l.contains("database shop"))
    })
    .await;
    demo.signal(libc::SIGINT);
    let status = demo.wait_exit(WAIT).await;
    let seen = demo.stdout();
    assert!(status.success(), "exit {status:?}:\n{seen}");
    assert!(
        cluster_is_gone(port_of(&seen)),
        "the demo's PostgreSQL still listens:\n{seen}"
    );
}
