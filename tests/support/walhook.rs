//! The built walhook binary as a child process, run as a user runs it: in
//! a temp dir of its own (where its `config.toml` is written), stdout
//! collected line by line and stderr as text by tasks of the test's
//! runtime, stopped by signal. Also the config text and the admin API
//! calls the tests share.

use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use super::{free_port, poll_until, Db, WAIT};

/// Variables that would change how walhook behaves if the developer's
/// shell set them; a test sets what it wants.
const CLEARED_ENV: [&str; 8] = [
    "NO_COLOR",
    "WALHOOK_LOG",
    "WALHOOK_DATABASE_URL",
    "WALHOOK_ADMIN_TOKEN",
    "WALHOOK_RECEIVE_SECRET",
    "WALHOOK_RECEIVE_BASIC",
    "WALHOOK_RECEIVE_BEARER",
    "WALHOOK_RECEIVE_API_KEY",
];

/// How to start walhook: arguments, a config file, environment.
#[must_use]
pub(crate) struct WalhookCommand {
    args: Vec<String>,
    config: Option<String>,
    env: Vec<(String, String)>,
    /// Run inside this network namespace (`ip netns exec`).
    netns: Option<String>,
}

impl WalhookCommand {
    /// Writes `text` to `config.toml` in the process's directory (its
    /// current directory, so `-c config.toml` and the default find it).
    pub(crate) fn config(mut self, text: &str) -> Self {
        self.config = Some(text.to_string());
        self
    }

    pub(crate) fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_string(), value.to_string()));
        self
    }

    pub(crate) fn envs(self, vars: &[(&str, &str)]) -> Self {
        vars.iter().fold(self, |cmd, (k, v)| cmd.env(k, v))
    }

    /// Runs it inside network namespace `name` (`ip netns exec` execs it,
    /// so the pid is walhook's).
    pub(crate) fn in_netns(mut self, name: &str) -> Self {
        self.netns = Some(name.to_string());
        self
    }

    /// Starts the process.
    pub(crate) fn spawn(self) -> Walhook {
        let dir = tempfile::tempdir().expect("temp dir");
        if let Some(text) = &self.config {
            std::fs::write(dir.path().join("config.toml"), text).expect("writing config.toml");
        }
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", ns, env!("CARGO_BIN_EXE_walhook")]);
                cmd
            }
            None => Command::new(env!("CARGO_BIN_EXE_walhook")),
        };
        cmd.args(&self.args)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for name in CLEARED_ENV {
            cmd.env_remove(name);
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        let mut child = cmd.spawn().expect("spawning walhook");
        let pid = child.id().expect("walhook pid");

        let lines = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().expect("piped stdout");
        let collected = lines.clone();
        let stdout_reader = tokio::spawn(async move {
            let mut stdout = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = stdout.next_line().await {
                collected.lock().unwrap().push(line);
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().expect("piped stderr");
        let text = stderr.clone();
        let stderr_reader = tokio::spawn(async move {
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
            lines,
            stderr,
            stdout_reader,
            stderr_reader,
            dir,
        }
    }

    /// Runs the process until it exits by itself (within [`WAIT`]).
    pub(crate) async fn output(self) -> Exited {
        let mut walhook = self.spawn();
        let status = walhook.wait_exit(WAIT).await;
        Exited {
            status,
            stdout: walhook.stdout(),
            stderr: walhook.stderr(),
        }
    }
}

impl WalhookCommand {
    /// Runs the process with stdout and stderr on a new pseudo-terminal (a
    /// user's shell: 120 columns, `TERM=xterm-256color` unless set) until it
    /// exits by itself (within [`WAIT`]); its exit status and what the
    /// terminal got, escape codes kept.
    pub(crate) async fn on_a_terminal(self) -> (ExitStatus, String) {
        use std::io::Read;
        use std::os::fd::{FromRawFd, OwnedFd};

        let dir = tempfile::tempdir().expect("temp dir");
        if let Some(text) = &self.config {
            std::fs::write(dir.path().join("config.toml"), text).expect("writing config.toml");
        }
        let (mut master, mut slave) = (-1, -1);
        let size = libc::winsize {
            ws_row: 40,
            ws_col: 120,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: openpty writes two fds into the pointers; the name and
        // termios arguments may be null, the window size is read only.
        let rc = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                &size,
            )
        };
        assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
        // SAFETY: both fds were just opened by openpty and are owned here only.
        let (master, slave) =
            unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_walhook"));
        command
            .args(&self.args)
            .current_dir(dir.path())
            .env("TERM", "xterm-256color")
            .stdin(Stdio::null())
            .stdout(Stdio::from(slave.try_clone().expect("dup pty")))
            .stderr(Stdio::from(slave));
        for name in CLEARED_ENV {
            command.env_remove(name);
        }
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        let mut child = command.spawn().expect("spawning walhook");
        let pid = child.id();
        // Our copies of the slave end went into `command`; drop them so
        // that reading ends (EIO) once walhook has exited.
        drop(command);
        let reading = tokio::task::spawn_blocking(move || {
            let mut terminal = std::fs::File::from(master);
            let mut bytes = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                match terminal.read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => bytes.extend_from_slice(&chunk[..n]),
                    // Linux answers EIO once no process holds the slave end.
                    Err(e) if e.raw_os_error() == Some(libc::EIO) => break,
                    Err(e) => panic!("reading the terminal: {e}"),
                }
            }
            let status = child.wait().expect("waiting for walhook");
            (status, String::from_utf8_lossy(&bytes).into_owned())
        });
        match tokio::time::timeout(WAIT, reading).await {
            Ok(done) => done.expect("terminal task"),
            Err(_) => {
                // SAFETY: kill has no memory effects; pid is our child's.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                panic!("walhook on a terminal did not exit within {WAIT:?}");
            }
        }
    }
}

