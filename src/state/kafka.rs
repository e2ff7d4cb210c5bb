//! The checkpoint store in a compacted Kafka changelog topic, so that an instance on another
//! machine, without a shared volume, can take over a partition with its device state.
//!
//! One topic per stream (`state.changelog_topic`, default `{group}.{stream}.checkpoints`),
//! created at start if missing with `cleanup.policy=compact` and as many partitions as the
//! stream's topic; input partition `p` is checkpointed to changelog partition `p mod n`.
//!
//! A checkpoint (the same bytes as a checkpoint file, followed by the partition's parked-device
//! log up to the length the checkpoint names) is cut into chunks of at most [`CHUNK_BYTES`],
//! under the broker's default message size limit, produced in order (idempotent producer,
//! `acks=all`), and then a **manifest** is produced: the checkpoint's header, its sequence
//! number, length, CRC-32 and the changelog offset of every chunk. The checkpoint counts once
//! the manifest is acknowledged. Keys cycle through `state.keep` slots —
//! `c/<stream>/<partition>/<slot>/<i>` and `m/<stream>/<partition>/<slot>` — so compaction
//! keeps the newest `keep` checkpoints of each partition and removes the rest, and a crash while
//! a checkpoint is being written leaves the others intact.
//!
//! Loading reads the changelog partition backwards in growing windows until it has found
//! `keep` manifests of the partition (or the start of the log), then walks them newest first
//! (and, if none is usable, the older ones further back):
//! the first whose header matches what is running and whose chunks are all there, in order,
//! with the right sequence number and checksum, is restored; the others are reported with the
//! reason, like damaged checkpoint files. So a broker that does not compact (or not yet) costs
//! disk space, not restore time. A restored checkpoint's parked devices are written back into
//! the local parked-device log, where the engine stage finds them.

use super::{Checkpoint, CheckpointError, DirStore, Expect, Header, Loaded, Skipped};
use crate::config::changelog_topic;
use crate::kafka::producer::{Delivery, Producer, Record};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Largest chunk of a checkpoint in one Kafka message (the broker's default limit is 1 MiB).
pub const CHUNK_BYTES: usize = 512 * 1024;
const CHUNK_MAGIC: &[u8; 8] = b"SNSRCHNK";
const MANIFEST_MAGIC: &[u8; 8] = b"SNSRMNFT";
/// Manifest format this build writes and reads.
pub const MANIFEST_VERSION: u32 = 1;
/// How long a read may go without progress, or a write wait for its acknowledgement.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// Records read from the end of a changelog partition in the first backward window.
const FIRST_WINDOW: i64 = 64;

/// What is produced after a checkpoint's chunks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Format of this manifest.
    pub version: u32,
    /// Sequence number among the partition's checkpoints.
    pub seq: u64,
    /// The checkpoint's header.
    pub header: Header,
    /// Bytes of the checkpoint proper.
    pub checkpoint_bytes: u64,
    /// Bytes of parked-device log after it.
    pub parked_bytes: u64,
    /// CRC-32 of both.
    pub crc: u32,
    /// Changelog offset of every chunk, in order.
    pub chunks: Vec<i64>,
}

impl Manifest {
    /// The record's value: magic bytes, then JSON.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = MANIFEST_MAGIC.to_vec();
        v.extend_from_slice(&serde_json::to_vec(self).unwrap_or_default());
        v
    }

    fn decode(bytes: &[u8]) -> Result<Self, CheckpointError> {
        let body = bytes
            .strip_prefix(MANIFEST_MAGIC)
            .ok_or(CheckpointError::BadMagic)?;
        #[derive(Deserialize)]
        struct Version {
            version: u32,
        }
        let v: Version =
            serde_json::from_slice(body).map_err(|e| CheckpointError::Header(e.to_string()))?;
        if v.version != MANIFEST_VERSION {
            return Err(CheckpointError::UnknownVersion(v.version));
        }
        serde_json::from_slice(body).map_err(|e| CheckpointError::Header(e.to_string()))
    }
}

/// A manifest found in the changelog, or why the record under a manifest key is unusable.
#[derive(Debug)]
pub struct FoundManifest {
    /// Changelog partition.
    pub partition: i32,
    /// Its changelog offset.
    pub offset: i64,
    /// Its size in bytes.
    pub bytes: usize,
    /// The manifest.
    pub manifest: Result<Manifest, CheckpointError>,
}

