//! Parsing of durations (`500ms`, `30s`, `7d`) and RFC 3339 times, without a date crate.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `500ms`, `1.5s`, `30s`, `5m`, `12h`, `7d`, `2w`; a bare number is seconds.
pub fn duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (examples: 500ms, 30s, 5m, 12h, 7d)"))?;
    let unit_secs = match unit.trim() {
        "ms" => 0.001,
        "" | "s" | "sec" | "secs" => 1.0,
        "m" | "min" | "mins" => 60.0,
        "h" => 3600.0,
        "d" => 86_400.0,
        "w" => 7.0 * 86_400.0,
        other => {
            return Err(format!(
                "`{s}`: unknown unit `{other}` (use ms, s, m, h, d or w)"
            ))
        }
    };
    Duration::try_from_secs_f64(value * unit_secs).map_err(|_| format!("`{s}` is out of range"))
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}

/// `t` as RFC 3339 in UTC with milliseconds: `2026-11-20T08:30:00.250Z` (a time
/// before 1970 is shown as the epoch).
pub fn rfc3339_millis(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (y, mo, day) = civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{mo:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        s / 3600,
        s % 3600 / 60,
        s % 60,
        d.subsec_millis()
    )
}

/// An RFC 3339 time: `2026-11-20T08:30:00Z`, `2026-11-20T08:30:00.5+01:00`
/// (a space may replace the `T`).
pub fn rfc3339(s: &str) -> Result<SystemTime, String> {
    let bad = || format!("`{s}` is not an RFC 3339 time (example: 2026-11-20T08:30:00Z)");
    let b = s.trim().as_bytes();
    if b.len() < 20 {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| -> Result<i64, String> {
        std::str::from_utf8(&b[r])
            .ok()
            .filter(|t| t.bytes().all(|c| c.is_ascii_digit()))
            .and_then(|t| t.parse().ok())
            .ok_or_else(bad)
    };
    if b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return Err(bad());
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, min, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || min > 59 || sec > 60 {
        return Err(bad());
    }
    let mut i = 19;
    let mut nanos: u64 = 0;
    if b[i] == b'.' {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return Err(bad());
        }
        let digits = &b[start..i.min(start + 9)];
        for (k, c) in digits.iter().enumerate() {
            nanos += u64::from(c - b'0') * 10u64.pow(8 - k as u32);
        }
    }
    let offset_secs = match b.get(i..) {
        Some(b"Z") | Some(b"z") => 0,
        Some(rest) if rest.len() == 6 && matches!(rest[0], b'+' | b'-') && rest[3] == b':' => {
            let h = num(i + 1..i + 3)?;
            let m = num(i + 4..i + 6)?;
            let sign = if rest[0] == b'-' { -1 } else { 1 };
            sign * (h * 3600 + m * 60)
        }
        _ => return Err(bad()),
    };
    let secs =
        days_from_civil(year, month, day) * 86_400 + hour * 3600 + min * 60 + sec - offset_secs;
    let secs = u64::try_from(secs).map_err(|_| format!("`{s}` is before 1970"))?;
    Ok(UNIX_EPOCH + Duration::new(secs, nanos as u32))
}

/// `--before` of purge: an RFC 3339 time or an age; returned as an age relative to `now`.
pub fn age_or_time(s: &str, now: SystemTime) -> Result<Duration, String> {
    if s.len() >= 20 && s.as_bytes().get(4) == Some(&b'-') {
        let t = rfc3339(s)?;
        return Ok(now.duration_since(t).unwrap_or(Duration::ZERO));
    }
    duration(s).map_err(|e| format!("{e}; or give an RFC 3339 time such as 2026-11-20T08:30:00Z"))
}

/// A duration for humans: `950ms`, `12.3s`, `4m 10s`, `2h 5m`, `3d 4h`.
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => format!("{}ms", d.as_millis()),
        1..=59 => format!("{:.1}s", d.as_secs_f64()),
        60..=3599 => format!("{}m {}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        for bad in ["", "s", "5x", "-1s", "1e400s", "1..2s"] {
            assert!(duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rfc3339_times() {
        let t = |s| rfc3339(s).map(|t| t.duration_since(UNIX_EPOCH).unwrap_or_default());
        assert_eq!(t("1970-01-01T00:00:00Z"), Ok(Duration::ZERO));
        assert_eq!(
            t("2000-03-01T00:00:00Z"),
            Ok(Duration::from_secs(951_868_800))
        );
        assert_eq!(
            t("2026-11-20T08:30:00Z"),
            Ok(Duration::from_secs(1_795_163_400))
        );
        assert_eq!(
            t("2026-11-20T09:30:00.25+01:00"),
            Ok(Duration::new(1_795_163_400, 250_000_000))
        );
        for bad in [
            "2026-11-20",
            "2026-13-01T00:00:00Z",
            "2026-11-20T08:30:00",
            "x026-11-20T08:30:00Z",
            "2026-11-20T08:30:00+0100",
        ] {
            assert!(rfc3339(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn timestamps_round_trip() {
        for secs in [0u64, 951_868_800, 1_795_163_400, 4_107_542_399] {
            let t = UNIX_EPOCH + Duration::new(secs, 987_654_321);
            let shown = rfc3339_millis(t);
            assert_eq!(shown.len(), 24, "{shown}");
            assert_eq!(
                rfc3339(&shown),
                Ok(UNIX_EPOCH + Duration::new(secs, 987_000_000))
            );
        }
        assert_eq!(
            rfc3339_millis(UNIX_EPOCH + Duration::from_millis(1_795_163_400_250)),
            "2026-11-20T08:30:00.250Z"
        );
    }

    #[test]
    fn purge_cutoffs() {
        let now = UNIX_EPOCH + Duration::from_secs(1_795_163_400 + 3600);
        assert_eq!(
            age_or_time("2026-11-20T08:30:00Z", now),
            Ok(Duration::from_secs(3600))
        );
        assert_eq!(age_or_time("2h", now), Ok(Duration::from_secs(7200)));
        assert_eq!(age_or_time("2030-01-01T00:00:00Z", now), Ok(Duration::ZERO));
        assert!(age_or_time("yesterday", now).is_err());
    }
}
