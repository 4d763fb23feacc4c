//! Helpers for the end-to-end tests of `walhook run --stdout`: a config file
//! in a temp dir, the built binary with piped stdout, a task collecting its
//! JSON lines, and ways to stop it (SIGTERM, SIGKILL).
#![allow(dead_code)]

use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use crate::common::walhook_bin;

/// Generous bound for anything that should take a moment.
pub const WAIT: Duration = Duration::from_secs(60);

/// A `config.toml` for `walhook run --stdout` (no endpoints or strategies needed).
pub fn config(url: &str, slot: &str, publication: &str) -> String {
    format!("[source]\nurl = \"{url}\"\nslot = \"{slot}\"\npublication = \"{publication}\"\n")
}

/// A running `walhook run -c <dir>/config.toml --stdout`.
pub struct Walhook {
    child: Child,
    pub pid: u32,
    lines: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
    reader: JoinHandle<()>,
    err_reader: JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Walhook {
    /// Starts walhook on `url`'s database with this slot and publication.
    pub fn start(url: &str, slot: &str, publication: &str) -> Walhook {
        Walhook::start_with_config(&config(url, slot, publication))
    }

    /// Starts walhook with this config file text.
    pub fn start_with_config(text: &str) -> Walhook {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("config.toml");
        std::fs::write(&path, text).expect("writing config.toml");
        let mut child = Command::new(walhook_bin())
            .arg("run")
            .arg("-c")
            .arg(&path)
            .arg("--stdout")
            .current_dir(dir.path())
            .env("WALHOOK_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawning walhook");
        let pid = child.id().expect("walhook pid");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().expect("piped stdout");
        let collected = lines.clone();
        let reader = tokio::spawn(async move {
            let mut stdout = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = stdout.next_line().await {
                collected.lock().unwrap().push(line);
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err_pipe = child.stderr.take().expect("piped stderr");
        let err_text = stderr.clone();
        let err_reader = tokio::spawn(async move {
            let mut chunk = vec![0u8; 8192];
            while let Ok(n) = err_pipe.read(&mut chunk).await {
                if n == 0 {
                    break;
                }
                err_text
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&chunk[..n]));
            }
        });
        Walhook {
            child,
            pid,
            lines,
            stderr,
            reader,
            err_reader,
            _dir: dir,
        }
    }

    /// The lines printed so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// How many lines were printed so far.
    pub fn line_count(&self) -> usize {
        self.lines.lock().unwrap().len()
    }

    /// The records printed so far, parsed.
    pub fn records(&self) -> Vec<Value> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }

    /// What walhook wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until the printed lines satisfy `f`; panics with stderr otherwise.
    pub async fn wait_lines(&self, timeout: Duration, what: &str, f: impl Fn(&[String]) -> bool) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if f(&self.lines.lock().unwrap()) {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {what}; {} lines printed; stderr:\n{}",
                    self.line_count(),
                    self.stderr()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until at least `n` lines were printed and returns them parsed.
    pub async fn wait_records(&self, n: usize) -> Vec<Value> {
        self.wait_lines(WAIT, &format!("{n} lines"), |l| l.len() >= n)
            .await;
        self.records()
    }

    /// Waits until the process is streaming: its walsender holds `slot` and
    /// has started replication (a slot still being created, waiting for a
    /// consistent point, would not yet decode rows written now).
    pub async fn wait_streaming(&self, db: &str, slot: &str) {
        let sql = format!(
            "SELECT count(*) FROM pg_replication_slots s
             JOIN pg_stat_replication r ON r.pid = s.active_pid
             WHERE s.slot_name = '{slot}' AND r.state IN ('catchup', 'streaming')"
        );
        let db = db.to_string();
        let deadline = tokio::time::Instant::now() + WAIT;
        while crate::source_common::psql(&db, &sql).await != "1" {
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "walhook is not streaming from {slot} after {WAIT:?}; stderr:\n{}",
                    self.stderr()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The process's peak resident set size in KiB (VmHWM), while it runs.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .expect("reading /proc/<pid>/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/<pid>/status")
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Closes the read end of stdout, as a consumer that went away would.
    pub async fn close_stdout(&mut self) {
        self.reader.abort();
        let _ = (&mut self.reader).await;
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) with a pid we spawned and still own (not yet reaped).
        let rc = unsafe { libc::kill(self.pid as i32, signal) };
        assert_eq!(rc, 0, "kill({}, {signal})", self.pid);
    }

    /// Waits for the process to exit on its own, then for stdout to be read
    /// to its end.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let status = tokio::time::timeout(timeout, self.child.wait())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "walhook did not exit within {timeout:?}; stderr:\n{}",
                    self.stderr()
                )
            })
            .expect("waiting for walhook");
        // Read both pipes to their end.
        if !self.reader.is_finished() {
            let _ = tokio::time::timeout(WAIT, &mut self.reader).await;
        }
        if !self.err_reader.is_finished() {
            let _ = tokio::time::timeout(WAIT, &mut self.err_reader).await;
        }
        status
    }

    /// SIGTERM, then wait for the exit.
    pub async fn terminate(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait_exit(WAIT).await
    }

    /// SIGKILL, then wait for the exit.
    pub async fn kill9(&mut self) -> ExitStatus {
        self.signal(libc::SIGKILL);
        self.wait_exit(WAIT).await
    }
}

/// The ids of the rows in `records` of `table` (from new, or old for deletes).
pub fn ids_of(records: &[Value], table: &str) -> Vec<i64> {
    records
        .iter()
        .filter(|r| r["table"] == table)
        .filter_map(|r| {
            let row = if r["new"].is_null() {
                &r["old"]
            } else {
                &r["new"]
            };
            row["id"].as_i64()
        })
        .collect()
}
