//! README's "Five minutes on your own database", run as written: the
//! commands are read from README itself (its code blocks in that section),
//! with the shipped `config.toml`, on a fresh PostgreSQL 15 cluster of the
//! test's own (the steps name the slot, the publication and the role
//! `walhook`, which must not meet other tests' objects). Only the
//! placeholders change: `db:5432/shop` becomes the cluster, `…` a password;
//! the ports come from the environment the shipped file and `walhook
//! receive` read (`WALHOOK_ADMIN_LISTEN`, `ORDERS_HOOK_URL`,
//! `WALHOOK_RECEIVE_LISTEN`), so the test never meets another one on 8080.
//!
//! What a new user checks: every step exits 0, the setup SQL prints no
//! NOTICE on a fresh database, `walhook check` finds no error, and the
//! receiver started with `--secret` verifies and prints the first batch.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use walhook::cluster::{Cluster, ClusterOptions};

use crate::support::cluster::ensure_version;
use crate::support::{free_port, wait_until, WAIT};

const PASSWORD: &str = "pw-first-hour";

/// The section's code blocks, in order: (language, lines).
fn five_minute_blocks() -> Vec<(String, Vec<String>)> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let start = readme
        .find("\n## Five minutes on your own database")
        .expect("README has its five-minute section");
    let section = &readme[start + 1..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |e| e + 3)];
    let mut blocks = Vec::new();
    let mut current: Option<(String, Vec<String>)> = None;
    for line in section.lines() {
        let trimmed = line.trim();
        if let Some(lang) = trimmed.strip_prefix("```") {
            match current.take() {
                Some(block) => blocks.push(block),
                None => current = Some((lang.to_string(), Vec::new())),
            }
        } else if let Some((_, lines)) = current.as_mut() {
            lines.push(trimmed.to_string());
        }
    }
    blocks
}

/// A long-running command of the steps, its output kept as it comes.
struct Background {
    child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

impl Background {
    fn output(&self) -> String {
        format!(
            "stdout:\n{}\nstderr:\n{}",
            self.stdout.lock().unwrap(),
            self.stderr.lock().unwrap()
        )
    }
}

fn keep(stream: impl tokio::io::AsyncRead + Unpin + Send + 'static) -> Arc<Mutex<String>> {
    let kept = Arc::new(Mutex::new(String::new()));
    let into = kept.clone();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let mut kept = into.lock().unwrap();
            kept.push_str(&line);
            kept.push('\n');
        }
    });
    kept
}

/// A shell with README's steps' environment, in the directory the user
/// works in.
struct Shell<'a> {
    dir: &'a Path,
    env: BTreeMap<String, String>,
}

