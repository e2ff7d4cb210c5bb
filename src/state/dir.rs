//! The checkpoint store in a local (or shared) directory.
//!
//! Layout: `<root>/<group>/<stream>/p<partition>/<offset, 20 digits>.ckpt`. A checkpoint is
//! written to a temporary file in the same folder, flushed to disk, renamed into place and the
//! folder flushed, so a crash leaves either the old set of files or the new one, never half a
//! file under a checkpoint's name (a torn temporary file is ignored and removed later). The
//! newest `keep` checkpoints of a partition are kept; loading walks them newest first and
//! skips, with the reason, any that is damaged or belongs to another model.

use super::{Checkpoint, CheckpointError, Expect, Header, Loaded, Skipped};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Checkpoints under one directory.
#[derive(Debug, Clone)]
pub struct DirStore {
    root: PathBuf,
    keep: usize,
}

/// One checkpoint file as listed by [`DirStore::list`].
#[derive(Debug)]
pub struct Listed {
    /// Its file.
    pub path: PathBuf,
    /// Size in bytes.
    pub bytes: u64,
    /// Its header, or why it cannot be read.
    pub header: Result<Header, CheckpointError>,
}

impl DirStore {
    /// A store rooted at `root` keeping `keep` checkpoints per partition.
    pub fn new(root: impl Into<PathBuf>, keep: usize) -> Self {
        Self {
            root: root.into(),
            keep: keep.max(1),
        }
    }

    /// The store's root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The folder of one partition's checkpoints (and parked devices).
    pub fn partition_dir(&self, group: &str, stream: &str, partition: i32) -> PathBuf {
        self.root
            .join(sanitize(group))
            .join(sanitize(stream))
            .join(format!("p{partition}"))
    }

    /// Writes a checkpoint durably and prunes older ones; returns its path and size.
    pub fn write(&self, c: &Checkpoint) -> std::io::Result<(PathBuf, usize)> {
        let h = &c.header;
        let dir = self.partition_dir(&h.group, &h.stream, h.partition);
        std::fs::create_dir_all(&dir)?;
        let name = format!("{:020}.ckpt", h.offset.max(0));
        let path = dir.join(&name);
        let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
        let bytes = c.encode();
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &path)?;
        // The rename itself must reach the disk before the checkpoint counts.
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        self.prune(&dir);
        Ok((path, bytes.len()))
    }

    /// Removes all but the newest `keep` checkpoints of a partition folder, and leftover
    /// temporary files of earlier processes.
    fn prune(&self, dir: &Path) {
        let mut files = checkpoint_files(dir);
        files.sort();
        let excess = files.len().saturating_sub(self.keep);
        for f in files.into_iter().take(excess) {
            let _ = std::fs::remove_file(f);
        }
        // Temporary files of other processes: a crashed one's are removed once stale; a
        // live one's (another instance sharing the directory, mid-write) are left alone.
        let own = format!(".tmp-{}", std::process::id());
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                let stale = || {
                    e.metadata()
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| t.elapsed().ok())
                        .is_some_and(|age| age > STALE_TEMP)
                };
                if name.starts_with('.')
                    && name.contains(".tmp-")
                    && !name.ends_with(&own)
                    && stale()
                {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }

    /// The newest checkpoint of a partition that is intact and matches `want`, and the newer
    /// ones passed over.
    pub fn load(&self, want: &Expect<'_>) -> Loaded {
        let dir = self.partition_dir(want.group, want.stream, want.partition);
        let mut files = checkpoint_files(&dir);
        files.sort();
        let mut loaded = Loaded::default();
        for path in files.into_iter().rev() {
            let result = std::fs::read(&path)
                .map_err(|e| CheckpointError::Header(format!("cannot read: {e}")))
                .and_then(|b| Checkpoint::decode(&b))
                .and_then(|c| c.check(want).map(|()| c));
            match result {
                Ok(c) => {
                    loaded.checkpoint = Some((c, path.display().to_string()));
                    break;
                }
                Err(reason) => loaded.skipped.push(Skipped {
                    location: path.display().to_string(),
                    reason,
                }),
            }
        }
        loaded
    }

    /// Every checkpoint file under the root, with its header (or why it cannot be read).
    pub fn list(&self) -> std::io::Result<Vec<Listed>> {
        let mut out = Vec::new();
        let mut stack = vec![self.root.clone()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d)?.flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|x| x == "ckpt") {
                    let bytes = e.metadata().map(|m| m.len()).unwrap_or(0);
                    let header = std::fs::read(&p)
                        .map_err(|e| CheckpointError::Header(format!("cannot read: {e}")))
                        .and_then(|b| Checkpoint::decode(&b))
                        .map(|c| c.header);
                    out.push(Listed {
                        path: p,
                        bytes,
                        header,
                    });
                }
            }
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }
}