/// Checkpoints in compacted changelog topics.
pub struct KafkaStore {
    local: DirStore,
    template: String,
    group: String,
    keep: usize,
    producer: Producer,
    reader: Mutex<BaseConsumer>,
    partitions: Mutex<HashMap<String, i32>>,
    /// Next sequence number per (stream, partition).
    seqs: Mutex<HashMap<(String, i32), u64>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn io(what: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(what.to_string())
}

/// Waits for a future on this thread: delivery reports are completed by librdkafka's own
/// thread, so no async runtime is needed (writes run on the blocking pool, loads inside the
/// rebalance callback, the bench and `state inspect` outside any runtime).
fn wait<F: std::future::Future>(f: F) -> F::Output {
    use std::task::{Context, Poll, Wake, Waker};
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park_timeout(Duration::from_millis(100));
    }
}

impl KafkaStore {
    /// A store producing to and reading from the brokers of `client` (bootstrap servers and
    /// security settings); `local` holds the parked-device logs.
    pub fn new(
        client: &ClientConfig,
        template: &str,
        group: &str,
        local: DirStore,
        keep: usize,
    ) -> Result<Self, KafkaError> {
        let producer = Producer::new(
            client
                .clone()
                .set("enable.idempotence", "true")
                // A deleted changelog topic must not come back as a plain, uncompacted one.
                .set("allow.auto.create.topics", "false")
                .set("acks", "all")
                .set("linger.ms", "5")
                .set("message.timeout.ms", IO_TIMEOUT.as_millis().to_string()),
        )?;
        let reader: BaseConsumer = client
            .clone()
            .set("group.id", format!("{group}.checkpoint-reader"))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "true")
            .set("auto.offset.reset", "earliest")
            // Reads end at a known offset; a broker holding a fetch open to its maximum wait
            // (nisshi does) would otherwise add that to every range read.
            .set("fetch.wait.max.ms", "20")
            .set("fetch.max.bytes", (8 * CHUNK_BYTES).to_string())
            .set("max.partition.fetch.bytes", (2 * CHUNK_BYTES).to_string())
            .create()?;
        Ok(Self {
            local,
            template: template.to_string(),
            group: group.to_string(),
            keep: keep.max(1),
            producer,
            reader: Mutex::new(reader),
            partitions: Mutex::new(HashMap::new()),
            seqs: Mutex::new(HashMap::new()),
        })
    }

    /// The local directory of parked devices.
    pub fn local(&self) -> &DirStore {
        &self.local
    }

    /// `state.changelog_topic` as configured.
    pub fn topic_template(&self) -> &str {
        &self.template
    }

    /// The changelog topic of a stream.
    pub fn topic(&self, stream: &str) -> String {
        changelog_topic(&self.template, &self.group, stream)
    }

    fn partition_count(&self, topic: &str) -> std::io::Result<i32> {
        if let Some(n) = lock(&self.partitions).get(topic) {
            return Ok(*n);
        }
        let n = {
            let reader = lock(&self.reader);
            partition_count(&reader, topic)?
        };
        lock(&self.partitions).insert(topic.to_string(), n);
        Ok(n)
    }

    /// Hands one record for `partition` to the producer (waiting while its queue is full).
    fn enqueue(
        &self,
        topic: &str,
        partition: i32,
        key: &str,
        value: &[u8],
    ) -> std::io::Result<Delivery> {
        let deadline = Instant::now() + IO_TIMEOUT;
        let record = Record {
            topic,
            partition: Some(partition),
            key: Some(key.as_bytes()),
            payload: Some(value),
            ..Record::default()
        };
        loop {
            match self.producer.enqueue(&record) {
                Ok(d) => return Ok(d),
                Err(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull))
                    if Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(io(format!("cannot produce to {topic}: {e}"))),
            }
        }
    }

    /// Produces a checkpoint: its chunks, then its manifest. Returns where and its size.
    pub fn write(&self, c: &Checkpoint) -> std::io::Result<(String, usize)> {
        let h = &c.header;
        let topic = self.topic(&h.stream);
        let cp = h.partition.rem_euclid(self.partition_count(&topic)?);
        let mut blob = c.encode();
        let checkpoint_bytes = blob.len() as u64;
        if let Some(at) = h.parked {
            let path = self
                .local
                .partition_dir(&h.group, &h.stream, h.partition)
                .join(super::parked::log_name(at.generation));
            // Only the part the checkpoint names: the log keeps growing after it.
            use std::io::Read;
            std::fs::File::open(&path)
                .and_then(|f| f.take(at.len).read_to_end(&mut blob))
                .map_err(|e| io(format!("cannot read {}: {e}", path.display())))?;
        }
        let seq = {
            let mut seqs = lock(&self.seqs);
            let next = seqs.entry((h.stream.clone(), h.partition)).or_insert(0);
            let seq = *next;
            *next += 1;
            seq
        };
        let slot = seq % self.keep as u64;
        let mut chunks = Vec::with_capacity(blob.len().div_ceil(CHUNK_BYTES));
        // Chunks go out together and are awaited together: one round trip, not one per chunk.
        let mut pending = Vec::new();
        for (i, data) in blob.chunks(CHUNK_BYTES).enumerate() {
            let mut value = Vec::with_capacity(20 + data.len());
            value.extend_from_slice(CHUNK_MAGIC);
            value.extend_from_slice(&seq.to_le_bytes());
            value.extend_from_slice(&(i as u32).to_le_bytes());
            value.extend_from_slice(data);
            let key = format!("c/{}/{}/{slot}/{i}", h.stream, h.partition);
            let d = self.enqueue(&topic, cp, &key, &value)?;
            pending.push(d);
        }
        for d in pending {
            chunks.push(delivered(&topic, d)?);
        }
        if chunks.windows(2).any(|w| w[0] >= w[1]) {
            return Err(io(format!(
                "{topic}: checkpoint chunks landed out of order ({chunks:?})"
            )));
        }
        let manifest = Manifest {
            version: MANIFEST_VERSION,
            seq,
            header: h.clone(),
            checkpoint_bytes,
            parked_bytes: blob.len() as u64 - checkpoint_bytes,
            crc: crc32fast::hash(&blob),
            chunks,
        };
        let key = format!("m/{}/{}/{slot}", h.stream, h.partition);
        let at = delivered(&topic, self.enqueue(&topic, cp, &key, &manifest.encode())?)?;
        Ok((format!("kafka://{topic}/{cp}@{at}"), blob.len()))
    }

    /// The newest intact checkpoint of a partition that matches `want`.
    pub fn load(&self, want: &Expect<'_>) -> Loaded {
        let topic = self.topic(want.stream);
        let mut loaded = Loaded::default();
        let unavailable = |e: std::io::Error| Skipped {
            location: format!("kafka://{topic}"),
            reason: CheckpointError::Unavailable(e.to_string()),
        };
        let cp = match self.partition_count(&topic) {
            Ok(n) => want.partition.rem_euclid(n),
            Err(e) => {
                loaded.skipped.push(unavailable(e));
                return loaded;
            }
        };
        let reader = lock(&self.reader);
        let location = |offset: i64| format!("kafka://{topic}/{cp}@{offset}");
        let mut scan = match Scan::new(&reader, &topic, cp) {
            Ok(s) => s,
            Err(e) => {
                loaded.skipped.push(unavailable(e));
                return loaded;
            }
        };
        let prefix = format!("m/{}/{}/", want.stream, want.partition);
        // The newest `keep` manifests first; older ones only if none of those is usable.
        loop {
            let found = match scan.manifests(&prefix, self.keep) {
                Ok(f) if f.is_empty() => break,
                Ok(f) => f,
                Err(e) => {
                    loaded.skipped.push(unavailable(e));
                    break;
                }
            };
            let mut usable = Vec::new();
            for f in found {
                match f.manifest {
                    Ok(m) => usable.push((f.offset, m)),
                    Err(reason) => loaded.skipped.push(Skipped {
                        location: location(f.offset),
                        reason,
                    }),
                }
            }
            if let Some(max) = usable.iter().map(|(_, m)| m.seq).max() {
                let mut seqs = lock(&self.seqs);
                let next = seqs
                    .entry((want.stream.to_string(), want.partition))
                    .or_insert(0);
                *next = (*next).max(max + 1);
            }
            usable.sort_by_key(|(at, m)| std::cmp::Reverse((m.header.offset, m.seq, *at)));
            for (at, m) in usable {
                let result = Checkpoint {
                    header: m.header.clone(),
                    records: Default::default(),
                }
                .check(want)
                .and_then(|()| self.fetch(&reader, &topic, cp, &m));
                match result {
                    Ok(c) => {
                        loaded.checkpoint = Some((c, location(at)));
                        return loaded;
                    }
                    Err(reason) => loaded.skipped.push(Skipped {
                        location: location(at),
                        reason,
                    }),
                }
            }
        }
        loaded
    }

    /// Reads a manifest's chunks and puts the checkpoint back together.
    fn fetch(
        &self,
        reader: &BaseConsumer,
        topic: &str,
        cp: i32,
        m: &Manifest,
    ) -> Result<Checkpoint, CheckpointError> {
        let (Some(&first), Some(&last)) = (m.chunks.first(), m.chunks.last()) else {
            return Err(CheckpointError::Incomplete(
                "the manifest lists no chunks".into(),
            ));
        };
        let want: HashMap<i64, usize> = m.chunks.iter().enumerate().map(|(i, o)| (*o, i)).collect();
        let mut parts: Vec<Option<Vec<u8>>> = vec![None; m.chunks.len()];
        let mut bad = None;
        read_range(
            reader,
            topic,
            cp,
            first,
            last + 1,
            &mut |offset, _, value| {
                let Some(&i) = want.get(&offset) else { return };
                let header_ok = value.len() >= 20
                    && &value[..8] == CHUNK_MAGIC
                    && value[8..16] == m.seq.to_le_bytes()
                    && value[16..20] == (i as u32).to_le_bytes();
                if header_ok {
                    parts[i] = Some(value[20..].to_vec());
                } else if bad.is_none() {
                    bad = Some(format!(
                        "the record at offset {offset} is not chunk {i} of checkpoint {}",
                        m.seq
                    ));
                }
            },
        )
        .map_err(|e| CheckpointError::Unavailable(e.to_string()))?;
        if let Some(b) = bad {
            return Err(CheckpointError::Incomplete(b));
        }
        // The manifest's sizes are checked against the bytes present before anything is
        // sized by them.
        let present: u64 = parts.iter().flatten().map(|p| p.len() as u64).sum();
        let claimed = m.checkpoint_bytes.checked_add(m.parked_bytes);
        if parts.iter().all(Option::is_some) && claimed != Some(present) {
            return Err(CheckpointError::Incomplete(format!(
                "{present} bytes in the chunks, the manifest says {}",
                claimed.map_or("more than 2^64".into(), |c| c.to_string())
            )));
        }
        let mut blob = Vec::with_capacity(present as usize);
        for (i, p) in parts.into_iter().enumerate() {
            match p {
                Some(p) => blob.extend_from_slice(&p),
                None => {
                    return Err(CheckpointError::Incomplete(format!(
                        "chunk {i} (offset {}) is gone: compacted away by a newer checkpoint or deleted",
                        m.chunks[i]
                    )));
                }
            }
        }
        if blob.len() as u64 != m.checkpoint_bytes + m.parked_bytes {
            return Err(CheckpointError::Incomplete(format!(
                "{} bytes in the chunks, the manifest says {}",
                blob.len(),
                m.checkpoint_bytes + m.parked_bytes
            )));
        }
        let computed = crc32fast::hash(&blob);
        if computed != m.crc {
            return Err(CheckpointError::Checksum {
                stored: m.crc,
                computed,
            });
        }
        let c = Checkpoint::decode(&blob[..m.checkpoint_bytes as usize])?;
        if c.header != m.header {
            return Err(CheckpointError::Header(
                "the checkpoint's header differs from its manifest's".into(),
            ));
        }
        if let Some(at) = c.header.parked {
            // Back into the local log, which the engine stage opens (and cuts to `at.len`).
            let h = &c.header;
            let dir = self.local.partition_dir(&h.group, &h.stream, h.partition);
            let write = std::fs::create_dir_all(&dir).and_then(|()| {
                std::fs::write(
                    dir.join(super::parked::log_name(at.generation)),
                    &blob[m.checkpoint_bytes as usize..],
                )
            });
            if let Err(e) = write {
                return Err(CheckpointError::Unavailable(format!(
                    "cannot write its parked devices under {}: {e}",
                    dir.display()
                )));
            }
        }
        Ok(c)
    }

    /// Every manifest in a changelog topic (for `state inspect --topic`): reads the topic.
    pub fn list(&self, topic: &str) -> std::io::Result<Vec<FoundManifest>> {
        let reader = lock(&self.reader);
        let n = partition_count(&reader, topic)?;
        let mut found = Vec::new();
        for cp in 0..n {
            found.extend(Scan::new(&reader, topic, cp)?.manifests("m/", usize::MAX)?);
        }
        Ok(found)
    }
}

