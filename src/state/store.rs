//! Where checkpoints are kept: a directory ([`DirStore`], the default) or a compacted Kafka
//! changelog topic ([`KafkaStore`]). Both keep the newest `state.keep` checkpoints of every
//! partition, load the newest one that is intact and matches what is running, and report the
//! ones they pass over. Parked devices always live in a local directory
//! (`<state.dir>/<group>/<stream>/p<N>/`); the Kafka store carries them inside each
//! checkpoint so that another machine can take them over.

use super::kafka::KafkaStore;
use super::{Checkpoint, DirStore, Expect, Loaded};
use std::path::PathBuf;
use std::sync::Arc;

/// A checkpoint store.
#[derive(Clone)]
pub enum Store {
    /// Files under a local or shared directory.
    Dir(DirStore),
    /// A compacted changelog topic per stream.
    Kafka(Arc<KafkaStore>),
}

impl Store {
    /// Writes a checkpoint durably (and prunes older ones); returns where and its size.
    pub fn write(&self, c: &Checkpoint) -> std::io::Result<(String, usize)> {
        match self {
            Store::Dir(d) => d.write(c).map(|(p, n)| (p.display().to_string(), n)),
            Store::Kafka(k) => k.write(c),
        }
    }

    /// The newest intact checkpoint of a partition that matches `want`, and the newer ones
    /// passed over.
    pub fn load(&self, want: &Expect<'_>) -> Loaded {
        match self {
            Store::Dir(d) => d.load(want),
            Store::Kafka(k) => k.load(want),
        }
    }

    /// The local folder of one partition's parked devices.
    pub fn partition_dir(&self, group: &str, stream: &str, partition: i32) -> PathBuf {
        self.local().partition_dir(group, stream, partition)
    }

    /// The local directory (checkpoints for the directory store, parked devices for both).
    pub fn local(&self) -> &DirStore {
        match self {
            Store::Dir(d) => d,
            Store::Kafka(k) => k.local(),
        }
    }

    /// For logs: where checkpoints go.
    pub fn describe(&self) -> String {
        match self {
            Store::Dir(d) => format!("directory {}", d.root().display()),
            Store::Kafka(k) => format!(
                "Kafka changelog topic {} (parked devices under {})",
                k.topic_template(),
                k.local().root().display()
            ),
        }
    }
}

impl From<DirStore> for Store {
    fn from(d: DirStore) -> Self {
        Store::Dir(d)
    }
}
