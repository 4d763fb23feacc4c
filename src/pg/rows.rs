//! The text rows of a simple query: what a walsender-mode (replication)
//! connection answers, and what `tokio_postgres::Client::simple_query`
//! returns. Catalog readers that must work on both (the slot queries) parse
//! from this one shape.

use tokio_postgres::SimpleQueryMessage;

/// The rows of a simple query, every value as the server's text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TextRows {
    pub(crate) columns: Vec<String>,
    pub(crate) rows: Vec<Vec<Option<String>>>,
}

impl TextRows {
    /// The value of `column` in row `row` (None for NULL or absent).
    pub(crate) fn get(&self, row: usize, column: &str) -> Option<&str> {
        let col = self.columns.iter().position(|c| c == column)?;
        self.rows.get(row)?.get(col)?.as_deref()
    }

    /// Runs `sql` (simple query protocol: values written into it with
    /// [`super::quote_literal`]) on an ordinary connection.
    pub(crate) async fn query(
        client: &tokio_postgres::Client,
        sql: &str,
    ) -> Result<TextRows, tokio_postgres::Error> {
        Ok(TextRows::from_simple(&client.simple_query(sql).await?))
    }

    /// The rows of the last result set among `messages`.
    pub(crate) fn from_simple(messages: &[SimpleQueryMessage]) -> TextRows {
        let mut out = TextRows::default();
        for message in messages {
            match message {
                SimpleQueryMessage::RowDescription(columns) => {
                    out = TextRows {
                        columns: columns.iter().map(|c| c.name().to_string()).collect(),
                        rows: Vec::new(),
                    };
                }
                SimpleQueryMessage::Row(row) => {
                    if out.columns.is_empty() {
                        out.columns = row.columns().iter().map(|c| c.name().to_string()).collect();
                    }
                    out.rows.push(
                        (0..row.len())
                            .map(|i| row.get(i).map(str::to_string))
                            .collect(),
                    );
                }
                _ => {}
            }
        }
        out
    }
}