/// Reads a changelog partition backwards, from its end to its start, in growing windows.
struct Scan<'a> {
    reader: &'a BaseConsumer,
    topic: &'a str,
    cp: i32,
    low: i64,
    end: i64,
    window: i64,
}

impl<'a> Scan<'a> {
    fn new(reader: &'a BaseConsumer, topic: &'a str, cp: i32) -> std::io::Result<Self> {
        let (low, high) = reader
            .fetch_watermarks(topic, cp, IO_TIMEOUT)
            .map_err(|e| io(format!("cannot read the offsets of {topic}/{cp}: {e}")))?;
        Ok(Self {
            reader,
            topic,
            cp,
            low,
            end: high,
            window: FIRST_WINDOW,
        })
    }

    /// The next (older) manifests under keys starting with `prefix`: windows are read until
    /// at least `want` are found or the start of the log is reached; empty at the start.
    fn manifests(&mut self, prefix: &str, want: usize) -> std::io::Result<Vec<FoundManifest>> {
        let mut found = Vec::new();
        while self.end > self.low && found.len() < want {
            let start = (self.end - self.window).max(self.low);
            let cp = self.cp;
            read_range(
                self.reader,
                self.topic,
                cp,
                start,
                self.end,
                &mut |offset, key, value| {
                    if key.is_some_and(|k| k.starts_with(prefix.as_bytes())) {
                        found.push(FoundManifest {
                            partition: cp,
                            offset,
                            bytes: value.len(),
                            manifest: Manifest::decode(value),
                        });
                    }
                },
            )?;
            self.end = start;
            self.window = self.window.saturating_mul(4);
        }
        Ok(found)
    }
}

