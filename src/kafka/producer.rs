//! A Kafka producer whose deliveries resolve futures (as rdkafka's `FutureProducer`), polled by
//! a thread that does not spin.
//!
//! rdkafka's `FutureProducer` runs a `ThreadedProducer`, whose thread calls
//! `BaseProducer::poll(100 ms)` in a loop; that call waits in whole milliseconds until its
//! deadline, so the last fraction of a millisecond of every round is spent calling
//! `poll(0)` — reading the clock — in a tight loop. An idle `serve` spent 1.8 % of a core in
//! two such threads, 80 % of all its CPU time (`/proc/PID/task/*/stat` over 30 s, 2026-12-05).
//! Here each round's timeout ends a little after a whole millisecond (50 µs), so that the
//! wait for it ends past the deadline and the round is over; only a round cut short by an event
//! (a batch of delivery reports) spins, for less than a millisecond.

use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{DeliveryResult, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// One round of the polling thread: 100 ms, plus 50 µs so that librdkafka's wait (whole
/// milliseconds, rounded down from what is left) ends past the round's deadline.
const ROUND: Duration = Duration::from_micros(100_050);

/// How a record ended: its offset, or why it was not delivered.
pub type Delivered = Result<i64, KafkaError>;

/// Resolves each record's delivery future from librdkafka's delivery report.
struct Deliveries;

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = Box<oneshot::Sender<Delivered>>;

    fn delivery(&self, result: &DeliveryResult<'_>, tx: Self::DeliveryOpaque) {
        let outcome = match result {
            Ok(m) => Ok(m.offset()),
            Err((e, _)) => Err(e.clone()),
        };
        // Nobody waiting any more is fine: the record was produced all the same.
        let _ = tx.send(outcome);
    }
}

/// A record to produce.
#[derive(Debug, Default)]
pub struct Record<'a> {
    /// Topic.
    pub topic: &'a str,
    /// `None`: the configured partitioner picks one (by key).
    pub partition: Option<i32>,
    /// Key.
    pub key: Option<&'a [u8]>,
    /// Payload.
    pub payload: Option<&'a [u8]>,
    /// Headers.
    pub headers: Option<OwnedHeaders>,
}

/// A record's delivery, once librdkafka reports it.
pub struct Delivery(oneshot::Receiver<Delivered>);

impl Future for Delivery {
    type Output = Delivered;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Delivered> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(KafkaError::Canceled)))
    }
}

struct Inner {
    producer: Arc<BaseProducer<Deliveries>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A producer shared by clones; its polling thread stops when the last clone is dropped.
#[derive(Clone)]
pub struct Producer {
    inner: Arc<Inner>,
}

impl Producer {
    /// Creates the producer from `config` and starts its polling thread.
    pub fn new(config: &ClientConfig) -> KafkaResult<Self> {
        let producer: Arc<BaseProducer<Deliveries>> =
            Arc::new(config.create_with_context(Deliveries)?);
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("kafka-producer".into())
            .spawn({
                let (producer, stop) = (Arc::clone(&producer), Arc::clone(&stop));
                move || {
                    while !stop.load(Ordering::Relaxed) {
                        producer.poll(ROUND);
                    }
                }
            })
            .map_err(|e| KafkaError::ClientCreation(format!("no polling thread: {e}")))?;
        Ok(Self {
            inner: Arc::new(Inner {
                producer,
                stop,
                thread: Some(thread),
            }),
        })
    }

    /// Hands `r` to librdkafka; the returned future resolves with its delivery. Fails at once
    /// when librdkafka does not take it (its queue is full: `QueueFull`).
    pub fn enqueue(&self, r: &Record<'_>) -> KafkaResult<Delivery> {
        let (tx, rx) = oneshot::channel();
        let mut record = BaseRecord::<[u8], [u8], _>::with_opaque_to(r.topic, Box::new(tx));
        if let Some(p) = r.partition {
            record = record.partition(p);
        }
        if let Some(k) = r.key {
            record = record.key(k);
        }
        if let Some(p) = r.payload {
            record = record.payload(p);
        }
        if let Some(h) = &r.headers {
            record = record.headers(h.clone());
        }
        match self.inner.producer.send(record) {
            Ok(()) => Ok(Delivery(rx)),
            Err((e, _)) => Err(e),
        }
    }

    /// [`Self::enqueue`], retrying every 10 ms while librdkafka's queue is full, for at most
    /// `queue_timeout`; then waits for the delivery.
    pub async fn send(&self, r: &Record<'_>, queue_timeout: Duration) -> Delivered {
        let deadline = Instant::now() + queue_timeout;
        loop {
            match self.enqueue(r) {
                Ok(d) => return d.await,
                Err(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull))
                    if Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A producer for a broker that is not there (nothing listens on port 1).
    fn nowhere(extra: &[(&str, &str)]) -> Producer {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", "127.0.0.1:1")
            .set("message.timeout.ms", "300");
        for (k, v) in extra {
            c.set(*k, *v);
        }
        Producer::new(&c).expect("producer")
    }

    fn block_on<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    #[test]
    fn a_record_that_cannot_be_delivered_resolves_with_the_reason() {
        let p = nowhere(&[]);
        let record = Record {
            topic: "t",
            key: Some(b"k"),
            payload: Some(b"x"),
            ..Record::default()
        };
        let delivery = p.enqueue(&record).expect("enqueued");
        // Delivered by the polling thread, not by anyone polling here.
        let outcome =
            block_on(async { tokio::time::timeout(Duration::from_secs(30), delivery).await })
                .expect("resolved");
        assert!(
            matches!(
                outcome,
                Err(KafkaError::MessageProduction(
                    RDKafkaErrorCode::MessageTimedOut
                ))
            ),
            "{outcome:?}"
        );
        // Dropping the last clone stops and joins the polling thread (a hang fails the test).
        let clone = p.clone();
        drop(p);
        drop(clone);
    }

    #[test]
    fn send_gives_up_on_a_full_queue_after_its_timeout() {
        let p = nowhere(&[("queue.buffering.max.messages", "1")]);
        let record = Record {
            topic: "t",
            payload: Some(b"x"),
            ..Record::default()
        };
        let _first = p.enqueue(&record).expect("the first fits");
        let second = block_on(p.send(&record, Duration::from_millis(50)));
        assert!(
            matches!(
                second,
                Err(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull))
            ),
            "{second:?}"
        );
    }
}
