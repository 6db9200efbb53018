//! `outboxer relay --listen`: `/metrics` (Prometheus text), `/healthz` and
//! `/readyz` on a small blocking HTTP server (tiny_http): the exporter's own
//! listener would bring tokio and hyper into a command that has no runtime.

use crate::fail::Fail;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use outboxer::Relay;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Histogram buckets: Prometheus histograms (not summaries), so that dashboards
/// can aggregate relays with `histogram_quantile`.
const SECONDS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0,
];
const MESSAGES: &[f64] = &[
    1.0, 5.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0, 10000.0,
];

/// Installs the process's metrics recorder; before the relay starts, so that
/// the relay registers its series with it.
pub fn install() -> Result<PrometheusHandle, Fail> {
    let bad = |e: metrics_exporter_prometheus::BuildError| {
        Fail::runtime(format!("cannot set up the metrics recorder: {e}"))
    };
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full("outboxer_batch_messages".into()), MESSAGES)
        })
        .map_err(bad)?
        .install_recorder()
        .map_err(bad)
}

/// The running server; `stop()` ends its thread.
pub struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What `/readyz` and `/healthz` look at.
pub struct Probe {
    pub relay: Arc<Relay>,
    pub handle: PrometheusHandle,
    pub table: String,
    /// A claim must have completed within this long for `/readyz`.
    pub ready_within: Duration,
}

pub fn start(addr: SocketAddr, probe: Probe) -> Result<Server, Fail> {
    let server = tiny_http::Server::http(addr)
        .map_err(|e| Fail::runtime(format!("--listen {addr}: {e}")))?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let up = metrics::gauge!("outboxer_up", "table" => probe.table.clone());
    up.set(if probe.relay.health().threads_alive {
        1.0
    } else {
        0.0
    });
    let thread = std::thread::Builder::new()
        .name("outboxer-http".into())
        .spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                let req = match server.recv_timeout(Duration::from_millis(250)) {
                    Ok(Some(r)) => r,
                    Ok(None) => continue,
                    Err(e) => {
                        log::warn!("http: {e}");
                        continue;
                    }
                };
                let health = probe.relay.health();
                up.set(if health.threads_alive { 1.0 } else { 0.0 });
                let path = req.url().split('?').next().unwrap_or("");
                let (code, body) = match path {
                    "/metrics" => {
                        probe.handle.run_upkeep();
                        (200, probe.handle.render())
                    }
                    "/healthz" if health.threads_alive => (200, "ok\n".to_string()),
                    "/healthz" => (503, "the relay's threads are not running\n".to_string()),
                    "/readyz" => match health.ready(probe.ready_within) {
                        Ok(()) => (200, "ready\n".to_string()),
                        Err(why) => (503, format!("not ready: {why}\n")),
                    },
                    _ => (404, "not found: /metrics, /healthz, /readyz\n".to_string()),
                };
                let kind = if path == "/metrics" {
                    "text/plain; version=0.0.4; charset=utf-8"
                } else {
                    "text/plain; charset=utf-8"
                };
                let mut resp = tiny_http::Response::from_string(body).with_status_code(code);
                if let Ok(h) = tiny_http::Header::from_bytes(&b"Content-Type"[..], kind.as_bytes())
                {
                    resp = resp.with_header(h);
                }
                if let Err(e) = req.respond(resp) {
                    log::debug!("http: {e}");
                }
            }
        })
        .map_err(|e| Fail::runtime(format!("cannot start the http thread: {e}")))?;
    Ok(Server {
        stop,
        thread: Some(thread),
    })
}
