//! Startup validation of strategies against a real database, and creating
//! the publication.

use walhook::config::Config;
use walhook::strategy::{ensure_publication, validate_schema, PublicationOutcome, SchemaProblem};

use crate::support::fresh_db;

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    tokio::spawn(connection);
    client
}

fn config(url: &str, strategies: &str) -> Config {
    let text = format!(
        r#"
[source]
url = "{url}"
publication = "hooks"

[endpoints.a]
url = "http://127.0.0.1:9000/a"

{strategies}
"#
    );
    Config::parse(&text, &|_| None).unwrap_or_else(|e| panic!("config: {e}"))
}

/// A database with `orders` (primary key id) and `customers`.
async fn db(prefix: &str) -> (String, tokio_postgres::Client) {
    let url = fresh_db(prefix).await.url();
    let client = connect(&url).await;
    client
        .batch_execute(
            "CREATE TABLE orders (id bigint PRIMARY KEY, amount numeric, status text);
             CREATE TABLE customers (id int PRIMARY KEY, name text);",
        )
        .await
        .unwrap();
    (url, client)
}

async fn problems(client: &tokio_postgres::Client, config: &Config) -> Vec<SchemaProblem> {
    validate_schema(client, config).await.unwrap()
}

#[tokio::test]
async fn a_valid_config_has_no_problems() {
    let (url, client) = db("schema_valid").await;
    let cfg = config(
        &url,
        r#"
[[strategies]]
name = "big"
table = "orders"
endpoint = "a"
on_insert = "new.amount > 100"
on_update = 'changed("id") || old.id != new.id'
on_delete = "row.id > 0"
record = { id = { expr = "row.id" } }
"#,
    );
    assert_eq!(problems(&client, &cfg).await, []);
}

#[tokio::test]
async fn a_missing_table_is_named_with_its_strategy() {
    let (url, client) = db("schema_missing_table").await;
    let cfg = config(
        &url,
        r#"
[[strategies]]
name = "ghost"
table = "public.nope"
endpoint = "a"
on_insert = "true"
"#,
    );
    let found = problems(&client, &cfg).await;
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].strategy, "ghost");
    assert_eq!(found[0].path, "strategies[0].table");
    assert!(found[0].problem.contains("public.nope does not exist"));
}

#[tokio::test]
async fn a_table_outside_the_publication_gives_the_alter() {
    let (url, client) = db("schema_not_published").await;
    client
        .batch_execute("CREATE PUBLICATION hooks FOR TABLE customers")
        .await
        .unwrap();
    let cfg = config(
        &url,
        r#"
[[strategies]]
name = "orders"
table = "orders"
endpoint = "a"
on_insert = "true"
"#,
    );
    let found = problems(&client, &cfg).await;
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].path, "strategies[0].table");
    assert_eq!(
        found[0].fix,
        "ALTER PUBLICATION hooks ADD TABLE public.orders;"
    );
    // Running the fix is enough.
    client.batch_execute(&found[0].fix).await.unwrap();
    assert_eq!(problems(&client, &cfg).await, []);
}

#[tokio::test]
async fn a_publication_without_deletes_is_reported() {
    let (url, client) = db("schema_no_deletes").await;
    client
        .batch_execute(
            "CREATE PUBLICATION hooks FOR TABLE orders WITH (publish = 'insert, update')",
        )
        .await
        .unwrap();
    let cfg = config(
        &url,
        r#"
[[strategies]]
name = "gone"
table = "orders"
endpoint = "a"
on_delete = "true"
"#,
    );
    let found = problems(&client, &cfg).await;
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].path, "strategies[0].on_delete");
    assert!(found[0].problem.contains("does not publish deletes"));
}

#[tokio::test]
async fn a_missing_column_is_named_at_its_field() {
    let (url, client) = db("schema_missing_column").await;
    let cfg = config(
        &url,
        r#"
[[strategies]]
name = "typo"
table = "orders"
endpoint = "a"
on_insert = "new.amout > 100"
record = { s = { expr = "row.state" }, id = { expr = "row.id" } }
"#,
    );
    let found = problems(&client, &cfg).await;
    let lines: Vec<String> = found.iter().map(ToString::to_string).collect();
    assert_eq!(found.len(), 2, "{lines:#?}");
    assert_eq!(found[0].path, "strategies[0].on_insert");
    assert!(found[0].problem.contains("no column \"amout\""));
    assert!(
        found[0].fix.contains("id, amount, status"),
        "{}",
        found[0].fix
    );
    assert_eq!(found[1].path, "strategies[0].record.s");
    assert!(found[1].problem.contains("no column \"state\""));
}

#[tokio::test]
async fn old_non_key_columns_need_replica_identity_full() {
    let (url, client) = db("schema_identity").await;
    let cfg = config(
        &url,
        r#"
[[strategies]]
name = "status"
table = "orders"
endpoint = "a"
on_update = 'changed("status") && old.id == new.id'
on_delete = "row.amount > 5"
"#,
    );
    let found = problems(&client, &cfg).await;
    let lines: Vec<String> = found.iter().map(ToString::to_string).collect();
    assert_eq!(found.len(), 2, "{lines:#?}");
    assert_eq!(found[0].path, "strategies[0].on_update");
    assert!(found[0].problem.contains("REPLICA IDENTITY DEFAULT"));
    assert!(found[0].problem.contains("status"));
    assert_eq!(
        found[0].fix,
        "ALTER TABLE public.orders REPLICA IDENTITY FULL; or use new.* only"
    );
    assert_eq!(found[1].path, "strategies[0].on_delete");
    assert!(found[1].problem.contains("amount"));
    client
        .batch_execute("ALTER TABLE orders REPLICA IDENTITY FULL")
        .await
        .unwrap();
    assert_eq!(problems(&client, &cfg).await, []);
}

#[tokio::test]
async fn ensure_publication_creates_once_and_never_alters() {
    let (url, client) = db("schema_publication").await;
    let two = r#"
[[strategies]]
name = "o"
table = "orders"
endpoint = "a"
on_insert = "true"

[[strategies]]
name = "o2"
table = "public.orders"
endpoint = "a"
on_update = "true"
"#;
    let cfg = config(&url, two);
    let outcome = ensure_publication(&client, &cfg).await.unwrap();
    let PublicationOutcome::Created { tables } = outcome else {
        panic!("expected Created, got {outcome:?}");
    };
    assert_eq!(tables.len(), 1, "one table, named twice");
    assert_eq!(published(&client).await, ["public.orders"]);
    assert_eq!(
        ensure_publication(&client, &cfg).await.unwrap(),
        PublicationOutcome::Existing
    );

    // A new strategy on another table: the publication is left alone, and
    // validation says what to run.
    let cfg = config(
        &url,
        &format!(
            "{two}
[[strategies]]
name = \"c\"
table = \"customers\"
endpoint = \"a\"
on_insert = \"true\"
"
        ),
    );
    assert_eq!(
        ensure_publication(&client, &cfg).await.unwrap(),
        PublicationOutcome::Existing
    );
    assert_eq!(published(&client).await, ["public.orders"]);
    let found = problems(&client, &cfg).await;
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(
        found[0].fix,
        "ALTER PUBLICATION hooks ADD TABLE public.customers;"
    );
}

async fn published(client: &tokio_postgres::Client) -> Vec<String> {
    client
        .query(
            "SELECT schemaname || '.' || tablename FROM pg_publication_tables \
             WHERE pubname = 'hooks' ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect()
}
