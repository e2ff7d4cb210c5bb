//! Durable device state: checkpoints of {partition offset, device states, model version}.
//!
//! Keeps invariant §3.3 (state survives). A checkpoint holds, for one Kafka partition of one
//! stream, the records of every device whose last reading came from that partition
//! ([`crate::engine::snapshot`]) and the offset of the next message to read: the states are
//! exactly those after every message before that offset, and nothing after. It is written
//! only once InfluxDB acknowledged every point of those messages (the sink persists it in
//! order with the writes), so restoring it and re-reading from its offset loses nothing and
//! rewrites the points that follow with exactly the values they had (§3.2, §3.6).
//!
//! The file format (version 1), little-endian:
//!
//! ```text
//! magic "SNSRCKPT" | u32 format version | u32 header length | header (JSON) |
//! device records | u32 CRC-32 of everything before it
//! ```
//!
//! The header names the stream, topic, partition, offset, model version, record layout and
//! device count. A checkpoint is used only for its own stream, topic (and its incarnation),
//! partition and layout; one taken with another model version is restored into that version,
//! loaded from the registry, and re-warmed into the current one (`crate::serve::swap`), and
//! only if that version is gone do its devices start cold. Damaged files (bad checksum,
//! truncated, unknown version, bad header) and mismatched ones are reported with their path
//! and reason and skipped: the partition falls back to an older checkpoint or, failing that,
//! starts its devices cold from the group's committed offset.

pub mod dir;
pub mod kafka;
pub mod parked;
pub mod store;

use crate::engine::snapshot::{ShardRecords, StateLayout};
use serde::{Deserialize, Serialize};

pub use dir::DirStore;
pub use kafka::KafkaStore;
pub use store::Store;

/// A checkpoint that was passed over on load, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Skipped {
    /// Where it is: a file, or `kafka://topic/partition@offset`.
    pub location: String,
    /// Why.
    pub reason: CheckpointError,
}

/// What a load found for a partition.
#[derive(Debug, Default)]
pub struct Loaded {
    /// The newest usable checkpoint and where it was.
    pub checkpoint: Option<(Checkpoint, String)>,
    /// Newer ones that could not be used.
    pub skipped: Vec<Skipped>,
}

/// First bytes of every checkpoint file.
pub const MAGIC: &[u8; 8] = b"SNSRCKPT";
/// The format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// What a checkpoint is about.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    /// Consumer group.
    pub group: String,
    /// Stream name.
    pub stream: String,
    /// Kafka topic.
    pub topic: String,
    /// The topic's id (KIP-516) when the checkpoint was taken, if the cluster reported one: a
    /// topic deleted and created again, or the same name on a rebuilt cluster, has another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic_id: Option<String>,
    /// Partition.
    pub partition: i32,
    /// The next offset to read: the states reflect every message before it.
    pub offset: i64,
    /// Model version the states were computed with.
    pub model: String,
    /// Shape of the device records.
    pub layout: StateLayout,
    /// Devices in the checkpoint.
    pub devices: u64,
    /// When it was taken (ms since the epoch, wall clock).
    pub created_ms: i64,
    /// The partition's parked devices (evicted after `engine.device_ttl`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parked: Option<parked::ParkedRef>,
}

/// One partition's checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    /// What it holds.
    pub header: Header,
    /// The device records.
    pub records: ShardRecords,
}

/// Why a checkpoint could not be read or used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CheckpointError {
    /// Shorter than the fixed parts.
    #[error("truncated: {0} bytes is shorter than a checkpoint's fixed parts")]
    TooShort(usize),
    /// Not a checkpoint file.
    #[error("not a sensorcast checkpoint (bad magic bytes)")]
    BadMagic,
    /// Written by a newer (or unknown) format.
    #[error("unknown checkpoint format version {0} (this build reads version {FORMAT_VERSION})")]
    UnknownVersion(u32),
    /// The checksum does not match: damaged or cut short.
    #[error(
        "checksum mismatch (stored {stored:08x}, computed {computed:08x}): damaged or truncated"
    )]
    Checksum {
        /// In the file.
        stored: u32,
        /// Over the bytes read.
        computed: u32,
    },
    /// The header does not parse.
    #[error("bad header: {0}")]
    Header(String),
    /// A valid checkpoint that belongs to something else than what is running.
    #[error("{0}")]
    Mismatch(String),
    /// Taken from an earlier incarnation of the topic (deleted and re-created, or a rebuilt
    /// cluster): its offsets mean nothing in the current one.
    #[error("{0}")]
    Recreated(String),
    /// Its offset lies outside the partition's current offsets.
    #[error("{0}")]
    OutOfRange(String),
    /// Parts of a checkpoint in the changelog topic are missing or out of place.
    #[error("incomplete: {0}")]
    Incomplete(String),
    /// The store cannot be read (broker unreachable, topic missing, disk error).
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

