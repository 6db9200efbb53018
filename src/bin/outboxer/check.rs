//! `outboxer check`: can a relay start here? The store reachable, the table
//! migrated, the stream reachable; one line per check on stdout, exit 0 or 1.

use crate::connect::{display_url, open_store, open_stream};
use crate::fail::Fail;
use crate::settings::Target;
use outboxer::{Store, Stream};

/// Why a table cannot be read, from the database's own words: missing, or
/// missing columns (not migrated: an older outboxer or a Go outboxer table).
fn table_problem(message: &str) -> String {
    let m = message.to_ascii_lowercase();
    let missing_table = (m.contains("relation") && m.contains("does not exist"))
        || (m.contains("table") && m.contains("doesn't exist"))
        || m.contains("no such table")
        || m.contains("invalid object name");
    let missing_column = (m.contains("column") && m.contains("does not exist"))
        || m.contains("unknown column")
        || m.contains("no such column")
        || m.contains("invalid column name");
    if missing_table {
        "missing: run `outboxer migrate` (or `outboxer relay --migrate`)".into()
    } else if missing_column {
        format!(
            "not migrated (a Go outboxer table or an older outboxer table): \
             run `outboxer migrate` to upgrade it ({message})"
        )
    } else {
        format!("cannot be read: {message}")
    }
}

/// Reads what the relay and `stats` read, touching every column they use (the
/// indexes are listed apart: `Store::missing_indexes`).
fn read_table(store: &dyn Store) -> outboxer::Result<outboxer::store::Stats> {
    let stats = store.stats()?;
    store.attempts_histogram()?;
    store.parked(1)?;
    store.held_keys(1)?;
    Ok(stats)
}

fn line(what: &str, text: &str) {
    println!("{what:<7} {text}");
}

pub fn run(target: &Target, stream: Option<&str>) -> Result<(), Fail> {
    let table = target.table.as_deref().unwrap_or("event_store");
    let shown = display_url(&target.store);
    let mut failed = Vec::new();
    match open_store(&target.store, Some(table)) {
        Err(f) if f.code == crate::fail::USAGE => return Err(f),
        Err(f) => {
            let why = if f.tls { "TLS" } else { "unreachable" };
            line("store", &format!("{shown}: {why}: {}", f.message));
            failed.push(format!("store {why}"));
        }
        Ok(store) => {
            line("store", &format!("{shown}: connected"));
            match read_table(&*store).and_then(|s| Ok((s, store.missing_indexes()?))) {
                Ok((_, Some(missing))) if !missing.is_empty() => {
                    line(
                        "table",
                        &format!(
                            "{table}: not migrated: indexes missing: {}: run `outboxer migrate`",
                            missing.join(", ")
                        ),
                    );
                    failed.push("table not migrated".to_string());
                }
                Ok((s, indexes)) => line(
                    "table",
                    &format!(
                        "{table}: migrated (pending {}, parked {}, dispatched {}{})",
                        s.pending,
                        s.parked,
                        s.dispatched,
                        if indexes.is_some() {
                            ""
                        } else {
                            "; indexes not inspected on this store"
                        }
                    ),
                ),
                Err(e) => {
                    let f = Fail::from(e);
                    let problem = table_problem(&f.message);
                    line("table", &format!("{table}: {problem}"));
                    failed.push(if problem.starts_with("missing") {
                        "table missing".to_string()
                    } else if problem.starts_with("not migrated") {
                        "table not migrated".to_string()
                    } else {
                        "table unreadable".to_string()
                    });
                }
            }
        }
    }
    match stream {
        None => line(
            "stream",
            "not given (--stream, OUTBOXER_STREAM or the config file): not checked",
        ),
        Some(url) => {
            let shown = outboxer::redact_url(url);
            // The constructor connects where the stream has a connection (AMQP);
            // `Stream::connect` is what the relay's start checks for every stream.
            let connected = open_stream(url).and_then(|mut s| {
                let r = s.connect().map_err(Fail::from);
                s.close();
                r
            });
            match connected {
                Ok(()) => line("stream", &format!("{shown}: connected")),
                Err(f) if f.code == crate::fail::USAGE => return Err(f),
                Err(f) => {
                    let why = if f.tls { "TLS" } else { "unreachable" };
                    line("stream", &format!("{shown}: {why}: {}", f.message));
                    failed.push(format!("stream {why}"));
                }
            }
        }
    }
    if failed.is_empty() {
        println!("ok");
        Ok(())
    } else {
        Err(Fail::runtime(format!(
            "check failed: {}",
            failed.join(", ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::table_problem;

    #[test]
    fn table_problems_of_each_database() {
        for missing in [
            r#"database error while reading stats: relation "public.x" does not exist"#,
            "Table 'test.x' doesn't exist",
            "no such table: x",
            "Invalid object name 'dbo.x'.",
        ] {
            assert!(table_problem(missing).starts_with("missing"), "{missing}");
        }
        for old in [
            r#"column "status" does not exist"#,
            "Unknown column 'status' in 'where clause'",
            "no such column: status",
            "Invalid column name 'status'.",
        ] {
            assert!(table_problem(old).starts_with("not migrated"), "{old}");
        }
    }
}
