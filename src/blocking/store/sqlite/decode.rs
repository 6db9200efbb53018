//! Reading rows back: claimed rows into messages (SQLite keeps any type in any
//! column, so each is checked), and columns shown to an operator.

use super::connection::db;
use super::*;

/// A 16-byte blob as the store writes it, or UUID text from a hand-written row.
pub(super) fn message_id_of(v: ValueRef<'_>) -> Option<MessageId> {
    let uuid = match v {
        ValueRef::Blob(b) => uuid::Uuid::from_slice(b).ok(),
        ValueRef::Text(t) => std::str::from_utf8(t)
            .ok()
            .and_then(|s| uuid::Uuid::parse_str(s).ok()),
        _ => None,
    };
    uuid.map(MessageId::from_uuid)
}

/// A column shown to an operator, whatever type a writer gave it.
pub(super) fn text_of(v: ValueRef<'_>) -> Option<String> {
    match v {
        ValueRef::Null => None,
        ValueRef::Integer(i) => Some(i.to_string()),
        ValueRef::Real(f) => Some(f.to_string()),
        ValueRef::Text(b) | ValueRef::Blob(b) => Some(String::from_utf8_lossy(b).into_owned()),
    }
}

/// JSON stored as TEXT (or as a BLOB by other writers); NULL is none.
fn json(v: ValueRef<'_>) -> std::result::Result<Option<serde_json::Value>, String> {
    match v {
        ValueRef::Null => Ok(None),
        ValueRef::Text(b) | ValueRef::Blob(b) => serde_json::from_slice(b)
            .map(Some)
            .map_err(|e| format!("invalid JSON: {e}")),
        other => Err(format!("expected JSON text, found {}", other.data_type())),
    }
}

/// A claimed row; only an unreadable id fails (the row cannot even be named).
/// SQLite keeps any type in any column, so every other column is checked here.
pub(super) fn decode(row: &rusqlite::Row<'_>) -> Result<Decoded> {
    let id: i64 = row.get(0).map_err(db("decoding a claimed row"))?;
    Ok(decode_columns(id, row).map_err(|reason| Undecodable { id, reason }))
}

fn decode_columns(id: i64, row: &rusqlite::Row<'_>) -> std::result::Result<StoredMessage, String> {
    let cell = |i: usize, name: &str| row.get_ref(i).map_err(|e| format!("{name}: {e}"));
    let get = |i: usize, name: &str| row.get::<_, i64>(i).map_err(|e| format!("{name}: {e}"));
    let message_id = match cell(1, "message_id")? {
        ValueRef::Blob(b) => uuid::Uuid::from_slice(b).map_err(|e| format!("message_id: {e}"))?,
        // Rows written by hand or by other tools may hold the hyphenated text form.
        ValueRef::Text(t) => std::str::from_utf8(t)
            .ok()
            .and_then(|s| uuid::Uuid::parse_str(s).ok())
            .ok_or("message_id: not a UUID")?,
        other => return Err(format!("message_id: {}, not a UUID", other.data_type())),
    };
    let payload = match cell(2, "payload")? {
        ValueRef::Blob(b) | ValueRef::Text(b) => b.to_vec(),
        other => return Err(format!("payload: {}, not bytes", other.data_type())),
    };
    let headers = json(cell(3, "headers")?).map_err(|e| format!("headers: {e}"))?;
    let options = json(cell(4, "options")?).map_err(|e| format!("options: {e}"))?;
    let attempts = get(6, "attempts")?;
    let created_ms = get(7, "created_at")?;
    Ok(StoredMessage {
        id,
        message_id: MessageId::from_uuid(message_id),
        payload,
        headers: rows::headers_from_json(headers)?,
        options: rows::options_from_json(options)?,
        ordering_key: row.get(5).map_err(|e| format!("ordering_key: {e}"))?,
        attempts: u32::try_from(attempts.max(0)).unwrap_or(u32::MAX),
        created_at: UNIX_EPOCH + Duration::from_millis(u64::try_from(created_ms).unwrap_or(0)),
    })
}
