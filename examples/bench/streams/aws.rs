//! `--stream sqs|kinesis`: the queue or stream on moto, the raw signed-call
//! ceiling and (SQS) the message-count check.

use crate::cpu::CpuSample;
use crate::{BoxResult, Env, StreamKind, ROUTING_KEY};
use outboxer::stream::aws::{AwsClient, Service};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub struct AwsBroker {
    client: AwsClient,
    service: Service,
    name: String,
    /// SQS: the queue URL.
    queue_url: String,
    expected: AtomicU64,
}

impl AwsBroker {
    pub fn setup(env: &Env) -> BoxResult<AwsBroker> {
        let (service, scheme) = match env.stream {
            StreamKind::Sqs => (Service::Sqs, "sqs"),
            _ => (Service::Kinesis, "kinesis"),
        };
        let client = AwsClient::connect(&env.aws_url(scheme), service)?;
        let mut queue_url = String::new();
        match service {
            Service::Sqs => {
                let a = client.call_json("CreateQueue", &json!({"QueueName": env.topic}))?;
                queue_url = a["QueueUrl"]
                    .as_str()
                    .ok_or("CreateQueue: no QueueUrl")?
                    .to_string();
            }
            Service::Kinesis => {
                client.call_json(
                    "CreateStream",
                    &json!({"StreamName": env.topic, "ShardCount": 1}),
                )?;
            }
        }
        println!("bench: moto at {}", env.aws_endpoint);
        Ok(AwsBroker {
            client,
            service,
            name: env.topic.clone(),
            queue_url,
            expected: AtomicU64::new(0),
        })
    }

    /// SQS: waits until the queue holds exactly the messages of this phase,
    /// then re-creates it empty: moto's sends slow down as a standard queue grows
    /// (measured: 511, 218, 139 msg/s with 100, 200, 300 messages queued), so
    /// every phase starts on an empty queue. Kinesis: only tallies.
    pub fn settle(&self, published: u64) -> BoxResult<()> {
        self.expected.fetch_add(published, Ordering::Relaxed);
        let expected = published;
        if self.service != Service::Sqs {
            return Ok(());
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let a = self.client.call_json(
                "GetQueueAttributes",
                &json!({"QueueUrl": self.queue_url, "AttributeNames": ["ApproximateNumberOfMessages"]}),
            )?;
            let n: u64 = a["Attributes"]["ApproximateNumberOfMessages"]
                .as_str()
                .and_then(|v| v.parse().ok())
                .ok_or("GetQueueAttributes: no count")?;
            if n == expected {
                // PurgeQueue is limited to once a minute: delete and create it
                // again instead (moto's queue URL, which the streams cache, stays).
                self.client
                    .call_json("DeleteQueue", &json!({"QueueUrl": self.queue_url}))?;
                let a = self
                    .client
                    .call_json("CreateQueue", &json!({"QueueName": self.name}))?;
                if a["QueueUrl"].as_str() != Some(self.queue_url.as_str()) {
                    return Err(format!("re-created queue has a new URL: {}", a["QueueUrl"]).into());
                }
                return Ok(());
            }
            if n > expected || Instant::now() > deadline {
                return Err(format!("SQS queue holds {n} messages, expected {expected}").into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn teardown(self) -> BoxResult<()> {
        match self.service {
            Service::Sqs => {
                self.client
                    .call_json("DeleteQueue", &json!({"QueueUrl": self.queue_url}))?;
            }
            Service::Kinesis => {
                self.client.call_json(
                    "DeleteStream",
                    &json!({"StreamName": self.name, "EnforceConsumerDeletion": true}),
                )?;
            }
        }
        Ok(())
    }

    /// Phase 3: the same bodies as the stream sends, in signed calls, one at a time.
    pub fn ceiling(&self, env: &Env) -> BoxResult<Duration> {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let messages = env.make_messages(env.messages);
        let cpu = env.breakdown.then(CpuSample::take).flatten();
        let start = Instant::now();
        match self.service {
            Service::Sqs => {
                for chunk in messages.chunks(10) {
                    let entries: Vec<Value> = chunk
                        .iter()
                        .enumerate()
                        .map(|(i, m)| {
                            let e = outboxer::stream::sqs::encode(
                                &m.message_id().to_string(),
                                m.payload(),
                                m.headers(),
                            )?;
                            let attrs: serde_json::Map<String, Value> = e
                                .attributes
                                .into_iter()
                                .map(|(k, v)| (k, json!({"DataType": "String", "StringValue": v})))
                                .collect();
                            Ok(json!({"Id": i.to_string(), "MessageBody": e.body, "MessageAttributes": attrs}))
                        })
                        .collect::<Result<_, outboxer::Error>>()?;
                    let a = self.client.call_json(
                        "SendMessageBatch",
                        &json!({"QueueUrl": self.queue_url, "Entries": entries}),
                    )?;
                    if a["Failed"].as_array().is_some_and(|f| !f.is_empty()) {
                        return Err(format!("ceiling: failed entries {}", a["Failed"]).into());
                    }
                }
            }
            Service::Kinesis => {
                for chunk in messages.chunks(500) {
                    let records: Vec<Value> = chunk
                        .iter()
                        .map(|m| {
                            let data = outboxer::stream::kinesis::encode_record(
                                &m.message_id().to_string(),
                                m.payload(),
                                m.headers(),
                            );
                            json!({"Data": b64.encode(data), "PartitionKey": ROUTING_KEY})
                        })
                        .collect();
                    let a = self.client.call_json(
                        "PutRecords",
                        &json!({"StreamName": self.name, "Records": records}),
                    )?;
                    if a["FailedRecordCount"].as_u64().unwrap_or(0) > 0 {
                        return Err("ceiling: failed records".into());
                    }
                }
            }
        }
        let took = start.elapsed();
        if env.breakdown {
            println!(
                "    {} during the ceiling run",
                CpuSample::since(&cpu, env.messages as u64)
            );
        }
        Ok(took)
    }
}