/// A finished walhook: how it exited and what it printed.
#[derive(Debug)]
pub(crate) struct Exited {
    pub(crate) status: ExitStatus,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Exited {
    pub(crate) fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

/// A running walhook.
pub(crate) struct Walhook {
    child: Child,
    pid: u32,
    lines: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
    stdout_reader: JoinHandle<()>,
    stderr_reader: JoinHandle<()>,
    /// Its current directory, removed when it is dropped.
    dir: tempfile::TempDir,
}

impl Walhook {
    /// `walhook ARGS`, with nothing set yet.
    pub(crate) fn command(args: &[&str]) -> WalhookCommand {
        WalhookCommand {
            args: args.iter().map(|a| a.to_string()).collect(),
            config: None,
            env: Vec::new(),
            netns: None,
        }
    }

    /// `walhook run -c config.toml` with this config, logging at info.
    pub(crate) fn run(config: &str) -> WalhookCommand {
        Walhook::command(&["run", "-c", "config.toml"])
            .config(config)
            .env("WALHOOK_LOG", "info")
    }

    /// `walhook run -c config.toml --stdout` with this config, logging at info.
    pub(crate) fn run_stdout(config: &str) -> WalhookCommand {
        Walhook::command(&["run", "-c", "config.toml", "--stdout"])
            .config(config)
            .env("WALHOOK_LOG", "info")
    }

    /// Replaces its `config.toml` (written aside, then renamed, so a reload
    /// never reads half a file).
    pub(crate) fn rewrite_config(&self, text: &str) {
        let dir = self.dir.path();
        std::fs::write(dir.join("config.toml.new"), text).expect("writing config.toml.new");
        std::fs::rename(dir.join("config.toml.new"), dir.join("config.toml"))
            .expect("replacing config.toml");
    }

    /// The lines printed to stdout so far.
    pub(crate) fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// How many lines were printed so far.
    pub(crate) fn line_count(&self) -> usize {
        self.lines.lock().unwrap().len()
    }

    /// Everything printed to stdout so far, one `\n` after each line.
    pub(crate) fn stdout(&self) -> String {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .map(|l| format!("{l}\n"))
            .collect()
    }

    /// The lines printed so far, each parsed as JSON.
    pub(crate) fn records(&self) -> Vec<Value> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }

    /// Everything written to stderr so far.
    pub(crate) fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until the printed lines satisfy `f`; panics with stderr otherwise.
    pub(crate) async fn wait_lines(
        &self,
        timeout: Duration,
        what: &str,
        f: impl Fn(&[String]) -> bool,
    ) {
        let done = poll_until(timeout, || async { f(&self.lines.lock().unwrap()) }).await;
        if !done {
            panic!(
                "timed out after {timeout:?} waiting for {what}; {} lines printed; stderr:\n{}",
                self.line_count(),
                self.stderr()
            );
        }
    }

    /// Waits until at least `n` lines were printed and returns them parsed.
    pub(crate) async fn wait_records(&self, n: usize) -> Vec<Value> {
        self.wait_lines(WAIT, &format!("{n} lines"), |l| l.len() >= n)
            .await;
        self.records()
    }

    /// Waits until stderr satisfies `f`; panics with stderr otherwise.
    pub(crate) async fn wait_stderr(&self, what: &str, f: impl Fn(&str) -> bool) {
        let done = poll_until(WAIT, || async { f(&self.stderr.lock().unwrap()) }).await;
        if !done {
            panic!(
                "timed out after {WAIT:?} waiting for {what}; stderr:\n{}",
                self.stderr()
            );
        }
    }

    /// Waits until walhook streams from `slot` (its walsender has started
    /// replication); fails with its stderr if it exits first.
    pub(crate) async fn wait_streaming(&mut self, db: &Db, slot: &str) {
        let mut exited = None;
        let streaming = poll_until(WAIT, || {
            if exited.is_none() {
                exited = self.child.try_wait().ok().flatten();
            }
            let gone = exited.is_some();
            async move { gone || db.is_streaming(slot).await }
        })
        .await;
        if let Some(status) = exited {
            // Let the stderr reader copy the last lines.
            let _ = tokio::time::timeout(WAIT, &mut self.stderr_reader).await;
            panic!(
                "walhook exited ({status}) before streaming from {slot}:\n{}",
                self.stderr()
            );
        }
        if !streaming {
            panic!(
                "walhook is not streaming from {slot} after {WAIT:?}; stderr:\n{}",
                self.stderr()
            );
        }
    }

    /// The process's peak resident set size in KiB (VmHWM), while it runs.
    pub(crate) fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .expect("reading /proc/<pid>/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/<pid>/status")
    }