impl Shell<'_> {
    fn command(&self, line: &str) -> Command {
        let mut cmd = Command::new("bash");
        cmd.args(["-euo", "pipefail", "-c", line])
            .current_dir(self.dir)
            .envs(&self.env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    /// Runs `line` to its end: (stdout, stderr); panics unless it exits 0.
    async fn run(&self, line: &str) -> (String, String) {
        let out = self.command(line).output().await.expect("bash");
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        assert!(
            out.status.success(),
            "README step `{line}` failed ({}):\n{stdout}\n{stderr}",
            out.status
        );
        (stdout, stderr)
    }

    /// `export NAME=VALUE`: the value as the shell expands it.
    async fn export(&mut self, line: &str) {
        let name = line["export ".len()..]
            .split('=')
            .next()
            .expect("export NAME=")
            .to_string();
        let (value, _) = self.run(&format!("{line}\nprintf %s \"${name}\"")).await;
        assert!(!value.is_empty(), "`{line}` gave {name} no value");
        self.env.insert(name, value);
    }

    fn spawn(&self, line: &str) -> Background {
        let mut child = self.command(&format!("exec {line}")).spawn().expect("bash");
        let stdout = keep(child.stdout.take().unwrap());
        let stderr = keep(child.stderr.take().unwrap());
        Background {
            child,
            stdout,
            stderr,
        }
    }
}

#[tokio::test]
async fn readme_five_minutes_verbatim_with_the_shipped_config() {
    // A fresh PostgreSQL 15 of this test's own (step 1's settings are the
    // harness's: wal_level = logical, free slots and senders).
    ensure_version(15);
    let cluster = tokio::task::spawn_blocking(|| {
        let cluster = Cluster::start(ClusterOptions::default().version(15)).expect("PostgreSQL 15");
        cluster
            .spawn_watchdog(std::process::id())
            .expect("watchdog");
        cluster
            .create_database("shop")
            .expect("create database shop");
        // Step 2's role logs in with its password, as on a real server.
        cluster
            .add_hba_line_first("host all walhook 127.0.0.1/32 scram-sha-256")
            .and_then(|_| {
                cluster.add_hba_line_first("host replication walhook 127.0.0.1/32 scram-sha-256")
            })
            .and_then(|_| cluster.reload())
            .expect("pg_hba.conf");
        cluster
            .psql(
                "shop",
                "CREATE TABLE public.orders (id bigint PRIMARY KEY, status text, amount numeric)",
            )
            .expect("the orders table");
        Arc::new(cluster)
    })
    .await
    .unwrap();
    let server = format!("127.0.0.1:{}/shop", cluster.port());

    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml"),
        dir.path().join("config.toml"),
    )
    .unwrap();
    let bin = Path::new(env!("CARGO_BIN_EXE_walhook")).parent().unwrap();
    let (hook, admin) = (free_port(), free_port());
    let mut env: BTreeMap<String, String> = std::env::vars()
        .filter(|(k, _)| !k.starts_with("WALHOOK_") && !k.starts_with("ORDERS_"))
        .collect();
    let path = env.get("PATH").cloned().unwrap_or_default();
    env.insert("PATH".into(), format!("{}:{path}", bin.display()));
    env.insert("WALHOOK_ADMIN_LISTEN".into(), format!("127.0.0.1:{admin}"));
    env.insert("WALHOOK_RECEIVE_LISTEN".into(), format!("127.0.0.1:{hook}"));
    env.insert(
        "ORDERS_HOOK_URL".into(),
        format!("http://127.0.0.1:{hook}/hooks"),
    );
    let mut shell = Shell {
        dir: dir.path(),
        env,
    };

    let blocks = five_minute_blocks();
    assert!(
        blocks.len() >= 6,
        "README's five-minute section has {} code blocks",
        blocks.len()
    );
    let mut background: Vec<(String, Background)> = Vec::new();
    let (mut checked, mut set_up, mut wrote) = (false, false, false);
    for (lang, lines) in &blocks {
        if lang == "sql" {
            // Step 2, as the administrator.
            let sql = lines.join("\n").replace('…', PASSWORD);
            let cl = cluster.clone();
            tokio::task::spawn_blocking(move || cl.psql("shop", &sql))
                .await
                .unwrap()
                .unwrap_or_else(|e| panic!("README's SQL failed: {e}"));
            continue;
        }
        assert_eq!(lang, "sh", "a code block of the section: {lines:?}");
        for line in lines {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let line = line.replace("db:5432/shop", &server).replace('…', PASSWORD);
            if line.starts_with("export ") {
                shell.export(&line).await;
            } else if line.starts_with("walhook receive") {
                let receiver = shell.spawn(&line);
                let out = receiver.stdout.clone();
                wait_until(WAIT, "walhook receive listens", || {
                    let out = out.clone();
                    async move { out.lock().unwrap().contains("listening on") }
                })
                .await;
                background.push((line, receiver));
            } else if line.starts_with("walhook run") {
                background.push((line.clone(), shell.spawn(&line)));
            } else {
                let (stdout, stderr) = shell.run(&line).await;
                if line.starts_with("psql") && line.contains("-f walhook-setup.sql") {
                    assert!(
                        !stderr.contains("NOTICE") && !stdout.contains("NOTICE"),
                        "the setup SQL printed notices on a fresh database:\n{stderr}{stdout}"
                    );
                    set_up = true;
                }
                if line.starts_with("walhook check") {
                    assert!(
                        !stdout.lines().any(|l| l.starts_with("error")),
                        "check found errors:\n{stdout}"
                    );
                    checked = true;
                }
                if line.starts_with("psql") && line.contains("INSERT") {
                    wrote = true;
                }
            }
        }
    }
    assert!(
        set_up && checked && wrote,
        "README's steps ran the setup SQL ({set_up}), check ({checked}) and a write ({wrote})"
    );

    // The first delivery: signed, verified by `walhook receive --secret`.
    let (receiver, run) = match &background[..] {
        [(r, receiver), (w, run)]
            if r.starts_with("walhook receive") && w.starts_with("walhook run") =>
        {
            assert!(
                r.contains("--secret"),
                "the receiver verifies signatures: {r}"
            );
            (receiver, run)
        }
        other => panic!(
            "README's steps start a receiver, then walhook run: {:?}",
            other.iter().map(|(l, _)| l).collect::<Vec<_>>()
        ),
    };
    let out = receiver.stdout.clone();
    let printed = crate::support::poll_until(WAIT, || {
        let out = out.clone();
        async move {
            out.lock()
                .unwrap()
                .lines()
                .any(|l| l.starts_with("strategy=big_orders") && l.contains("size=1"))
        }
    })
    .await;
    assert!(
        printed,
        "the receiver printed no verified batch of big_orders.\nreceiver {}\nwalhook run {}",
        receiver.output(),
        run.output()
    );
    assert!(
        !receiver.stderr.lock().unwrap().contains("rejected"),
        "the receiver rejected a request: {}",
        receiver.output()
    );

    // Step 3: the shipped file does only what the step describes.
    let shipped: toml::Table = std::fs::read_to_string(dir.path().join("config.toml"))
        .unwrap()
        .parse()
        .unwrap();
    let strategies = shipped["strategies"].as_array().unwrap();
    let endpoints = shipped["endpoints"].as_table().unwrap();
    assert_eq!(strategies.len(), 1, "one strategy: {strategies:?}");
    assert_eq!(endpoints.len(), 1, "one endpoint: {endpoints:?}");
    let strategy = strategies[0].as_table().unwrap();
    for optional in ["schedules", "on_demand", "backfill"] {
        assert!(!strategy.contains_key(optional), "{optional} is on");
    }
    assert!(endpoints["orders_api"].get("signing").is_some());

    for (_, mut process) in background {
        let _ = process.child.kill().await;
    }
    // Stopped before the cluster is destroyed, which waits for their connections.
    tokio::task::spawn_blocking(move || drop(cluster))
        .await
        .unwrap();
}