impl Checkpoint {
    /// The file's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let header = serde_json::to_vec(&self.header).unwrap_or_default();
        let mut out = Vec::with_capacity(20 + header.len() + self.records.bytes.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&(header.len() as u32).to_le_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(&self.records.bytes);
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Reads a file's bytes, checking magic, version, checksum and header.
    pub fn decode(bytes: &[u8]) -> Result<Self, CheckpointError> {
        if bytes.len() < 20 {
            return Err(CheckpointError::TooShort(bytes.len()));
        }
        if &bytes[..8] != MAGIC {
            return Err(CheckpointError::BadMagic);
        }
        let u32_at =
            |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        let version = u32_at(8);
        if version != FORMAT_VERSION {
            return Err(CheckpointError::UnknownVersion(version));
        }
        let body = &bytes[..bytes.len() - 4];
        let stored = u32_at(bytes.len() - 4);
        let computed = crc32fast::hash(body);
        if stored != computed {
            return Err(CheckpointError::Checksum { stored, computed });
        }
        let hlen = u32_at(12) as usize;
        if 16 + hlen > body.len() {
            return Err(CheckpointError::Header(format!(
                "header length {hlen} runs past the end of the file"
            )));
        }
        let header: Header = serde_json::from_slice(&body[16..16 + hlen])
            .map_err(|e| CheckpointError::Header(e.to_string()))?;
        let records = ShardRecords {
            devices: header.devices as usize,
            bytes: body[16 + hlen..].to_vec(),
        };
        Ok(Self { header, records })
    }

    /// Checks that the checkpoint belongs to what is running: same group, stream, topic,
    /// partition, model version and record layout.
    pub fn check(&self, want: &Expect<'_>) -> Result<(), CheckpointError> {
        let h = &self.header;
        let mismatch = |what: &str, found: &dyn std::fmt::Debug, need: &dyn std::fmt::Debug| {
            Err(CheckpointError::Mismatch(format!(
                "taken for {what} {found:?}, running {need:?}"
            )))
        };
        if h.group != want.group {
            return mismatch("group", &h.group, &want.group);
        }
        if h.stream != want.stream {
            return mismatch("stream", &h.stream, &want.stream);
        }
        if h.topic != want.topic {
            return mismatch("topic", &h.topic, &want.topic);
        }
        if h.partition != want.partition {
            return mismatch("partition", &h.partition, &want.partition);
        }
        if let Some(model) = want.model
            && h.model != model
        {
            return mismatch("model version", &h.model, &model);
        }
        if let Some(layout) = want.layout
            && h.layout != layout
        {
            return mismatch("record layout", &h.layout, &layout);
        }
        if let (Some(then), Some(now)) = (&h.topic_id, want.topic_id)
            && then != now
        {
            return Err(CheckpointError::Recreated(format!(
                "taken from topic {} with id {then}, which now has id {now}: the topic was deleted and re-created or the cluster rebuilt",
                h.topic
            )));
        }
        if let Some((low, high)) = want.range
            && !(low..=high).contains(&h.offset)
        {
            let why = if h.offset > high {
                "the topic was re-created or truncated"
            } else {
                "retention deleted the messages after it"
            };
            return Err(CheckpointError::OutOfRange(format!(
                "its offset {} lies outside the partition's offsets {low}..={high}: {why}",
                h.offset
            )));
        }
        Ok(())
    }
}

/// What a checkpoint must match to be restored.
#[derive(Debug, Clone)]
pub struct Expect<'a> {
    /// Consumer group.
    pub group: &'a str,
    /// Stream name.
    pub stream: &'a str,
    /// Topic.
    pub topic: &'a str,
    /// Partition.
    pub partition: i32,
    /// Model version in use; `None`: any version, newest checkpoint first (`serve`: the engine
    /// stage restores a checkpoint into its own model and re-warms it into the current one,
    /// [`crate::serve::swap`]; the layout is then checked by the engine that takes the records).
    pub model: Option<&'a str>,
    /// The record layout; `None`: any.
    pub layout: Option<StateLayout>,
    /// The topic's current id; `None`: unknown (a checkpoint of any incarnation passes).
    pub topic_id: Option<&'a str>,
    /// The partition's current offsets (low and high watermark): a checkpoint's offset must
    /// lie within them; `None`: unknown.
    pub range: Option<(i64, i64)>,
}

