//! SQL identifier validation: table names never reach SQL unchecked.

use crate::{Error, Result};

/// A validated, optionally schema-qualified table name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableName {
    schema: Option<String>,
    table: String,
}

/// Longest part we accept: leaves room for the `_pending_key_idx` style suffixes
/// within PostgreSQL's 63-byte and MySQL's 64-byte identifier limits.
const MAX_PART: usize = 40;

impl TableName {
    /// Parses `table` or `schema.table`; each part `[A-Za-z_][A-Za-z0-9_]*`, at most 40 bytes.
    pub fn parse(name: &str) -> Result<Self> {
        let bad = |reason| Error::InvalidIdentifier {
            name: name.to_string(),
            reason,
        };
        let mut parts = name.split('.');
        let first = parts.next().unwrap_or_default();
        let second = parts.next();
        if parts.next().is_some() {
            return Err(bad("at most one dot (schema.table)"));
        }
        for part in std::iter::once(first).chain(second) {
            if part.is_empty() {
                return Err(bad("empty name"));
            }
            if part.len() > MAX_PART {
                return Err(bad("longer than 40 bytes"));
            }
            let mut chars = part.chars();
            let head = chars.next().unwrap_or('0');
            if !(head.is_ascii_alphabetic() || head == '_') {
                return Err(bad("must start with a letter or underscore"));
            }
            if !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(bad(
                    "only ASCII letters, digits and underscores are allowed",
                ));
            }
        }
        Ok(match second {
            Some(table) => TableName {
                schema: Some(first.to_string()),
                table: table.to_string(),
            },
            None => TableName {
                schema: None,
                table: first.to_string(),
            },
        })
    }

    /// The unqualified table name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The schema, if given.
    pub fn schema(&self) -> Option<&str> {
        self.schema.as_deref()
    }

    /// Double-quoted for PostgreSQL / SQL standard: `"schema"."table"`.
    pub fn quoted(&self) -> String {
        match &self.schema {
            Some(s) => format!("\"{s}\".\"{}\"", self.table),
            None => format!("\"{}\"", self.table),
        }
    }

    /// A derived object name (index, channel), quoted: `"table_suffix"`.
    pub fn derived(&self, suffix: &str) -> String {
        format!("\"{}_{suffix}\"", self.table)
    }

    /// The name as written, `schema.table` or `table`.
    pub fn plain(&self) -> String {
        match &self.schema {
            Some(s) => format!("{s}.{}", self.table),
            None => self.table.clone(),
        }
    }

    /// A stable 32-bit number for advisory locks, derived from the name (FNV-1a).
    pub fn lock_space(&self) -> i32 {
        let mut h: u32 = 0x811c_9dc5;
        for b in self.plain().bytes() {
            h ^= u32::from(b);
            h = h.wrapping_mul(0x0100_0193);
        }
        i32::from_ne_bytes(h.to_ne_bytes())
    }
}

impl Default for TableName {
    fn default() -> Self {
        TableName {
            schema: None,
            table: "event_store".to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_and_qualified() {
        assert_eq!(
            TableName::parse("event_store").map(|t| t.quoted()).ok(),
            Some("\"event_store\"".into())
        );
        let t = TableName::parse("app.Outbox_2").expect("valid");
        assert_eq!(t.quoted(), "\"app\".\"Outbox_2\"");
        assert_eq!(t.derived("idx"), "\"Outbox_2_idx\"");
    }

    #[test]
    fn rejects_injection_and_junk() {
        for bad in [
            "",
            "a.b.c",
            "1abc",
            "x; DROP TABLE y",
            "x\"y",
            "a-b",
            "é",
            ".x",
            "x.",
            &"a".repeat(41),
        ] {
            assert!(
                matches!(TableName::parse(bad), Err(Error::InvalidIdentifier { .. })),
                "{bad:?} accepted"
            );
        }
    }
}