/// Waits for a record's acknowledgement; its offset.
fn delivered(topic: &str, d: Delivery) -> std::io::Result<i64> {
    match wait(d) {
        Ok(offset) => Ok(offset),
        Err(KafkaError::Canceled) => Err(io(format!("the producer for {topic} went away"))),
        Err(e) => Err(io(format!("{topic} did not take a checkpoint record: {e}"))),
    }
}

fn partition_count(reader: &BaseConsumer, topic: &str) -> std::io::Result<i32> {
    let md = reader
        .fetch_metadata(Some(topic), IO_TIMEOUT)
        .map_err(|e| io(format!("cannot read the metadata of {topic}: {e}")))?;
    match md.topics().iter().find(|t| t.name() == topic) {
        Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
            Ok(t.partitions().len() as i32)
        }
        _ => Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("changelog topic {topic} does not exist"),
        )),
    }
}

/// What [`read_range`] calls for each record: offset, key, value.
type OnRecord<'a> = dyn FnMut(i64, Option<&[u8]>, &[u8]) + 'a;

/// Calls `f(offset, key, value)` for every record of `topic/cp` in `[start, end)` that is
/// still there.
fn read_range(
    reader: &BaseConsumer,
    topic: &str,
    cp: i32,
    start: i64,
    end: i64,
    f: &mut OnRecord<'_>,
) -> std::io::Result<()> {
    if start >= end {
        return Ok(());
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, cp, Offset::Offset(start))
        .map_err(io)?;
    reader.assign(&tpl).map_err(io)?;
    let mut last_progress = Instant::now();
    let result = loop {
        match reader.poll(Duration::from_millis(200)) {
            Some(Ok(m)) if m.topic() == topic && m.partition() == cp => {
                last_progress = Instant::now();
                let o = m.offset();
                if o >= end {
                    break Ok(());
                }
                if o >= start {
                    f(o, m.key(), m.payload().unwrap_or_default());
                }
                if o >= end - 1 {
                    break Ok(());
                }
            }
            Some(Ok(_)) => {}
            Some(Err(KafkaError::PartitionEOF(p))) if p == cp => break Ok(()),
            Some(Err(e)) if last_progress.elapsed() > IO_TIMEOUT => {
                break Err(io(format!("reading {topic}/{cp}: {e}")));
            }
            Some(Err(e)) => tracing::debug!(topic, partition = cp, error = %e, "changelog read"),
            None if last_progress.elapsed() > IO_TIMEOUT => {
                break Err(io(format!(
                    "reading {topic}/{cp} made no progress for {} s",
                    IO_TIMEOUT.as_secs()
                )));
            }
            None => {}
        }
    };
    let _ = reader.unassign();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_round_trip_and_refuse_other_versions() {
        let m = Manifest {
            version: MANIFEST_VERSION,
            seq: 7,
            header: super::super::tests::sample().header,
            checkpoint_bytes: 100,
            parked_bytes: 0,
            crc: 1,
            chunks: vec![3, 4],
        };
        assert_eq!(Manifest::decode(&m.encode()).expect("decodes"), m);
        let other = Manifest { version: 9, ..m };
        assert_eq!(
            Manifest::decode(&other.encode()),
            Err(CheckpointError::UnknownVersion(9))
        );
        assert_eq!(Manifest::decode(b"junk"), Err(CheckpointError::BadMagic));
    }
}
