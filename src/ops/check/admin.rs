//! The admin address, checked before `run` needs it: a port another
//! program holds would otherwise be found only when `walhook run` starts
//! (and exits 1). A walhook already serving there (the one `check` is run
//! beside) is fine; anything else is an error naming the address.

use std::net::SocketAddr;
use std::time::Duration;

use super::{Finding, Severity};
use crate::config::Config;

/// How long the probe of a busy address waits for an answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

pub(super) async fn admin(config: &Config, out: &mut Vec<Finding>) {
    let addr = config.admin.listen;
    let check = "admin";
    let finding = match tokio::net::TcpListener::bind(addr).await {
        Ok(_) => Finding::new(
            Severity::Ok,
            check,
            format!("admin address {addr} is free for walhook run"),
        ),
        Err(err) if err.kind() == std::io::ErrorKind::AddrInUse => {
            if walhook_answers(addr).await {
                Finding::new(
                    Severity::Ok,
                    check,
                    format!("admin address {addr}: a walhook is serving there"),
                )
            } else {
                Finding::new(
                    Severity::Error,
                    check,
                    format!(
                        "admin address {addr} is in use by another program: walhook run \
                         would fail to start"
                    ),
                )
                .fix(format!(
                    "set [admin] listen to a free address (e.g. 127.0.0.1:{}), or stop what \
                     listens on {addr} (ss -ltnp 'sport = :{}')",
                    addr.port().wrapping_add(1).max(1024),
                    addr.port()
                ))
            }
        }
        Err(err) => Finding::new(
            Severity::Error,
            check,
            format!("cannot listen on admin address {addr}: {err}"),
        )
        .fix("set [admin] listen to an address of this host"),
    };
    out.push(finding);
}

/// Whether a walhook's admin API answers at `addr` (its `/status`).
async fn walhook_answers(addr: SocketAddr) -> bool {
    let Ok(client) = reqwest::Client::builder()
        .timeout(PROBE_TIMEOUT)
        .no_proxy()
        .build()
    else {
        return false;
    };
    let host = if addr.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        addr.ip().to_string()
    };
    let url = if host.contains(':') {
        format!("http://[{host}]:{}/status", addr.port())
    } else {
        format!("http://{host}:{}/status", addr.port())
    };
    let Ok(response) = client.get(url).send().await else {
        return false;
    };
    let Ok(body) = response.bytes().await else {
        return false;
    };
    match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(doc) => doc.get("slot").is_some() && doc.get("strategies").is_some(),
        Err(_) => false,
    }
}