/// One checkpoint as `state inspect` lists it.
struct Row {
    header: Result<Header, CheckpointError>,
    bytes: u64,
    location: String,
}

/// `sensorcast state inspect --dir`: one line per partition (its newest intact checkpoint, how
/// many it has, their total size, the newest one's age) and one per file that cannot be read.
pub fn inspect(root: &std::path::Path, now_ms: i64) -> std::io::Result<String> {
    let rows = DirStore::new(root, 1)
        .list()?
        .into_iter()
        .map(|l| Row {
            header: l.header,
            bytes: l.bytes,
            location: l.path.display().to_string(),
        })
        .collect();
    Ok(report(
        rows,
        &format!("files under {}", root.display()),
        now_ms,
    ))
}

/// `sensorcast state inspect --topic`: the same for the manifests in a changelog topic (it
/// reads the whole topic).
pub fn inspect_topic(store: &KafkaStore, topic: &str, now_ms: i64) -> std::io::Result<String> {
    let rows = store
        .list(topic)?
        .into_iter()
        .map(|f| Row {
            bytes: f
                .manifest
                .as_ref()
                .map(|m| m.checkpoint_bytes + m.parked_bytes)
                .unwrap_or(f.bytes as u64),
            header: f.manifest.map(|m| m.header),
            location: format!("kafka://{topic}/{}@{}", f.partition, f.offset),
        })
        .collect();
    Ok(report(rows, &format!("manifests in {topic}"), now_ms))
}

