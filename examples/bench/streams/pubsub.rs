//! `--stream pubsub`: the topic on the emulator and the raw REST ceiling.

use crate::cpu::CpuSample;
use crate::{BoxResult, Env, CHUNK};
use base64::Engine as _;
use outboxer::MESSAGE_ID_HEADER;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The project of the bench topic (the emulator takes any).
const PROJECT: &str = "outboxer-bench";

/// The stream URL of this run.
pub fn url(env: &Env) -> String {
    format!("pubsub://{PROJECT}?emulator={}", env.pubsub_emulator)
}

/// The bench topic on the emulator.
pub struct PubSubBroker {
    agent: ureq::Agent,
    /// `http://host:port/v1/projects/P/topics/T`
    topic_url: String,
    /// Messages published so far (for the closing note).
    expected: AtomicU64,
}

impl PubSubBroker {
    fn call(&self, method: &str, url: &str, body: Vec<u8>) -> BoxResult<(u16, Vec<u8>)> {
        let req = ureq::http::Request::builder()
            .method(method)
            .uri(url)
            .header("content-type", "application/json")
            .body(body)?;
        let mut resp = self.agent.run(req)?;
        let status = resp.status().as_u16();
        let body = resp
            .body_mut()
            .with_config()
            .limit(64 * 1024 * 1024)
            .read_to_vec()?;
        Ok((status, body))
    }

    pub fn setup(env: &Env) -> BoxResult<PubSubBroker> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        let broker = PubSubBroker {
            agent,
            topic_url: format!(
                "http://{}/v1/projects/{PROJECT}/topics/{}",
                env.pubsub_emulator, env.topic
            ),
            expected: AtomicU64::new(0),
        };
        let (status, body) = broker
            .call("PUT", &broker.topic_url, b"{}".to_vec())
            .map_err(|e| format!("Pub/Sub emulator at {}: {e}", env.pubsub_emulator))?;
        if status != 200 {
            return Err(format!(
                "creating Pub/Sub topic {}: HTTP {status}: {}",
                env.topic,
                String::from_utf8_lossy(&body)
            )
            .into());
        }
        println!(
            "bench: Pub/Sub emulator at {} (no consumer-side check: the ceiling and the \
             relays count publish responses)",
            env.pubsub_emulator
        );
        Ok(broker)
    }

    pub fn settle(&self, published: u64) -> BoxResult<()> {
        self.expected.fetch_add(published, Ordering::Relaxed);
        Ok(())
    }

    pub fn teardown(self) -> BoxResult<()> {
        println!(
            "bench: {} messages published to the Pub/Sub topic (not pulled)",
            self.expected.load(Ordering::Relaxed)
        );
        let (status, body) = self.call("DELETE", &self.topic_url, Vec::new())?;
        if status != 200 {
            return Err(format!(
                "deleting the Pub/Sub topic: HTTP {status}: {}",
                String::from_utf8_lossy(&body)
            )
            .into());
        }
        Ok(())
    }

    /// Phase 3 with Pub/Sub: raw REST publish requests of `CHUNK` messages, one
    /// after the other, the same JSON as the stream.
    pub fn ceiling(&self, env: &Env) -> BoxResult<Duration> {
        let messages = env.make_messages(env.messages);
        let url = format!("{}:publish", self.topic_url);
        // One request before the clock starts: the connection is open.
        self.call("POST", &url, br#"{"messages":[{"data":"AA=="}]}"#.to_vec())?;
        self.expected.fetch_add(1, Ordering::Relaxed);
        let cpu = env.breakdown.then(CpuSample::take).flatten();
        let start = Instant::now();
        for window in messages.chunks(CHUNK) {
            let body = serde_json::json!({
                "messages": window
                    .iter()
                    .map(|m| serde_json::json!({
                        "data": base64::engine::general_purpose::STANDARD.encode(m.payload()),
                        "attributes": { MESSAGE_ID_HEADER: m.message_id().to_string() },
                    }))
                    .collect::<Vec<_>>()
            });
            let (status, resp) = self.call("POST", &url, body.to_string().into_bytes())?;
            let ids = serde_json::from_slice::<serde_json::Value>(&resp)
                .ok()
                .and_then(|v| v["messageIds"].as_array().map(Vec::len));
            if status != 200 || ids != Some(window.len()) {
                return Err(format!(
                    "ceiling: publish: HTTP {status}: {}",
                    String::from_utf8_lossy(&resp)
                        .chars()
                        .take(300)
                        .collect::<String>()
                )
                .into());
            }
        }
        let took = start.elapsed();
        if env.breakdown {
            println!(
                "    {} during the ceiling run",
                CpuSample::since(&cpu, messages.len() as u64)
            );
        }
        Ok(took)
    }
}
