//! Claimed rows into messages; a row that cannot be decoded is parked, not an error.

use super::*;

/// A claimed row; only an unreadable id fails (the row cannot even be named).
pub(super) fn decode(row: &Row) -> Result<Decoded> {
    let id: i64 = row
        .try_get::<i64, _>(0)
        .map_err(|e| Error::db("decoding a claimed row", e))?
        .ok_or_else(|| Error::db("decoding a claimed row", "NULL id"))?;
    Ok(decode_columns(id, row).map_err(|reason| Undecodable { id, reason }))
}

pub(super) fn decode_columns(id: i64, row: &Row) -> std::result::Result<StoredMessage, String> {
    pub(super) fn col<'a, T: tiberius::FromSql<'a>>(
        row: &'a Row,
        i: usize,
        name: &str,
    ) -> std::result::Result<Option<T>, String> {
        row.try_get(i).map_err(|e| format!("{name}: {e}"))
    }
    let message_id: uuid::Uuid = col(row, 1, "message_id")?.ok_or("message_id: NULL")?;
    let payload: &[u8] = col(row, 2, "payload")?.ok_or("payload: NULL")?;
    let ordering_key: Option<&str> = col(row, 5, "ordering_key")?;
    let attempts: i32 = col(row, 6, "attempts")?.unwrap_or(0);
    let micros: i64 = col(row, 7, "created_at")?.unwrap_or(0);
    let json = |i: usize, name: &str| json_cell(row, i).map_err(|e| format!("{name}: {e}"));
    Ok(StoredMessage {
        id,
        message_id: MessageId::from_uuid(message_id),
        payload: payload.to_vec(),
        headers: rows::headers_from_json(json(3, "headers")?)?,
        options: rows::options_from_json(json(4, "options")?)?,
        ordering_key: ordering_key.map(str::to_string),
        attempts: u32::try_from(attempts).unwrap_or(0),
        created_at: UNIX_EPOCH + Duration::from_micros(u64::try_from(micros).unwrap_or(0)),
    })
}

/// A JSON column: UTF-8 bytes (ours and the Go outboxer's `VARBINARY`), or text if
/// someone changed the column to `NVARCHAR`.
pub(super) fn json_cell(
    row: &Row,
    idx: usize,
) -> std::result::Result<Option<serde_json::Value>, String> {
    let parsed = match row.get_column_data(idx).map_err(|e| e.to_string())? {
        ColumnData::Binary(Some(b)) => serde_json::from_slice(b),
        ColumnData::String(Some(s)) => serde_json::from_str(s),
        ColumnData::Binary(None) | ColumnData::String(None) => return Ok(None),
        other => return Err(format!("holds {other:?}, expected JSON")),
    };
    parsed.map(Some).map_err(|e| format!("invalid JSON: {e}"))
}