fn report(rows: Vec<Row>, source: &str, now_ms: i64) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<20} {:<16} {:<24} {:>4} {:>12} {:>9} {:<28} {:>5} {:>12} {:>9}",
        "group", "stream", "topic", "part", "offset", "devices", "model", "ckpts", "bytes", "age"
    );
    // Newest intact checkpoint per (group, stream, partition), with counts over all of them.
    let mut parts: std::collections::BTreeMap<(String, String, i32), (Header, usize, u64)> =
        Default::default();
    let mut problems = Vec::new();
    for r in &rows {
        match &r.header {
            Ok(h) => {
                let e = parts
                    .entry((h.group.clone(), h.stream.clone(), h.partition))
                    .or_insert_with(|| (h.clone(), 0, 0));
                if h.offset >= e.0.offset {
                    e.0 = h.clone();
                }
                e.1 += 1;
                e.2 += r.bytes;
            }
            Err(e) => problems.push(format!("{}: {e}", r.location)),
        }
    }
    let (mut devices, mut bytes) = (0u64, 0u64);
    for ((group, stream, p), (h, n, b)) in &parts {
        devices += h.devices;
        bytes += b;
        let age = (now_ms - h.created_ms).max(0) as f64 / 1000.0;
        let _ = writeln!(
            out,
            "{group:<20} {stream:<16} {:<24} {p:>4} {:>12} {:>9} {:<28} {n:>5} {b:>12} {:>8.0}s",
            h.topic, h.offset, h.devices, h.model, age
        );
    }
    let _ = writeln!(
        out,
        "{} partitions, {devices} devices in their newest checkpoints, {bytes} bytes in {} {source}",
        parts.len(),
        rows.len(),
    );
    for p in problems {
        let _ = writeln!(out, "unreadable: {p}");
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample() -> Checkpoint {
        Checkpoint {
            header: Header {
                group: "g".into(),
                stream: "pumps".into(),
                topic: "t".into(),
                topic_id: None,
                partition: 2,
                offset: 1234,
                model: "v1".into(),
                layout: StateLayout {
                    state_len: 4,
                    features: 2,
                    horizon: 1,
                    watch: true,
                },
                devices: 1,
                created_ms: 1,
                parked: None,
            },
            records: ShardRecords {
                devices: 1,
                bytes: vec![7; 40],
            },
        }
    }

    #[test]
    fn round_trip_and_every_kind_of_damage() {
        let c = sample();
        let bytes = c.encode();
        assert_eq!(Checkpoint::decode(&bytes).expect("decodes"), c);
        let mut flipped = bytes.clone();
        flipped[30] ^= 1;
        assert!(matches!(
            Checkpoint::decode(&flipped),
            Err(CheckpointError::Checksum { .. })
        ));
        assert!(matches!(
            Checkpoint::decode(&bytes[..bytes.len() - 10]),
            Err(CheckpointError::Checksum { .. })
        ));
        assert!(matches!(
            Checkpoint::decode(&bytes[..10]),
            Err(CheckpointError::TooShort(10))
        ));
        let mut magic = bytes.clone();
        magic[0] = b'X';
        assert_eq!(Checkpoint::decode(&magic), Err(CheckpointError::BadMagic));
        let mut version = bytes.clone();
        version[8..12].copy_from_slice(&9u32.to_le_bytes());
        assert_eq!(
            Checkpoint::decode(&version),
            Err(CheckpointError::UnknownVersion(9))
        );
        let err = CheckpointError::UnknownVersion(9).to_string();
        assert!(err.contains("version 9"), "{err}");
    }

    #[test]
    fn inspect_lists_partitions_and_unreadable_files() {
        let d = tempfile::tempdir().expect("tmp");
        let store = DirStore::new(d.path(), 3);
        let mut c = sample();
        store.write(&c).expect("write");
        c.header.offset = 2000;
        c.header.created_ms = 61_000;
        let (path, _) = store.write(&c).expect("write");
        std::fs::write(path.with_file_name("00000000000000000001.ckpt"), b"junk").expect("junk");
        let text = inspect(d.path(), 121_000).expect("inspect");
        let line = text
            .lines()
            .find(|l| l.contains("pumps"))
            .expect("partition line");
        let cols: Vec<_> = line.split_whitespace().collect();
        assert_eq!(
            cols[..7],
            ["g", "pumps", "t", "2", "2000", "1", "v1"],
            "{text}"
        );
        assert_eq!(cols[7], "2", "two intact files: {text}");
        assert!(line.ends_with("60s"), "{text}");
        assert!(
            text.contains("unreadable") && text.contains("truncated"),
            "{text}"
        );
    }

    #[test]
    fn a_checkpoint_of_an_earlier_topic_incarnation_or_outside_the_offsets_is_refused() {
        let mut c = sample();
        let want = Expect {
            group: "g",
            stream: "pumps",
            topic: "t",
            partition: 2,
            model: None,
            layout: None,
            topic_id: Some("new-id"),
            range: Some((0, 2000)),
        };
        // Taken where the cluster reported no id: its incarnation cannot be told.
        assert!(c.check(&want).is_ok());
        c.header.topic_id = Some("new-id".into());
        assert!(c.check(&want).is_ok());
        c.header.topic_id = Some("old-id".into());
        let err = c.check(&want).unwrap_err();
        assert!(matches!(err, CheckpointError::Recreated(_)), "{err}");
        assert!(err.to_string().contains("re-created"), "{err}");
        // The id is unknown now (an old broker): only the offsets are checked.
        assert!(
            c.check(&Expect {
                topic_id: None,
                ..want.clone()
            })
            .is_ok()
        );
        c.header.topic_id = None;
        for (range, why) in [
            ((0, 1000), "re-created or truncated"),
            ((1300, 2000), "retention"),
        ] {
            let err = c
                .check(&Expect {
                    range: Some(range),
                    ..want.clone()
                })
                .unwrap_err();
            assert!(matches!(err, CheckpointError::OutOfRange(_)), "{err}");
            assert!(err.to_string().contains(why), "{err}");
        }
        // At either end of the partition's offsets is within them.
        for range in [(0, 1234), (1234, 1234)] {
            assert!(
                c.check(&Expect {
                    range: Some(range),
                    ..want.clone()
                })
                .is_ok()
            );
        }
        // A checkpoint written by an older build (no topic id) still reads.
        let old = String::from_utf8_lossy(&sample().encode()).contains("topic_id");
        assert!(!old, "an unknown id is not written");
    }

    #[test]
    fn a_checkpoint_of_another_model_or_partition_is_refused() {
        let c = sample();
        let want = Expect {
            group: "g",
            stream: "pumps",
            topic: "t",
            partition: 2,
            model: Some("v1"),
            layout: Some(c.header.layout),
            topic_id: None,
            range: None,
        };
        assert!(c.check(&want).is_ok());
        let err = c
            .check(&Expect {
                model: Some("v2"),
                ..want.clone()
            })
            .unwrap_err()
            .to_string();
        assert!(err.contains("model version") && err.contains("v2"), "{err}");
        assert!(
            c.check(&Expect {
                partition: 1,
                ..want.clone()
            })
            .is_err()
        );
        let mut l = c.header.layout;
        l.state_len = 8;
        assert!(
            c.check(&Expect {
                layout: Some(l),
                ..want
            })
            .is_err()
        );
    }
}
