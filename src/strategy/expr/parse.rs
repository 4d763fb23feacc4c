//! Parsing with limits, so that no expression can exhaust a stack.
//!
//! evalexpr builds, evaluates, clones and drops its trees recursively: a
//! `!!!…!x` of 4,000 operators overflows a 2 MiB stack (a Tokio worker's)
//! while parsing, an `a || b || …` chain of 16,000 terms while being
//! dropped, and every pass walhook makes over a tree recurses too. An
//! overflowed stack aborts the process, which a reload must never do. The
//! parser is also quadratic in a run of prefix operators (40,000 `!` take
//! eleven minutes to parse). So:
//! - a text longer than [`MAX_BYTES`] is refused before it is parsed;
//! - so is a text whose nesting, read from the text alone ([`nesting`]:
//!   parentheses, runs of `!`, unary `-`, function calls without
//!   parentheses and assignments), exceeds [`MAX_DEPTH`];
//! - a text longer than [`INLINE_BYTES`] is parsed on a thread of its own
//!   with a stack large enough for [`MAX_BYTES`] levels (`!` nests one
//!   level per byte), and a tree deeper than [`MAX_DEPTH`] is dropped there;
//! - a tree deeper than [`MAX_DEPTH`] is refused, so evaluating, cloning
//!   and dropping what was accepted stays within a few hundred frames.

use evalexpr::Node;

/// The longest expression text accepted, in bytes.
pub(crate) const MAX_BYTES: usize = 64 * 1024;

/// The deepest tree accepted: parentheses, operators and function calls
/// each nest one level; a chain `a || b || c` nests one level per term.
pub(crate) const MAX_DEPTH: usize = 256;

/// Texts up to this length are parsed on the caller's stack: at most this
/// many levels, a few hundred KiB of stack in a debug build.
const INLINE_BYTES: usize = 512;

/// The stack of the parsing thread: about 700 bytes per level (debug
/// builds) for [`MAX_BYTES`] levels, doubled. Reserved, touched only as used.
const PARSE_STACK_BYTES: usize = 128 << 20;

/// Parses `text` within the limits; the error names the limit and the way
/// out, never the text.
pub(crate) fn parse(text: &str) -> Result<Node, String> {
    if text.len() > MAX_BYTES {
        return Err(format!(
            "is {} bytes long; an expression may be at most {MAX_BYTES} bytes (64 KiB): \
             compare with a list instead of a chain, e.g. contains((1, 2, 3), new.id)",
            text.len()
        ));
    }
    if let Some(levels) = nesting(text) {
        return Err(too_deep(&format!("more than {levels}")));
    }
    if text.len() <= INLINE_BYTES {
        return parse_bounded(text);
    }
    std::thread::scope(|scope| {
        let parsing = std::thread::Builder::new()
            .name("walhook-parse".into())
            .stack_size(PARSE_STACK_BYTES)
            .spawn_scoped(scope, || parse_bounded(text))
            .map_err(|err| format!("cannot be parsed now: no thread to parse it ({err})"))?;
        parsing
            .join()
            .unwrap_or_else(|_| Err("does not compile: the parser failed".into()))
    })
}

/// Parses and measures; a tree too deep is dropped here, on this stack.
fn parse_bounded(text: &str) -> Result<Node, String> {
    let tree =
        evalexpr::build_operator_tree(text).map_err(|err| format!("does not compile: {err}"))?;
    let depth = depth(&tree);
    if depth > MAX_DEPTH {
        return Err(too_deep(&depth.to_string()));
    }
    Ok(tree)
}

fn too_deep(levels: &str) -> String {
    format!(
        "nests {levels} levels deep; the limit is {MAX_DEPTH} (parentheses, operators and \
         function calls each nest one level, and a chain a || b || c one per term): \
         compare with a list instead of a chain, e.g. contains((1, 2, 3), new.id)"
    )
}

