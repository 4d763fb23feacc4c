//! What must hold on every supported PostgreSQL version (14 to 18). CI
//! runs these, with the version-sensitive tests README's "Tested versions"
//! names, once per version (`WALHOOK_PG_VERSION`, see `.ci/run`).

mod generated;
mod partitions;

use crate::support::cluster;

/// The shared cluster runs the major version `WALHOOK_PG_VERSION` asks
/// for, and a supported one in any case.
#[tokio::test]
async fn the_server_runs_the_version_asked_for() {
    let num: u32 = tokio::task::spawn_blocking(|| {
        cluster()
            .psql("postgres", "SHOW server_version_num")
            .expect("psql")
    })
    .await
    .expect("psql task")
    .parse()
    .expect("server_version_num");
    assert!(
        (140_000..190_000).contains(&num),
        "PostgreSQL {num} is not one walhook supports (14 to 18)"
    );
    if let Ok(asked) = std::env::var("WALHOOK_PG_VERSION") {
        assert_eq!(num / 10_000, asked.parse::<u32>().expect("a major version"));
    }
}
