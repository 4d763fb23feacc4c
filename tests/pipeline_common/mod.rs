//! Helpers for end-to-end tests of `walhook run` delivering to a real
//! receiver: a config file in a temp dir, the built binary, its stderr
//! collected, and ways to stop it.
#![allow(dead_code)]

use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};

use crate::common::walhook_bin;

/// Generous bound for anything that should take a moment.
pub const WAIT: Duration = Duration::from_secs(60);

/// A free 127.0.0.1 port for the admin server.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// `[source]` and `[admin]` for a database, slot and publication.
pub fn base_config(url: &str, slot: &str, publication: &str) -> String {
    format!(
        "[source]\nurl = \"{url}\"\nslot = \"{slot}\"\npublication = \"{publication}\"\n\n\
         [admin]\nlisten = \"127.0.0.1:{}\"\n\n",
        free_port()
    )
}

/// Like [`base_config`], with the admin server on a given port (from
/// [`free_port`]) so the test can scrape it.
pub fn base_config_with_admin(url: &str, slot: &str, publication: &str, port: u16) -> String {
    format!(
        "[source]\nurl = \"{url}\"\nslot = \"{slot}\"\npublication = \"{publication}\"\n\n\
         [admin]\nlisten = \"127.0.0.1:{port}\"\n\n"
    )
}

/// `GET http://127.0.0.1:{port}{path}`: status and body; `None` while
/// nothing answers (not yet listening).
pub async fn admin_get(port: u16, path: &str) -> Option<(u16, String)> {
    let response = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}{path}"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .ok()?;
    let code = response.status().as_u16();
    Some((code, response.text().await.ok()?))
}

/// The sum of every sample of `name` in a Prometheus text scrape whose
/// labels contain each of `labels` (`key="value"`); `None` when no sample
/// matches.
pub fn metric_sum(scrape: &str, name: &str, labels: &[&str]) -> Option<f64> {
    let mut found = None;
    for line in scrape.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (label_text, value) = match rest.strip_prefix('{') {
            Some(rest) => match rest.split_once("} ") {
                Some((labels, value)) => (labels, value),
                None => continue,
            },
            None => match rest.strip_prefix(' ') {
                Some(value) => ("", value),
                None => continue,
            },
        };
        if !labels
            .iter()
            .all(|l| label_text.split(',').any(|x| x == *l))
        {
            continue;
        }
        if let Ok(v) = value.trim().parse::<f64>() {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

/// A running `walhook run -c <dir>/config.toml`.
pub struct Walhook {
    child: Child,
    pub pid: u32,
    stderr: Arc<Mutex<String>>,
    pub dir: tempfile::TempDir,
}

impl Walhook {
    /// Starts walhook with this config file text (and extra environment).
    pub fn start(config: &str, env: &[(&str, &str)]) -> Walhook {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("config.toml");
        std::fs::write(&path, config).expect("writing config.toml");
        let mut cmd = Command::new(walhook_bin());
        cmd.arg("run")
            .arg("-c")
            .arg(&path)
            .current_dir(dir.path())
            .env("WALHOOK_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawning walhook");
        let pid = child.id().expect("walhook pid");
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().expect("piped stderr");
        let text = stderr.clone();
        tokio::spawn(async move {
            let mut chunk = vec![0u8; 8192];
            while let Ok(n) = pipe.read(&mut chunk).await {
                if n == 0 {
                    break;
                }
                text.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&chunk[..n]));
            }
        });
        Walhook {
            child,
            pid,
            stderr,
            dir,
        }
    }

    /// Everything written to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Sends a signal (libc number).
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.pid as i32, signal);
        }
    }

    /// Waits for the process to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => status.expect("waiting for walhook"),
            Err(_) => panic!(
                "walhook did not exit within {timeout:?}; stderr:\n{}",
                self.stderr()
            ),
        }
    }

    /// SIGKILL and reap.
    pub async fn kill9(&mut self) {
        self.signal(libc::SIGKILL);
        let _ = self.wait_exit(WAIT).await;
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// Waits until the slot is streaming to a walsender (not just created).
pub async fn wait_streaming(db: &str, slot: &str) {
    let sql = format!(
        "SELECT count(*) FROM pg_replication_slots s JOIN pg_stat_replication r ON r.pid = s.active_pid \
         WHERE s.slot_name = '{slot}' AND r.state IN ('catchup', 'streaming')"
    );
    crate::common::wait_until(WAIT, &format!("slot {slot} streaming"), || async {
        crate::common::cluster()
            .psql(db, &sql)
            .map(|out| out.trim() == "1")
            .unwrap_or(false)
    })
    .await;
}

/// The slot's confirmed_flush_lsn as text.
pub fn confirmed_flush(db: &str, slot: &str) -> String {
    crate::common::cluster()
        .psql(
            db,
            &format!(
                "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = '{slot}'"
            ),
        )
        .unwrap()
        .trim()
        .to_string()
}

/// The database name of a URL from `fresh_db`.
pub fn db_name(url: &str) -> String {
    url.rsplit('/').next().unwrap().to_string()
}

/// Runs SQL on a test database (psql: each statement its own transaction)
/// and returns its trimmed output.
pub fn sql(db: &str, sql: &str) -> String {
    crate::common::cluster()
        .psql(db, sql)
        .unwrap_or_else(|err| panic!("psql on {db} failed: {err}\n{sql}"))
        .trim()
        .to_string()
}

/// An LSN as text (`X/Y`) to a comparable number.
pub fn lsn(text: &str) -> u64 {
    let (hi, lo) = text
        .trim()
        .split_once('/')
        .unwrap_or_else(|| panic!("not an LSN: {text:?}"));
    let hi = u64::from_str_radix(hi, 16).unwrap_or_else(|_| panic!("not an LSN: {text:?}"));
    let lo = u64::from_str_radix(lo, 16).unwrap_or_else(|_| panic!("not an LSN: {text:?}"));
    (hi << 32) | lo
}

/// Polls `f` every `every` until it returns true; panics naming `what`
/// after `timeout`. For conditions too costly to check every 20 ms.
pub async fn wait_every<F, Fut>(timeout: Duration, every: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if f().await {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(every).await;
    }
}

/// Waits until the slot's confirmed_flush_lsn is at or past `target`:
/// walhook acknowledged everything committed before it.
pub async fn wait_flushed(db: &str, slot: &str, target: u64) {
    let what = format!("slot {slot} confirmed past {target:X}");
    wait_every(WAIT, Duration::from_millis(100), &what, || async {
        let flushed = confirmed_flush(db, slot);
        !flushed.is_empty() && lsn(&flushed) >= target
    })
    .await;
}

/// The server's current WAL insert position.
pub fn current_lsn(db: &str) -> u64 {
    lsn(&sql(db, "SELECT pg_current_wal_insert_lsn()"))
}

/// Runs `walhook run` with this config until it exits by itself (bounded
/// by [`WAIT`]); returns its exit code and stderr.
pub async fn run_to_exit(config: &str, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config).expect("writing config.toml");
    let mut cmd = Command::new(walhook_bin());
    cmd.arg("run")
        .arg("-c")
        .arg(&path)
        .current_dir(dir.path())
        .env("WALHOOK_LOG", "info")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(WAIT, cmd.output())
        .await
        .expect("walhook did not exit by itself")
        .expect("running walhook");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
