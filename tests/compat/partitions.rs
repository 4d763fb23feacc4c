//! Partitioned tables: the strategy names the partitioned table; its
//! partitions' changes arrive under that name, filtered and batched like
//! any table's (the publication is created WITH publish_via_partition_root).

use serde_json::Value;

use crate::support::walhook::base_config;
use crate::support::{fresh_db, Receiver, Walhook, WAIT};

const ORDERS: &str = "CREATE TABLE public.orders (id int, region text, amount numeric, \
                      PRIMARY KEY (id, region)) PARTITION BY LIST (region);
     CREATE TABLE public.orders_eu PARTITION OF public.orders FOR VALUES IN ('eu');
     CREATE TABLE public.orders_us PARTITION OF public.orders FOR VALUES IN ('us');
     CREATE TABLE public.orders_asia PARTITION OF public.orders FOR VALUES IN ('asia');";

fn config(url: &str, name: &str, hook: &Receiver) -> String {
    format!(
        "{}[endpoints.hook]\nurl = \"{}\"\n\n\
         [[strategies]]\nname = \"big\"\ntable = \"public.orders\"\nendpoint = \"hook\"\n\
         on_insert = \"new.amount > 100\"\non_update = \"true\"\nbatch_size = 2\nlinger = \"50ms\"\n",
        base_config(url, name, name),
        hook.url("/hook")
    )
}

/// Inserts into each of three partitions arrive as `public.orders`; the
/// filter drops the small ones; batches hold at most `batch_size` records;
/// an update that moves a row to another partition arrives too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_tables_changes_arrive_under_its_own_name() {
    let db = fresh_db("part_orders").await;
    db.psql(ORDERS).await;
    let hook = Receiver::start().await;
    let config = config(&db.url(), "part_orders", &hook);
    let mut walhook = Walhook::run(&config).spawn();
    walhook.wait_streaming(&db, "part_orders").await;

    db.psql(
        "INSERT INTO public.orders VALUES (1, 'eu', 500), (2, 'us', 5), (3, 'asia', 300);
         INSERT INTO public.orders VALUES (4, 'us', 900), (5, 'eu', 50), (6, 'asia', 700);",
    )
    .await;
    hook.wait_accepted_records(4, WAIT).await;
    let records = hook.accepted_records();
    let tables: Vec<String> = records
        .iter()
        .map(|r| {
            format!(
                "{}.{}",
                r["schema"].as_str().unwrap_or(""),
                r["table"].as_str().unwrap_or("")
            )
        })
        .collect();
    assert!(tables.iter().all(|t| t == "public.orders"), "{tables:?}");
    let ids: Vec<i64> = records
        .iter()
        .filter_map(|r| r["new"]["id"].as_i64())
        .collect();
    assert_eq!(
        ids,
        [1, 3, 4, 6],
        "the big ones from every partition, in commit order"
    );
    let sizes: Vec<usize> = hook
        .accepted()
        .iter()
        .map(|r| r.json()["records"].as_array().map_or(0, Vec::len))
        .collect();
    assert!(sizes.iter().all(|&n| (1..=2).contains(&n)), "{sizes:?}");

    // A row that moves to another partition (a delete there, an insert
    // here) still reaches the strategy under the parent's name.
    db.psql("UPDATE public.orders SET region = 'us' WHERE id = 1")
        .await;
    hook.wait_accepted_records(5, WAIT).await;
    let moved: Vec<Value> = hook.accepted_records().split_off(4);
    assert_eq!(moved[0]["table"], "orders", "{moved:?}");
    assert_eq!(moved[0]["new"]["region"], "us", "{moved:?}");
    walhook.stop().await;
}
