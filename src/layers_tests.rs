//! The whiteboard rules of the module tree, checked on the source: which
//! top-level module (`src/<name>.rs` or `src/<name>/`) may name which, read
//! from every `crate::<name>` path outside test code. A rule broken here is
//! a layer that started to depend on one above it (the domain on the HTTP
//! layer, `pg/` on the pipeline), which compiles fine and is found late.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Top-level module → the top-level modules its non-test code names.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&src, &mut files);
    let test_only = test_only_files(&files);
    let path_re = regex::Regex::new(r"\bcrate::([a-z_0-9]+)").expect("regex");
    // `use crate::{a, b::c}`: the names in the braces.
    let group_re = regex::Regex::new(r"\bcrate::\{([^}]*)").expect("regex");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        if test_only.contains(file) {
            continue;
        }
        let rel = file.strip_prefix(&src).expect("under src");
        let top = rel
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .expect("utf-8 path")
            .trim_end_matches(".rs")
            .to_string();
        if top == "lib" || top == "main" || top == "layers_tests" {
            continue;
        }
        let text = fs::read_to_string(file).expect("readable source");
        let named = graph.entry(top.clone()).or_default();
        // Joined, so a `use crate::{…}` group may span lines.
        let code = code_lines(&text).join("\n");
        let mut names: Vec<&str> = path_re
            .captures_iter(&code)
            .filter_map(|c| c.get(1).map(|m| m.as_str()))
            .collect();
        for group in group_re.captures_iter(&code) {
            let Some(items) = group.get(1) else { continue };
            names.extend(items.as_str().split(',').filter_map(|item| {
                item.trim()
                    .split("::")
                    .next()
                    .filter(|name| !name.is_empty())
            }));
        }
        for name in names {
            if name != top && name != "self" {
                named.insert(name.to_string());
            }
        }
    }
    graph
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("readable src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            walk(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Files declared `#[cfg(test)] mod name;` by their parent.
fn test_only_files(files: &[PathBuf]) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    for file in files {
        let text = fs::read_to_string(file).expect("readable source");
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        let dir = match file.file_name().and_then(|n| n.to_str()) {
            Some("mod.rs" | "lib.rs" | "main.rs") => file.parent().expect("parent").to_path_buf(),
            _ => file.with_extension(""),
        };
        for pair in lines.windows(2) {
            let Some(name) = pair[1]
                .strip_prefix("mod ")
                .and_then(|rest| rest.strip_suffix(';'))
            else {
                continue;
            };
            if pair[0] == "#[cfg(test)]" {
                out.insert(dir.join(format!("{name}.rs")));
                out.insert(dir.join(name).join("mod.rs"));
            }
        }
    }
    out
}

/// The file's lines before its inline `#[cfg(test)] mod … {`, without
/// comments.
fn code_lines(text: &str) -> Vec<&str> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim();
        if trimmed == "#[cfg(test)]"
            && lines
                .get(i + 1)
                .is_some_and(|next| next.trim().starts_with("mod ") && next.trim().ends_with('{'))
        {
            break;
        }
        if trimmed.starts_with("//") {
            continue;
        }
        out.push(line.split("//").next().unwrap_or(line));
    }
    out
}

fn names<'a>(graph: &'a BTreeMap<String, BTreeSet<String>>, module: &str) -> &'a BTreeSet<String> {
    graph
        .get(module)
        .unwrap_or_else(|| panic!("no module {module} in src/"))
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let graph = imports();
    let mut both = Vec::new();
    for (a, named) in &graph {
        for b in named {
            if a < b && graph.get(b).is_some_and(|back| back.contains(a)) {
                both.push(format!("{a} <-> {b}"));
            }
        }
    }
    assert!(both.is_empty(), "modules importing each other: {both:?}");
}

#[test]
fn the_whiteboard_rules_hold() {
    let graph = imports();
    let mut broken = Vec::new();
    let mut rule = |module: &str, allowed: &dyn Fn(&str) -> bool, why: &str| {
        for name in names(&graph, module) {
            if !allowed(name) {
                broken.push(format!("{module} imports {name}: {why}"));
            }
        }
    };
    const LEAVES: [&str; 5] = [
        "lsn",
        "timestamp",
        "words",
        "replica_identity",
        "error_class",
    ];
    let leaf = |name: &str| LEAVES.contains(&name);
    rule("decode", &leaf, "decode is pure (bytes in, events out)");
    rule("config", &leaf, "config is data");
    rule(
        "pg",
        &|name| leaf(name) || name == "config",
        "pg/ knows nothing of pipelines",
    );
    for domain in ["runs", "delivery"] {
        rule(
            domain,
            &|name| name != "admin" && name != "cluster" && name != "app",
            "the domain never imports the HTTP layer, the application or the throwaway cluster",
        );
    }
    for leaf_module in LEAVES {
        rule(
            leaf_module,
            &|_| false,
            "a leaf imports nothing of the crate",
        );
    }
    assert!(broken.is_empty(), "{broken:#?}");
}

/// The scan sees what it must: a rule that holds because nothing was read
/// would hold for the wrong reason.
#[test]
fn the_scan_reads_the_tree() {
    let graph = imports();
    assert!(names(&graph, "app").contains("source"), "{graph:?}");
    assert!(names(&graph, "admin").contains("control"), "{graph:?}");
    assert!(names(&graph, "runs").contains("control"), "{graph:?}");
    assert!(
        names(&graph, "pg").contains("replica_identity"),
        "{graph:?}"
    );
}
