//! `walhook demo` as a newcomer runs it: batches from all three strategies,
//! exit 0, and no PostgreSQL left behind.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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

#[test]
fn demo_shows_batches_from_every_strategy_and_leaves_nothing_running() {
    let mut child = Command::new(common::walhook_bin())
        .arg("demo")
        .env("WALHOOK_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("walhook demo did not finish within 120 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
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

#[test]
fn ctrl_c_stops_the_demo_cleanly() {
    let mut child = Command::new(common::walhook_bin())
        .arg("demo")
        .env("WALHOOK_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Interrupt as soon as the cluster is up (its line is printed).
    let mut stdout = child.stdout.take().unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while !seen.contains("database shop") {
        use std::io::Read;
        let n = stdout.read(&mut buf).unwrap();
        assert!(n > 0, "demo ended early:\n{seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let mut rest = String::new();
    use std::io::Read;
    stdout.read_to_string(&mut rest).unwrap();
    let status = child.wait().unwrap();
    seen.push_str(&rest);
    assert!(status.success(), "exit {status:?}:\n{seen}");
    assert!(
        cluster_is_gone(port_of(&seen)),
        "the demo's PostgreSQL still listens:\n{seen}"
    );
}
