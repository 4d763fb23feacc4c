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
