//! Reading the Prometheus text format and scraping an HTTP endpoint, with no
//! client library: what an operator's `curl` sees.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// The sum of the samples of `name` (exactly that name) whose labels include
/// every one of `labels`; `None` when no sample matches.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut sum = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (n, l) = match series.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}')),
            None => (series, ""),
        };
        if n != name {
            continue;
        }
        let has = |(k, v): &(&str, &str)| l.split(',').any(|kv| kv == format!("{k}=\"{v}\""));
        if labels.iter().all(has) {
            if let Ok(v) = value.parse::<f64>() {
                *sum.get_or_insert(0.0) += v;
            }
        }
    }
    sum
}

/// The label sets of `name`'s samples, as written.
pub fn series<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
    text.lines()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix('{'))
        .filter_map(|l| l.split_once('}').map(|(labels, _)| labels))
        .collect()
}

/// `GET path` over HTTP/1.0: (status, body); `None` when nothing answers.
pub fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// A free port on 127.0.0.1 (bound and released: a race with other processes is
/// possible but unlikely within one test).
pub fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let a = l.local_addr().expect("local addr");
    format!("127.0.0.1:{}", a.port())
}