fn checkpoint_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.extension().is_some_and(|x| x == "ckpt")
                        && p.file_name()
                            .is_some_and(|n| !n.to_string_lossy().starts_with('.'))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A name usable as one path component (group and stream names are free text in Kafka).
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect::<String>()
        .trim_start_matches('.')
        .to_string()
}

/// Age past which another process's temporary checkpoint file counts as abandoned.
const STALE_TEMP: std::time::Duration = std::time::Duration::from_secs(3600);

#[cfg(test)]
mod tests {
    use super::*;

    fn at(offset: i64) -> Checkpoint {
        let mut c = super::super::tests::sample();
        c.header.offset = offset;
        c
    }

    fn want(model: &str) -> Expect<'_> {
        Expect {
            group: "g",
            stream: "pumps",
            topic: "t",
            partition: 2,
            model: Some(model),
            layout: Some(at(0).header.layout),
            topic_id: None,
            range: None,
        }
    }

    #[test]
    fn newest_wins_old_ones_are_pruned() {
        let d = tempfile::tempdir().expect("tmp");
        let store = DirStore::new(d.path(), 2);
        for o in [10, 30, 20] {
            store.write(&at(o)).expect("write");
        }
        let listed = store.list().expect("list");
        assert_eq!(listed.len(), 2, "keep = 2");
        let l = store.load(&want("v1"));
        assert_eq!(l.checkpoint.expect("found").0.header.offset, 30);
        assert!(l.skipped.is_empty());
        assert!(
            store
                .load(&Expect {
                    partition: 1,
                    ..want("v1")
                })
                .checkpoint
                .is_none()
        );
    }

    #[test]
    fn damaged_or_mismatched_checkpoints_fall_back_to_older_ones() {
        let d = tempfile::tempdir().expect("tmp");
        let store = DirStore::new(d.path(), 5);
        let (p1, _) = store.write(&at(100)).expect("write");
        let (p2, _) = store.write(&at(200)).expect("write");
        let (p3, _) = store.write(&at(300)).expect("write");
        let (p4, _) = store.write(&at(400)).expect("write");
        // 400: truncated; 300: a bit flipped; 200: unknown format version; 100 intact.
        let b = std::fs::read(&p4).expect("read");
        std::fs::write(&p4, &b[..b.len() / 2]).expect("cut");
        let mut b = std::fs::read(&p3).expect("read");
        b[25] ^= 0x40;
        std::fs::write(&p3, b).expect("flip");
        let mut b = std::fs::read(&p2).expect("read");
        b[8..12].copy_from_slice(&7u32.to_le_bytes());
        std::fs::write(&p2, b).expect("version");
        let l = store.load(&want("v1"));
        let (c, path) = l.checkpoint.expect("falls back");
        assert_eq!((c.header.offset, path), (100, p1.display().to_string()));
        let reasons: Vec<_> = l.skipped.iter().map(|s| s.reason.clone()).collect();
        assert!(
            matches!(reasons[0], CheckpointError::Checksum { .. }),
            "{reasons:?}"
        );
        assert!(matches!(reasons[1], CheckpointError::Checksum { .. }));
        assert_eq!(reasons[2], CheckpointError::UnknownVersion(7));
        // Another model: nothing usable, each one named.
        let l = store.load(&want("v2"));
        assert!(l.checkpoint.is_none());
        assert_eq!(l.skipped.len(), 4);
        assert!(matches!(l.skipped[3].reason, CheckpointError::Mismatch(_)));
    }

    #[test]
    fn a_torn_temporary_file_is_ignored() {
        let d = tempfile::tempdir().expect("tmp");
        let store = DirStore::new(d.path(), 3);
        let (p, _) = store.write(&at(5)).expect("write");
        let torn = p.with_file_name(".00000000000000000009.ckpt.tmp-1");
        std::fs::write(&torn, b"SNSRCK").expect("torn");
        assert_eq!(
            store
                .load(&want("v1"))
                .checkpoint
                .expect("found")
                .0
                .header
                .offset,
            5
        );
        std::fs::File::options()
            .write(true)
            .open(&torn)
            .and_then(|f| f.set_modified(std::time::SystemTime::now() - 2 * STALE_TEMP))
            .expect("age the torn file");
        // Another instance's write in progress (a shared directory during a rebalance).
        let writing = p.with_file_name(".00000000000000000011.ckpt.tmp-2");
        std::fs::write(&writing, b"SNSRCK").expect("in progress");
        store.write(&at(6)).expect("write");
        assert!(
            !torn.exists(),
            "a dead process's stale temporary file is removed"
        );
        assert!(
            writing.exists(),
            "another process's fresh temporary file is left alone"
        );
    }
}
