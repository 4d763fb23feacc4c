//! Mapping values: fixed text, or an expression evaluated at send time.

use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

/// A header, query, body or record value: a literal (`"prod"`, `2`, `true`)
/// or `{ expr = "…" }`, an evalexpr expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Template {
    /// A fixed value, used as is (as text in headers and query strings).
    Literal(serde_json::Value),
    /// An expression, compiled once at load.
    Expr(String),
}

impl Template {
    /// The expression, if this is one.
    pub(crate) fn expr(&self) -> Option<&str> {
        match self {
            Template::Expr(expr) => Some(expr),
            Template::Literal(_) => None,
        }
    }

    /// A literal as header or query text: strings as they are, numbers and
    /// booleans in their JSON spelling. `None` for expressions.
    pub(crate) fn literal_text(&self) -> Option<String> {
        match self {
            Template::Literal(serde_json::Value::String(s)) => Some(s.clone()),
            Template::Literal(other) => Some(other.to_string()),
            Template::Expr(_) => None,
        }
    }
}

impl<'de> Deserialize<'de> for Template {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(TemplateVisitor)
    }
}

struct TemplateVisitor;

impl<'de> Visitor<'de> for TemplateVisitor {
    type Value = Template;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("text, a number, a boolean or { expr = \"…\" }")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Template, E> {
        Ok(Template::Literal(v.into()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Template, E> {
        Ok(Template::Literal(v.into()))
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Template, E> {
        Ok(Template::Literal(v.into()))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Template, E> {
        Ok(Template::Literal(v.into()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Template, E> {
        Ok(Template::Literal(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Template, E> {
        serde_json::Number::from_f64(v)
            .map(|n| Template::Literal(serde_json::Value::Number(n)))
            .ok_or_else(|| E::custom("NaN and infinity cannot be literals"))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Template, A::Error> {
        let mut expr = None;
        while let Some(key) = map.next_key::<String>()? {
            if key != "expr" {
                return Err(de::Error::custom(format!(
                    "unknown key `{key}`: a computed value is written {{ expr = \"…\" }}"
                )));
            }
            expr = Some(map.next_value::<String>()?);
        }
        expr.map(Template::Expr)
            .ok_or_else(|| de::Error::custom("missing `expr`: write { expr = \"…\" }"))
    }
}