/// `Some(MAX_DEPTH)` when the text nests deeper than [`MAX_DEPTH`] by a
/// reading of the text alone, before evalexpr parses it: each open
/// parenthesis is a level, and so is each prefix construct in a row at
/// one level (`!`, a unary `-`, a word applied to what follows it,
/// `=`-assignments, which chain to the right). A binary operator ends the
/// row: the parser puts it above what came before. The tree's real depth
/// is measured after parsing; this bound keeps the parsing itself short.
fn nesting(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    // The prefix run of each open parenthesis level.
    let mut runs: Vec<usize> = vec![0];
    let mut total = 1usize;
    // The previous token ends a value (a word, a literal, `)`), and whether it was a word.
    let (mut after_value, mut after_word) = (false, false);
    let is_word = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':');
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let next = bytes.get(i + 1).copied();
        let mut prefix = false;
        match b {
            _ if b.is_ascii_whitespace() => {
                i += 1;
                continue;
            }
            b'"' => {
                i += 1;
                while let Some(&c) = bytes.get(i) {
                    i += if c == b'\\' { 2 } else { 1 };
                    if c == b'"' {
                        break;
                    }
                }
                prefix = after_word;
                (after_value, after_word) = (true, false);
            }
            b'(' => {
                if after_word {
                    if let Some(run) = runs.last_mut() {
                        *run += 1;
                        total += 1;
                    }
                }
                runs.push(0);
                total += 1;
                i += 1;
                (after_value, after_word) = (false, false);
            }
            b')' => {
                if runs.len() > 1 {
                    total -= 1 + runs.pop().unwrap_or(0);
                }
                i += 1;
                (after_value, after_word) = (true, false);
            }
            _ if is_word(b) => {
                while bytes.get(i).copied().is_some_and(is_word) {
                    i += 1;
                }
                prefix = after_word;
                (after_value, after_word) = (true, true);
            }
            b'!' if next != Some(b'=') => {
                i += 1;
                prefix = true;
                (after_value, after_word) = (false, false);
            }
            b'-' if !after_value && next != Some(b'=') => {
                i += 1;
                prefix = true;
                (after_value, after_word) = (false, false);
            }
            _ => {
                // An operator: the longest run of operator characters.
                let start = i;
                while bytes.get(i).is_some_and(|&c| {
                    !c.is_ascii_whitespace() && !is_word(c) && !b"\"()".contains(&c)
                }) {
                    i += 1;
                }
                let op = bytes.get(start..i).unwrap_or_default();
                let comparison = matches!(op, b"==" | b"!=" | b"<=" | b">=");
                if op.ends_with(b"=") && !comparison {
                    prefix = true;
                } else if let Some(run) = runs.last_mut() {
                    total -= *run;
                    *run = 0;
                }
                (after_value, after_word) = (false, false);
            }
        }
        if prefix {
            if let Some(run) = runs.last_mut() {
                *run += 1;
                total += 1;
            }
        }
        if total > MAX_DEPTH {
            return Some(MAX_DEPTH);
        }
    }
    None
}

/// The tree's depth, counted without recursion (the root node is level 0).
fn depth(tree: &Node) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(tree, 0usize)];
    while let Some((node, level)) = stack.pop() {
        deepest = deepest.max(level);
        stack.extend(node.children().iter().map(|child| (child, level + 1)));
    }
    deepest
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` on a thread with a Tokio worker's 2 MiB stack.
    fn on_small_stack<T: Send>(f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|scope| {
            std::thread::Builder::new()
                .stack_size(2 << 20)
                .spawn_scoped(scope, f)
                .expect("thread")
                .join()
                .expect("no panic")
        })
    }

    #[test]
    fn pathological_texts_are_refused_without_exhausting_a_small_stack() {
        let chain = |n: usize| {
            (0..n)
                .map(|i| format!("new.id == {i}"))
                .collect::<Vec<_>>()
                .join(" || ")
        };
        let cases = [
            // The filter: 80,000 terms, 1.5 MB.
            (chain(80_000), "bytes long"),
            (format!("{}true", "!".repeat(40_000)), "levels deep"),
            (
                format!("{}1{}", "(".repeat(30_000), ")".repeat(30_000)),
                "levels deep",
            ),
            (format!("{}1", "f ".repeat(30_000)), "levels deep"),
            (vec!["2"; 20_000].join("^"), "levels deep"),
            (chain(2_000), "levels deep"),
            (format!("{}1", "a = ".repeat(10_000)), "levels deep"),
            (format!("{}1", "-".repeat(300)), "levels deep"),
        ];
        for (text, wanted) in cases {
            let err = on_small_stack(|| parse(&text)).expect_err("refused");
            assert!(err.contains(wanted), "{err}");
            assert!(err.contains("contains((1, 2, 3), new.id)"), "{err}");
        }
    }

    #[test]
    fn large_but_flat_and_moderately_deep_texts_parse() {
        let ids = (0..5_000)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let flat = format!("contains(({ids}), new.id)");
        assert!(flat.len() > INLINE_BYTES);
        let deep = (0..200)
            .map(|i| format!("new.id == {i}"))
            .collect::<Vec<_>>()
            .join(" || ");
        for text in [flat, deep] {
            on_small_stack(|| parse(&text)).expect("parses");
        }
        assert_eq!(depth(&parse("1").unwrap()), 1);
        // Rows of prefixes under the limit, between binary operators, parse.
        let rows = (0..40)
            .map(|_| format!("({}true)", "!".repeat(200)))
            .collect::<Vec<_>>()
            .join(" || ");
        assert!(rows.len() < MAX_BYTES);
        on_small_stack(|| parse(&rows)).expect("parses");
    }

    #[test]
    fn nesting_reads_prefix_runs_and_parentheses() {
        assert_eq!(
            nesting("new.a > 1 && !(new.b == \"(((\") || -new.c < 5"),
            None
        );
        assert_eq!(nesting("a - b - c - d"), None);
        assert_eq!(nesting(&"!".repeat(MAX_DEPTH)), Some(MAX_DEPTH));
        assert_eq!(nesting(&format!("{}!x", "!x || ".repeat(2_000))), None);
        assert_eq!(nesting(&"(".repeat(MAX_DEPTH)), Some(MAX_DEPTH));
        assert_eq!(nesting(&"f ".repeat(MAX_DEPTH + 1)), Some(MAX_DEPTH));
        assert_eq!(
            nesting(&format!("{}1", "a = ".repeat(MAX_DEPTH))),
            Some(MAX_DEPTH)
        );
    }
}
