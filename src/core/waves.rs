//! Per-ordering-key "waves", shared by the streams that send a batch in several
//! requests (SQS, Kinesis, Kafka, Pub/Sub): wave `w` holds the `w`-th message of
//! every key, and a key whose message failed is held back for the rest of the
//! batch, so that a later message of a key is never accepted before an earlier one.

use crate::Error;
use std::collections::HashMap;

/// Splits a batch into waves: wave `w` holds the `w`-th message of every
/// ordering key (keyless messages all go into wave 0), in batch order. Sending
/// wave after wave and holding back keys that failed keeps per-key order: a
/// later message of a key is only sent after the earlier one was accepted.
pub fn waves<'a>(keys: impl IntoIterator<Item = Option<&'a str>>) -> Vec<Vec<usize>> {
    let mut waves: Vec<Vec<usize>> = Vec::new();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, key) in keys.into_iter().enumerate() {
        let w = match key {
            None => 0,
            Some(k) => {
                let c = seen.entry(k).or_insert(0);
                *c += 1;
                *c - 1
            }
        };
        if waves.len() <= w {
            waves.resize_with(w + 1, Vec::new);
        }
        waves[w].push(i);
    }
    waves
}

/// The message held back because an earlier message of its key failed.
pub fn held_back(what: &'static str, key: &str) -> Error {
    Error::unavailable(
        what,
        format!("held back: an earlier message of ordering key {key:?} failed in this batch"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waves_keep_key_order() {
        let keys = [Some("a"), None, Some("a"), Some("b"), None, Some("a")];
        assert_eq!(waves(keys), vec![vec![0, 1, 3, 4], vec![2], vec![5]]);
    }
}
