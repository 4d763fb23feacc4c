//! serde's messages in the words of the file: `expected usize` becomes
//! "expected a whole number (0 or more)", and an unknown key is answered
//! with the one it most likely meant before the list of keys allowed
//! there. Rewritten once, where every config error is made.

/// The message for a user, from serde's `message`.
pub(crate) fn humane(message: &str) -> String {
    if let Some(rest) = message.strip_prefix("unknown field `") {
        return unknown_key(rest).unwrap_or_else(|| message.to_string());
    }
    if let Some((found, expected)) = message
        .strip_prefix("invalid type: ")
        .or_else(|| message.strip_prefix("invalid value: "))
        .and_then(|rest| rest.split_once(", expected "))
    {
        return format!(
            "expected {}, found {}",
            type_words(expected),
            found_words(found)
        );
    }
    message.to_string()
}

/// `on_updat`, expected one of `name`, … → did you mean `on_update`?
fn unknown_key(rest: &str) -> Option<String> {
    let (key, tail) = rest.split_once('`')?;
    let known: Vec<&str> = tail
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|k| !k.is_empty())
        .collect();
    if known.is_empty() {
        return None;
    }
    let best = known
        .iter()
        .map(|k| (strsim::damerau_levenshtein(key, k), *k))
        .filter(|(d, k)| *d <= (k.len().max(key.len()) / 3).max(1))
        .min();
    let list = known
        .iter()
        .map(|k| format!("`{k}`"))
        .collect::<Vec<_>>()
        .join(", ");
    Some(match best {
        Some((_, k)) => format!("unknown key `{key}`: did you mean `{k}`? (allowed here: {list})"),
        None => format!("unknown key `{key}` (allowed here: {list})"),
    })
}

fn type_words(expected: &str) -> String {
    let words = match expected {
        "usize" | "u64" | "u32" | "u16" | "u8" => "a whole number (0 or more)",
        "isize" | "i64" | "i32" | "i16" | "i8" => "a whole number",
        "f64" | "f32" => "a number",
        "a boolean" | "bool" => "true or false",
        "a string" => "text in quotes (durations read \"15s\", sizes \"64MiB\")",
        "a sequence" => "a list: [ … ]",
        "a map" => "a table: { … }",
        other if other.starts_with("struct ") => "a table: { … }",
        other => return other.to_string(),
    };
    words.to_string()
}

fn found_words(found: &str) -> String {
    if let Some(text) = found.strip_prefix("string ") {
        return format!("text {text}");
    }
    for (prefix, noun) in [
        ("integer ", "the number "),
        ("floating point ", "the number "),
        ("boolean ", ""),
    ] {
        if let Some(value) = found.strip_prefix(prefix) {
            return format!("{noun}{}", value.trim_matches('`'));
        }
    }
    match found {
        "sequence" => "a list".to_string(),
        "map" => "a table".to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::humane;

    #[test]
    fn type_names_read_as_the_file_does() {
        assert_eq!(
            humane("invalid type: string \"ten\", expected usize"),
            "expected a whole number (0 or more), found text \"ten\""
        );
        assert_eq!(
            humane("invalid value: integer `-1`, expected usize"),
            "expected a whole number (0 or more), found the number -1"
        );
        assert!(humane("invalid type: integer `5`, expected a string")
            .starts_with("expected text in quotes (durations read \"15s\""));
        assert_eq!(humane("something else"), "something else");
    }

    #[test]
    fn an_unknown_key_names_the_one_meant() {
        let m =
            humane("unknown field `on_updat`, expected one of `name`, `on_update`, `on_delete`");
        assert!(
            m.starts_with(
                "unknown key `on_updat`: did you mean `on_update`? (allowed here: `name`,"
            ),
            "{m}"
        );
        let m = humane("unknown field `zzz`, expected one of `name`, `table`");
        assert_eq!(m, "unknown key `zzz` (allowed here: `name`, `table`)");
        let m = humane("unknown field `batchsize`, expected `batch_size`");
        assert!(m.contains("did you mean `batch_size`?"), "{m}");
    }
}