    /// Whether the process is still running.
    pub(crate) fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Closes the read end of stdout, as a consumer that went away would.
    pub(crate) async fn close_stdout(&mut self) {
        self.stdout_reader.abort();
        let _ = (&mut self.stdout_reader).await;
    }

    /// Sends `signal` (a libc number) to the process.
    pub(crate) fn signal(&self, signal: i32) {
        // SAFETY: kill(2) with a pid we spawned and still own (not yet reaped).
        let rc = unsafe { libc::kill(self.pid as i32, signal) };
        assert_eq!(rc, 0, "kill({}, {signal})", self.pid);
    }

    /// Waits for the process to exit, then for stdout and stderr to be read
    /// to their end.
    pub(crate) async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let status = match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => status.expect("waiting for walhook"),
            Err(_) => panic!(
                "walhook did not exit within {timeout:?}; stderr:\n{}",
                self.stderr()
            ),
        };
        if !self.stdout_reader.is_finished() {
            let _ = tokio::time::timeout(WAIT, &mut self.stdout_reader).await;
        }
        if !self.stderr_reader.is_finished() {
            let _ = tokio::time::timeout(WAIT, &mut self.stderr_reader).await;
        }
        status
    }

    /// Asserts it still runs, sends SIGTERM and asserts a clean exit (0);
    /// returns what it wrote to stderr.
    pub(crate) async fn stop(mut self) -> String {
        assert!(self.is_running(), "walhook exited:\n{}", self.stderr());
        self.signal(libc::SIGTERM);
        let status = self.wait_exit(WAIT).await;
        let stderr = self.stderr();
        assert!(status.success(), "exit {status:?}; stderr:\n{stderr}");
        stderr
    }

    /// SIGKILL, then wait for the exit.
    pub(crate) async fn kill9(&mut self) -> ExitStatus {
        self.signal(libc::SIGKILL);
        self.wait_exit(WAIT).await
    }
}

/// README's step for the administrator: runs what `walhook setup
/// --print-sql` prints for `config` in `db` (as the superuser).
pub(crate) async fn admin_runs_printed_setup(db: &Db, config: &str) {
    let out = Walhook::command(&["setup", "--print-sql", "-c", "config.toml"])
        .config(config)
        .output()
        .await;
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    db.try_psql(&out.stdout)
        .await
        .unwrap_or_else(|e| panic!("the admin runs the printed SQL: {e}\n{}", out.stdout));
}

/// `[source]` for a database URL, slot and publication, and `[admin]` on a
/// free port.
pub(crate) fn base_config(url: &str, slot: &str, publication: &str) -> String {
    base_config_with_admin(url, slot, publication, free_port())
}

/// Like [`base_config`], with the admin server on a given port (from
/// [`free_port`]) so the test can call it.
pub(crate) fn base_config_with_admin(
    url: &str,
    slot: &str,
    publication: &str,
    port: u16,
) -> String {
    format!(
        "[source]\nurl = \"{url}\"\nslot = \"{slot}\"\npublication = \"{publication}\"\n\n\
         [admin]\nlisten = \"127.0.0.1:{port}\"\n\n"
    )
}

/// `GET http://127.0.0.1:{port}{path}`: status and body; `None` while
/// nothing answers (not yet listening).
pub(crate) async fn admin_get(port: u16, path: &str) -> Option<(u16, String)> {
    let response = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}{path}"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .ok()?;
    let code = response.status().as_u16();
    Some((code, response.text().await.ok()?))
}

/// `method` on the admin API with `token` as the bearer: the status and body
/// (panics when the admin API does not answer).
pub(crate) async fn admin_call(
    method: reqwest::Method,
    port: u16,
    path: &str,
    token: &str,
) -> (u16, String) {
    let response = reqwest::Client::new()
        .request(method, format!("http://127.0.0.1:{port}{path}"))
        .bearer_auth(token)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .expect("admin API answers");
    let code = response.status().as_u16();
    (code, response.text().await.unwrap_or_default())
}

/// The sum of every sample of `name` in a Prometheus text scrape whose
/// labels contain each of `labels` (`key="value"`); `None` when no sample
/// matches.
pub(crate) fn metric_sum(scrape: &str, name: &str, labels: &[&str]) -> Option<f64> {
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
