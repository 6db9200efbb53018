//! The machine-readable RESULT line.

use crate::compare::ModeResults;
use crate::mode::Mode;

/// Everything measured.
pub struct Results {
    pub insert_per_s: f64,
    pub enqueue_per_s: f64,
    pub ceiling_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// One per mode of `--modes`.
    pub modes: Vec<ModeResults>,
}

impl Results {
    fn mode(&self, mode: Mode) -> Option<&ModeResults> {
        self.modes.iter().find(|r| r.mode == mode)
    }

    /// `RESULT name=value ..`: the fields without a prefix are the new (default)
    /// mode's, `old_` ones the old mode's; `na` for what was not measured.
    pub fn line(&self) -> String {
        let c = self.ceiling_per_s;
        let mut fields: Vec<(String, Option<f64>)> = Vec::new();
        let mut put = |name: &str, v: Option<f64>| fields.push((name.to_string(), v));
        let (new, old) = (self.mode(Mode::New), self.mode(Mode::Old));
        put("relay_per_s", new.map(|r| r.relay_per_s));
        put("ceiling_per_s", Some(c));
        put("ratio", new.map(|r| r.relay_per_s / c));
        put("relay2_per_s", new.map(|r| r.relay2_per_s));
        put("enqueue_per_s", Some(self.enqueue_per_s));
        put("insert_per_s", Some(self.insert_per_s));
        put(
            "enqueue_ratio",
            Some(self.insert_per_s / self.enqueue_per_s),
        );
        put("p50_ms", Some(self.p50_ms));
        put("p99_ms", Some(self.p99_ms));
        put("old_relay_per_s", old.map(|r| r.relay_per_s));
        put("old_ratio", old.map(|r| r.relay_per_s / c));
        put("old_relay2_per_s", old.map(|r| r.relay2_per_s));
        for (prefix, r) in [("", new), ("old_", old)] {
            put(
                &format!("{prefix}db_cpu_us_per_msg"),
                r.and_then(|r| r.db_cpu_us),
            );
        }
        for (prefix, r) in [("", new), ("old_", old)] {
            put(
                &format!("{prefix}wal_bytes_per_msg"),
                r.and_then(|r| r.wal_bytes),
            );
        }
        for (prefix, r) in [("", new), ("old_", old)] {
            put(
                &format!("{prefix}db_ceiling_per_s"),
                r.map(|r| r.db_ceiling_per_s),
            );
        }
        for (prefix, r) in [("", new), ("old_", old)] {
            put(&format!("{prefix}limit_per_s"), r.map(|r| r.limit_per_s(c)));
        }
        for (prefix, r) in [("", new), ("old_", old)] {
            put(
                &format!("{prefix}relay_vs_limit"),
                r.map(|r| r.relay_per_s / r.limit_per_s(c)),
            );
        }
        let cleanup = old.and_then(|r| r.cleanup);
        put("old_cleanup_db_cpu_us_per_msg", cleanup.and_then(|c| c.0));
        put("old_cleanup_wal_bytes_per_msg", cleanup.and_then(|c| c.1));
        let mut line = String::from("RESULT");
        for (name, v) in fields {
            match v {
                Some(v) if v.is_finite() => line.push_str(&format!(" {name}={v:.2}")),
                _ => line.push_str(&format!(" {name}=na")),
            }
        }
        for (prefix, r) in [("", new), ("old_", old)] {
            let claims = r.and_then(|r| r.claims).map_or("na", |c| c.name());
            line.push_str(&format!(" {prefix}claims={claims}"));
        }
        line
    }
}
