//! Generated columns: logical replication sends them only from PostgreSQL
//! 18, and only when the publication says `publish_generated_columns =
//! stored`. A filter that reads one the stream does not carry is refused
//! at load (and by `check`) with the reason, instead of a warning per event.

use crate::support::walhook::base_config;
use crate::support::{fresh_db, Receiver, Walhook, WAIT};

fn config(url: &str, name: &str, hook: &Receiver) -> String {
    format!(
        "{}[endpoints.hook]\nurl = \"{}\"\n\n\
         [[strategies]]\nname = \"doubled\"\ntable = \"public.orders\"\nendpoint = \"hook\"\n\
         on_insert = \"new.total > 100\"\nlinger = \"10ms\"\n",
        base_config(url, name, name),
        hook.url("/hook")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_on_a_generated_column_the_stream_lacks_is_refused_at_load() {
    let db = fresh_db("gen_cols").await;
    db.psql(
        "CREATE TABLE public.orders (id int PRIMARY KEY, amount numeric,
                                     total numeric GENERATED ALWAYS AS (amount * 2) STORED);
         CREATE PUBLICATION gen_cols FOR TABLE public.orders;",
    )
    .await;
    let version: u32 = db
        .psql("SHOW server_version_num")
        .await
        .parse()
        .expect("version");
    let hook = Receiver::start().await;
    let config = config(&db.url(), "gen_cols", &hook);

    let reason = if version < 180_000 {
        "does not send generated columns before PostgreSQL 18"
    } else {
        "publication gen_cols does not publish generated columns"
    };
    let expected = "column total of table public.orders is a generated column, and";
    let out = Walhook::run(&config).output().await;
    assert_eq!(out.code(), Some(2), "{}", out.stderr);
    assert!(
        out.stderr.contains("strategies[0].on_insert")
            && out.stderr.contains(expected)
            && out.stderr.contains(reason),
        "{}",
        out.stderr
    );
    let out = Walhook::command(&["check", "--no-network", "-c", "config.toml"])
        .config(&config)
        .output()
        .await;
    assert_eq!(out.code(), Some(1), "{}", out.stdout);
    let finding = out
        .stdout
        .lines()
        .find(|l| l.contains(expected))
        .unwrap_or_else(|| panic!("no finding:\n{}", out.stdout));
    assert!(
        finding.starts_with("error strategies[0].on_insert") && finding.contains(reason),
        "{finding}"
    );
    assert!(finding.contains("— fix: "), "{finding}");

    if version >= 180_000 {
        // PostgreSQL 18: the fix check names works, and the value arrives.
        assert!(
            finding
                .contains("ALTER PUBLICATION gen_cols SET (publish_generated_columns = stored);"),
            "{finding}"
        );
        db.psql("ALTER PUBLICATION gen_cols SET (publish_generated_columns = stored)")
            .await;
        let mut walhook = Walhook::run(&config).spawn();
        walhook.wait_streaming(&db, "gen_cols").await;
        db.psql("INSERT INTO public.orders (id, amount) VALUES (1, 10), (2, 70)")
            .await;
        hook.wait_accepted_records(1, WAIT).await;
        let records = hook.accepted_records();
        assert_eq!(records[0]["new"]["id"], 2);
        assert_eq!(records[0]["new"]["total"], 140);
        walhook.stop().await;
    }
}
