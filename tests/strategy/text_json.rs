//! Text and JSON filters through `walhook run`: each filter with
//! `starts_with`, `ends_with`, `contains`, `matches` or `json` selects
//! exactly the rows its SQL `WHERE` twin selects, on a table with text and
//! jsonb columns, NULLs, JSON nulls and missing paths; a bad regular
//! expression or path is a load error naming the field.

use std::collections::BTreeMap;

use crate::support::walhook::base_config;
use crate::support::{fresh_db, Receiver, Walhook, WAIT};

/// (strategy name, walhook filter, the SQL `WHERE` selecting the same rows).
const FILTERS: &[(&str, &str, &str)] = &[
    (
        "starts",
        r#"starts_with(new.name, "al")"#,
        "name LIKE 'al%'",
    ),
    ("ends", r#"ends_with(new.name, "d")"#, "name LIKE '%d'"),
    (
        "contains",
        r#"contains(new.profile, "gold")"#,
        "profile LIKE '%gold%'",
    ),
    (
        "not_contains",
        r#"!contains(new.profile, "gold")"#,
        "NOT (profile LIKE '%gold%')",
    ),
    (
        "regex",
        r#"matches(new.name, "^[A-Z][0-9]+$")"#,
        "name ~ '^[A-Z][0-9]+$'",
    ),
    (
        "tier",
        r#"json(new.doc, "customer.tier") == "gold""#,
        "doc #>> '{customer,tier}' = 'gold'",
    ),
    (
        "score",
        r#"json(new.doc, "customer.score") > 50"#,
        "doc #> '{customer,score}' > '50'::jsonb",
    ),
    (
        "no_tier",
        r#"is_null(json(new.doc, "customer.tier"))"#,
        "doc #>> '{customer,tier}' IS NULL",
    ),
    (
        "vip",
        r#"json(new.doc, "customer.vip") == true && !is_null(new.name)"#,
        "doc #> '{customer,vip}' = 'true'::jsonb AND name IS NOT NULL",
    ),
    (
        "either",
        r#"starts_with(new.name, "a") || json(new.doc, "tags.0") == "a""#,
        "name LIKE 'a%' OR doc #>> '{tags,0}' = 'a'",
    ),
];

const ROWS: &str = r#"
INSERT INTO profiles VALUES
  (1, 'alice',  'gold member',   '{"customer":{"tier":"gold","score":90,"vip":true},"tags":["a","b"]}'),
  (2, 'bob',    'silver',        '{"customer":{"tier":"silver","score":40}}'),
  (3, NULL,     NULL,            NULL),
  (4, 'alfred', 'Gold',          '{"customer":{}}'),
  (5, 'al',     'goldfinch',     '{"customer":{"tier":null,"score":75.5,"vip":false}}'),
  (6, 'carol',  '',              '{"other":1,"tags":["a"]}'),
  (7, 'A123',   'platinum gold', '{"customer":{"tier":"gold","score":"high","vip":true}}'),
  (8, 'Ann',    'bronze',        '[1,2]'),
  (9, 'ed',     NULL,            '{"customer":{"tier":"gold","score":50,"vip":"true"}}'),
  (10, NULL,    'gold',          '{"customer":{"tier":"gold","score":51,"vip":true}}');
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_and_json_filters_select_what_sql_where_selects() {
    let db = fresh_db("filters_text_json").await;
    db.psql("CREATE TABLE profiles (id int PRIMARY KEY, name text, profile text, doc jsonb)")
        .await;
    let receiver = Receiver::start().await;
    let mut config = format!(
        "{}[endpoints.hook]\nurl = \"{}\"\n\n",
        base_config(&db.url(), "filters_text_json", "filters_text_json"),
        receiver.url("/hook")
    );
    for (name, filter, _) in FILTERS {
        config.push_str(&format!(
            "[[strategies]]\nname = \"{name}\"\ntable = \"profiles\"\nendpoint = \"hook\"\n\
             on_insert = '{filter}'\nbatch_size = 100\n\n"
        ));
    }
    let mut walhook = Walhook::run(&config).spawn();
    walhook.wait_streaming(&db, "filters_text_json").await;
    db.psql(ROWS).await;

    let mut expected: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for (name, _, sql) in FILTERS {
        let ids = db
            .psql(&format!(
                "SELECT coalesce(string_agg(id::text, ',' ORDER BY id), '') FROM profiles WHERE {sql}"
            ))
            .await;
        let ids: Vec<i64> = ids
            .trim()
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().unwrap())
            .collect();
        expected.insert(name, ids);
    }
    let total: usize = expected.values().map(Vec::len).sum();
    receiver.wait_accepted_records(total, WAIT).await;
    // A graceful stop delivers whatever is still queued: any record a
    // filter let through wrongly would be in `got`.
    walhook.stop().await;

    let mut got: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for request in receiver.accepted() {
        let body = request.json();
        let strategy = body["strategy"].as_str().unwrap().to_string();
        let (name, _, _) = FILTERS.iter().find(|(n, _, _)| *n == strategy).unwrap();
        got.entry(name).or_default().extend(request.new_ids());
    }
    for (name, ids) in &mut got {
        ids.sort_unstable();
        assert!(!ids.is_empty() || expected[name].is_empty());
    }
    for (name, _, _) in FILTERS {
        got.entry(name).or_default();
    }
    assert_eq!(got, expected);
    // The rows cover what the filters must tell apart.
    assert!(expected.values().all(|ids| !ids.is_empty()), "{expected:?}");
}

#[tokio::test]
async fn a_bad_regex_or_json_path_is_a_load_error_naming_the_field() {
    for (filter, message) in [
        (
            r#"matches(new.name, "(unclosed")"#,
            "regular expression does not compile",
        ),
        (r#"json(new.doc, "customer..tier") == 1"#, "empty key"),
        (
            r#"matches(new.name, new.pattern)"#,
            "regular expression as text",
        ),
        (
            r#"str::regex_matches(new.name, "a")"#,
            "use matches(x, \"regex\")",
        ),
    ] {
        let config = format!(
            "{}[endpoints.hook]\nurl = \"http://127.0.0.1:9/hook\"\n\n[[strategies]]\n\
             name = \"s\"\ntable = \"profiles\"\nendpoint = \"hook\"\non_insert = '{filter}'\n",
            base_config(
                "postgres://nobody@127.0.0.1:9/none",
                "filters_bad",
                "filters_bad"
            )
        );
        let output = Walhook::run(&config).output().await;
        assert_eq!(output.code(), Some(2), "{filter}: {}", output.stderr);
        assert!(
            output.stderr.contains("strategies[0].on_insert") && output.stderr.contains(message),
            "{filter}: {}",
            output.stderr
        );
    }
}
