//! A silent network partition between walhook and PostgreSQL: walhook
//! runs in a network namespace the test creates (iproute2), reaching the
//! database through one veth pair (cut by setting its end down: every
//! packet is dropped, nothing is refused) and serving its admin API and
//! reaching its receiver through another that stays up. The server's
//! `wal_sender_timeout` is 10 s for walhook's role.
//!
//! What a user checks: `/readyz` turns unready within `wal_sender_timeout`
//! (the server's own limit, read from the server), and after the link
//! heals a new row arrives within seconds. Both bounds are the protocol's
//! (the server gives up on a silent walsender at `wal_sender_timeout`),
//! not speed targets: before this change walhook noticed at twice that, and
//! a healed link waited for TCP's backed-off retransmissions.

use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};

use crate::parking::{attached, records, TOKEN};
use crate::support::{free_port, poll_until, wait_until, Receiver, Walhook, WAIT};

/// The server's `wal_sender_timeout` for walhook's role.
const WAL_SENDER_TIMEOUT: Duration = Duration::from_secs(10);

/// A network namespace with two veth pairs to the host (see the module doc).
struct Netns {
    name: String,
    db_link: String,
    /// The host's end of the database link (the forwarder listens there).
    db_host: Ipv4Addr,
    /// The host's end of the admin link (the receiver listens there).
    admin_host: Ipv4Addr,
    /// The namespace's end of the admin link (walhook's admin API).
    admin_ns: Ipv4Addr,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("running ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Netns {
    fn create() -> Result<Netns, String> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let tag = format!("{}{n}", std::process::id() % 100_000);
        let third = ((std::process::id() + n) % 250) as u8;
        let name = format!("whp{tag}");
        let ns = Netns {
            db_link: format!("whd{tag}"),
            db_host: Ipv4Addr::new(10, 211, third, 1),
            admin_host: Ipv4Addr::new(10, 212, third, 1),
            admin_ns: Ipv4Addr::new(10, 212, third, 2),
            name,
        };
        ip(&["netns", "add", &ns.name])?;
        let admin_link = format!("wha{tag}");
        for (link, host, inside) in [
            (&ns.db_link, ns.db_host, Ipv4Addr::new(10, 211, third, 2)),
            (&admin_link, ns.admin_host, ns.admin_ns),
        ] {
            let peer = format!("{link}p");
            ip(&["link", "add", link, "type", "veth", "peer", "name", &peer])?;
            ip(&["link", "set", &peer, "netns", &ns.name])?;
            ip(&["addr", "add", &format!("{host}/30"), "dev", link])?;
            ip(&["link", "set", link, "up"])?;
            ip(&[
                "netns",
                "exec",
                &ns.name,
                "ip",
                "addr",
                "add",
                &format!("{inside}/30"),
                "dev",
                &peer,
            ])?;
            ip(&["netns", "exec", &ns.name, "ip", "link", "set", &peer, "up"])?;
        }
        ip(&["netns", "exec", &ns.name, "ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Cuts the database link: every packet either way is dropped.
    fn partition(&self) {
        let peer = format!("{}p", self.db_link);
        ip(&[
            "netns", "exec", &self.name, "ip", "link", "set", &peer, "down",
        ])
        .expect("cut the link");
    }

    fn heal(&self) {
        let peer = format!("{}p", self.db_link);
        ip(&[
            "netns", "exec", &self.name, "ip", "link", "set", &peer, "up",
        ])
        .expect("heal the link");
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes the veth ends in it, and their peers.
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// Forwards connections on `listen` to PostgreSQL on 127.0.0.1:`port`.
async fn forwarder(listen: Ipv4Addr, port: u16) -> u16 {
    let listener = TcpListener::bind((listen, 0))
        .await
        .expect("bind the forwarder");
    let local = listener.local_addr().expect("address").port();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", port)).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    local
}

async fn readyz(admin: (IpAddr, u16)) -> Option<(u16, String)> {
    let response = reqwest::Client::new()
        .get(format!("http://{}:{}/readyz", admin.0, admin.1))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?;
    let code = response.status().as_u16();
    Some((code, response.text().await.ok()?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_partition_is_seen_within_wal_sender_timeout_and_a_healed_link_is_used_at_once() {
    let ns = Netns::create()
        .unwrap_or_else(|e| panic!("this test needs network namespaces (root, iproute2): {e}"));
    let name = "part_idle";
    let (db, _) = attached(name).await;
    let role = format!("{name}_app");
    db.psql(&format!(
        "ALTER ROLE {role} SET wal_sender_timeout = '{}s'",
        WAL_SENDER_TIMEOUT.as_secs()
    ))
    .await;
    let via = forwarder(ns.db_host, db.cluster().port()).await;
    let url = format!(
        "postgres://{role}:pw-{role}@{}:{via}/{}?sslmode=disable",
        ns.db_host,
        db.name()
    );
    let rx = Receiver::start_on(IpAddr::V4(ns.admin_host)).await;
    let port = free_port();
    let admin = (IpAddr::V4(ns.admin_ns), port);
    let config = format!(
        r#"[source]
url = "{url}"
slot = "{name}"
publication = "{name}"

[admin]
listen = "{}:{port}"
token = "{TOKEN}"

[endpoints.hook]
url = "{}"

[[strategies]]
name = "orders"
table = "public.orders"
endpoint = "hook"
on_insert = "true"
linger = "10ms"
"#,
        ns.admin_ns,
        rx.url("/hook")
    );
    let mut walhook = Walhook::run(&config).in_netns(&ns.name).spawn();
    walhook.wait_streaming(&db, name).await;
    wait_until(WAIT, "/readyz ready", || async {
        readyz(admin).await == Some((200, "ready\n".to_string()))
    })
    .await;
    db.psql("INSERT INTO orders VALUES (1, 0, 'before')").await;
    rx.wait_accepted_records(1, WAIT).await;

    // An idle partition: nothing refused, every packet dropped.
    ns.partition();
    let cut = Instant::now();
    let seen = poll_until(WAL_SENDER_TIMEOUT + Duration::from_secs(2), || async {
        matches!(readyz(admin).await, Some((503, _)))
    })
    .await;
    let noticed = cut.elapsed();
    assert!(
        seen,
        "/readyz still ready {noticed:?} after the partition (wal_sender_timeout {WAL_SENDER_TIMEOUT:?}); stderr:\n{}",
        walhook.stderr()
    );
    // Past the server's timeout the walsender is gone; the link then heals.
    wait_until(WAIT, "the server to drop the silent walsender", || async {
        db.active_pid(name).await.is_none()
    })
    .await;
    ns.heal();
    let healed = Instant::now();
    db.psql("INSERT INTO orders VALUES (2, 0, 'after')").await;
    wait_until(WAIT, "the row written after the heal", || async {
        rx.accepted().iter().flat_map(records).any(|g| g.id == 2)
    })
    .await;
    let back = healed.elapsed();
    eprintln!(
        "partition noticed after {noticed:?}; a row written after the heal arrived {back:?} later"
    );
    assert!(
        back < WAL_SENDER_TIMEOUT,
        "the healed link was used only after {back:?}"
    );
    wait_until(WAIT, "/readyz ready again", || async {
        readyz(admin).await == Some((200, "ready\n".to_string()))
    })
    .await;
    walhook.stop().await;
}
