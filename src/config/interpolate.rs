//! `${VAR}` interpolation from the environment.
//!
//! It applies to string values after TOML parsing, never to the raw text: a
//! value containing quotes or newlines cannot change the file's structure, and
//! a `${…}` in a comment means nothing. Numbers and booleans are not
//! interpolated (durations are strings, so `timeout = "${TIMEOUT:-15s}"` works).
//!
//! - `${VAR}`: the variable's value; an error when it is unset.
//! - `${VAR:-default}`: the default when the variable is unset or empty.
//! - `${VAR:?message}`: an error carrying `message` when it is unset or empty.
//! - `$$`: a literal `$`. A `$` not followed by `{` or `$` stays as it is.

/// Replaces every `${…}` in `input` using `lookup`; on failure, the message
/// names the variable, never a value.
pub(crate) fn interpolate(
    input: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        let after = &rest[dollar + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body.find('}').ok_or_else(|| {
                "unterminated `${`: close it with `}` (write `$$` for a literal `$`)".to_string()
            })?;
            out.push_str(&expand(&body[..end], lookup)?);
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Expands the inside of one `${…}`.
fn expand(spec: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let name_end = spec.find(':').unwrap_or(spec.len());
    let (name, modifier) = spec.split_at(name_end);
    let valid = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(format!(
            "`${{{spec}}}` is not a valid variable reference: use ${{NAME}}, ${{NAME:-default}} or ${{NAME:?message}}"
        ));
    }
    let value = lookup(name);
    if modifier.is_empty() {
        return value.ok_or_else(|| {
            format!(
                "environment variable {name} is not set (use ${{{name}:-default}} for a default)"
            )
        });
    }
    let set = value.filter(|v| !v.is_empty());
    if let Some(default) = modifier.strip_prefix(":-") {
        Ok(set.unwrap_or_else(|| default.to_string()))
    } else if let Some(message) = modifier.strip_prefix(":?") {
        set.ok_or_else(|| {
            if message.is_empty() {
                format!("environment variable {name} is not set or empty")
            } else {
                format!("environment variable {name}: {message}")
            }
        })
    } else {
        Err(format!(
            "`${{{spec}}}`: unknown modifier; use ${{{name}:-default}} or ${{{name}:?message}}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("db.internal".into()),
            "EMPTY" => Some(String::new()),
            "SECRET" => Some("s3cret".into()),
            _ => None,
        }
    }

    fn run(input: &str) -> Result<String, String> {
        interpolate(input, &env)
    }

    #[test]
    fn substitutes_variables() {
        assert_eq!(
            run("postgres://${HOST}:5432/x").unwrap(),
            "postgres://db.internal:5432/x"
        );
        assert_eq!(run("${HOST}${HOST}").unwrap(), "db.internal".repeat(2));
        assert_eq!(run("${EMPTY}").unwrap(), "");
        assert_eq!(run("no variables").unwrap(), "no variables");
    }

    #[test]
    fn defaults_apply_when_unset_or_empty() {
        assert_eq!(run("${MISSING:-fallback}").unwrap(), "fallback");
        assert_eq!(run("${EMPTY:-fallback}").unwrap(), "fallback");
        assert_eq!(run("${HOST:-fallback}").unwrap(), "db.internal");
        assert_eq!(run("${MISSING:-}").unwrap(), "");
        assert_eq!(run("${MISSING:-a:b-c}").unwrap(), "a:b-c");
    }

    #[test]
    fn required_variables_fail_with_the_message() {
        let err = run("${MISSING:?set it to the orders API secret}").unwrap_err();
        assert_eq!(
            err,
            "environment variable MISSING: set it to the orders API secret"
        );
        let err = run("${EMPTY:?}").unwrap_err();
        assert!(err.contains("EMPTY is not set or empty"), "{err}");
        assert_eq!(run("${SECRET:?x}").unwrap(), "s3cret");
    }

    #[test]
    fn unset_variable_is_an_error_naming_it() {
        let err = run("x${MISSING}y").unwrap_err();
        assert!(err.contains("MISSING is not set"), "{err}");
    }

    #[test]
    fn dollars_escape_and_pass_through() {
        assert_eq!(run("$${HOST}").unwrap(), "${HOST}");
        assert_eq!(run("cost: $5 $$").unwrap(), "cost: $5 $");
        assert_eq!(run("trailing $").unwrap(), "trailing $");
    }

    #[test]
    fn malformed_references_are_errors() {
        assert!(run("${HOST").unwrap_err().contains("unterminated"));
        assert!(run("${1X}").unwrap_err().contains("not a valid variable"));
        assert!(run("${}").unwrap_err().contains("not a valid variable"));
        assert!(run("${HOST:+x}").unwrap_err().contains("unknown modifier"));
    }

    #[test]
    fn errors_never_contain_values() {
        let err = run("${SECRET:+x}").unwrap_err();
        assert!(!err.contains("s3cret"), "{err}");
    }
}
