//! `walhook check` tests the admin address `run` will listen on: taken by
//! another program it is an error naming the address (before, only `run`
//! found it, and exited); taken by a walhook serving there (the one check
//! runs beside), it is fine.

use serde_json::Value;

use crate::support::walhook::{admin_get, base_config_with_admin};
use crate::support::{free_port, fresh_db, wait_until, Walhook, WAIT};

fn admin_finding(stdout: &str) -> Value {
    let doc: Value = serde_json::from_str(stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    doc["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["check"] == "admin")
        .cloned()
        .unwrap_or_else(|| panic!("no admin finding in {stdout}"))
}

#[tokio::test]
async fn check_finds_the_admin_port_taken_by_another_program() {
    let db = fresh_db("check_admin").await;
    db.psql("CREATE TABLE t (id int PRIMARY KEY)").await;
    let port = free_port();
    let config = format!(
        "{}[endpoints.hook]\nurl = \"http://127.0.0.1:9/hook\"\n\n\
         [[strategies]]\nname = \"s\"\ntable = \"t\"\nendpoint = \"hook\"\non_insert = \"true\"\n",
        base_config_with_admin(&db.url(), "check_admin", "check_admin", port)
    );

    let other = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let out = Walhook::command(&["check", "--json", "--no-network"])
        .config(&config)
        .output()
        .await;
    assert_eq!(out.code(), Some(1), "{}{}", out.stdout, out.stderr);
    let finding = admin_finding(&out.stdout);
    assert_eq!(finding["severity"], "error", "{finding}");
    let message = finding["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("127.0.0.1:{port} is in use by another program")),
        "{finding}"
    );
    assert!(
        finding["fix"].as_str().unwrap().contains("[admin] listen"),
        "{finding}"
    );
    drop(other);

    let walhook = Walhook::run(&config).spawn();
    wait_until(WAIT, "walhook's admin API", || async {
        admin_get(port, "/status").await.is_some()
    })
    .await;
    let out = Walhook::command(&["check", "--json", "--no-network"])
        .config(&config)
        .output()
        .await;
    let finding = admin_finding(&out.stdout);
    assert_eq!(finding["severity"], "ok", "{finding}");
    assert!(
        finding["message"]
            .as_str()
            .unwrap()
            .contains("a walhook is serving there"),
        "{finding}"
    );
    walhook.stop().await;
}
