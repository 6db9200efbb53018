//! `--stream amqp`: the exchange, the bound queue and its consumer, the raw amiquip ceiling.

use crate::cpu::CpuSample;
use crate::{BoxResult, Env, CHUNK, ROUTING_KEY};
use amiquip::{
    AmqpValue, Channel, Confirm, ConfirmSmoother, Connection, ConsumerMessage, ConsumerOptions,
    ExchangeDeclareOptions, ExchangeType, FieldTable, Publish, QueueDeclareOptions,
    QueueDeleteOptions,
};
use outboxer::stream::amqp::{message_properties, open_confirm_channel, open_connection};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

/// The bench's durable topic exchange (declared by the broker setup and the ceiling).
fn declare_exchange(channel: &Channel, name: &str) -> amiquip::Result<()> {
    let options = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .exchange_declare(ExchangeType::Topic, name, options)
        .map(|_| ())
}

/// The exchange, the bound queue and a consumer thread that drains it.
pub struct AmqpBroker {
    // Field order: the channel closes before its connection.
    channel: Channel,
    admin: Connection,
    queue: String,
    exchange: String,
    consumed: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    consumer: Option<JoinHandle<Result<(), String>>>,
    /// Messages published so far (what the consumer should have received).
    expected: AtomicU64,
    /// Report the consumer's lag after each run (`--breakdown`).
    verbose: bool,
}

impl AmqpBroker {
    pub fn setup(env: &Env) -> BoxResult<AmqpBroker> {
        let mut admin = open_connection(&env.amqp_url)?;
        if let Some(AmqpValue::LongString(v)) = admin.server_properties().get("version") {
            println!("bench: RabbitMQ {v}");
        }
        let ch = admin.open_channel(None)?;
        declare_exchange(&ch, &env.exchange)?;
        ch.queue_declare(
            env.queue.clone(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
        )?;
        ch.queue_bind(
            env.queue.clone(),
            env.exchange.clone(),
            ROUTING_KEY,
            FieldTable::new(),
        )?;

        let consumed = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = crossbeam_channel::bounded(1);
        let (url, queue) = (env.amqp_url.clone(), env.queue.clone());
        let (count, stopped) = (Arc::clone(&consumed), Arc::clone(&stop));
        let consumer = std::thread::spawn(move || -> Result<(), String> {
            let mut conn = open_connection(&url).map_err(|e| e.to_string())?;
            let ch = conn.open_channel(None).map_err(|e| e.to_string())?;
            let consumer = ch
                .basic_consume(
                    queue,
                    ConsumerOptions {
                        no_ack: true,
                        ..Default::default()
                    },
                )
                .map_err(|e| e.to_string())?;
            let _ = ready_tx.send(());
            while !stopped.load(Ordering::Relaxed) {
                match consumer.receiver().recv_timeout(Duration::from_millis(100)) {
                    Ok(ConsumerMessage::Delivery(_)) => {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(other) => return Err(format!("consumer stopped: {other:?}")),
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                    Err(e) => return Err(format!("consumer: {e}")),
                }
            }
            drop(consumer);
            let _ = ch.close();
            let _ = conn.close();
            Ok(())
        });
        ready_rx
            .recv_timeout(Duration::from_secs(20))
            .map_err(|_| "the consumer did not start")?;
        Ok(AmqpBroker {
            channel: ch,
            admin,
            queue: env.queue.clone(),
            exchange: env.exchange.clone(),
            consumed,
            stop,
            consumer: Some(consumer),
            expected: AtomicU64::new(0),
            verbose: env.breakdown,
        })
    }

    /// Waits until the consumer has received everything published so far (`published`
    /// more since the last call), so that no phase starts with a backlog. Purges the
    /// queue if the consumer is too slow.
    pub fn settle(&self, published: u64) -> BoxResult<()> {
        let expected = self.expected.fetch_add(published, Ordering::Relaxed) + published;
        let start = Instant::now();
        if self.verbose {
            let behind = expected.saturating_sub(self.consumed.load(Ordering::Relaxed));
            println!("    consumer {behind} messages behind at the end of the run");
        }
        while self.consumed.load(Ordering::Relaxed) < expected {
            if start.elapsed() > Duration::from_secs(30) {
                let got = self.consumed.load(Ordering::Relaxed);
                let purged = self.channel.queue_purge(self.queue.clone())?;
                println!(
                    "    note: consumer had {got} of {expected} messages after 30 s; purged {purged}"
                );
                self.expected
                    .store(got + u64::from(purged), Ordering::Relaxed);
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    pub fn teardown(mut self) -> BoxResult<()> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(c) = self.consumer.take() {
            match c.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => eprintln!("bench: {e}"),
                Err(_) => eprintln!("bench: consumer thread panicked"),
            }
        }
        let AmqpBroker {
            channel,
            admin,
            queue,
            exchange,
            ..
        } = self;
        channel.queue_delete(queue, QueueDeleteOptions::default())?;
        channel.exchange_delete(exchange, false)?;
        channel.close()?;
        admin.close()?;
        Ok(())
    }
}

/// Phase 3: raw amiquip confirm-publishing of the same messages; returns the time taken.
pub fn ceiling_phase(env: &Env) -> BoxResult<Duration> {
    let mut connection = open_connection(&env.amqp_url)?;
    let (channel, confirms, returns) = open_confirm_channel(&mut connection)?;
    declare_exchange(&channel, &env.exchange)?;
    let messages = env.make_messages(env.messages);
    let cpu = env.breakdown.then(CpuSample::take).flatten();
    let mut smoother = ConfirmSmoother::new();
    let mut published = 0u64;
    let mut confirmed = 0u64;
    let start = Instant::now();
    for window in messages.chunks(CHUNK) {
        for m in window {
            let properties = message_properties(m.message_id(), m.headers(), SystemTime::now());
            let publish = Publish {
                mandatory: true,
                ..Publish::with_properties(m.payload(), ROUTING_KEY, properties)
            };
            channel.basic_publish(env.exchange.clone(), publish)?;
            published += 1;
        }
        while confirmed < published {
            let raw = confirms
                .recv_timeout(Duration::from_secs(15))
                .map_err(|e| format!("ceiling: waiting for confirms: {e}"))?;
            for c in smoother.process(raw) {
                match c {
                    Confirm::Ack(_) => confirmed += 1,
                    Confirm::Nack(p) => {
                        return Err(format!("ceiling: broker nacked tag {}", p.delivery_tag).into())
                    }
                }
            }
        }
        if let Ok(r) = returns.try_recv() {
            return Err(format!("ceiling: unroutable: {} {}", r.reply_code, r.reply_text).into());
        }
    }
    let took = start.elapsed();
    if env.breakdown {
        println!(
            "    {} during the ceiling run",
            CpuSample::since(&cpu, published)
        );
    }
    channel.close()?;
    connection.close()?;
    Ok(took)
}
