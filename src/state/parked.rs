//! Parked devices: the state of devices evicted from the engine after `engine.device_ttl`
//! without a reading, kept on disk so that memory holds only an index entry for them, and
//! restored when they come back (§3.5: idle devices are evicted, their state kept).
//!
//! One append-only log per partition and generation, beside the partition's checkpoints:
//! `parked-<generation>.log`, entries `u32 length | i64 last timestamp | u16 id length | id |
//! record | u32 CRC-32`. A checkpoint names the generation and the log's length when it was
//! taken; restoring it truncates the log to that length and indexes the entries before it, so
//! an eviction that happened after the checkpoint (its device is in the checkpoint's active
//! records) is forgotten with the rest of what followed. The log is flushed to disk before any
//! checkpoint that names it is written. When most of a log is dead (devices that came back, or
//! parked longer than `state.parked_retention`), its live entries are copied into the next
//! generation; the generation before the current one is kept for checkpoints that fall back.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Where a checkpoint's parked devices are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParkedRef {
    /// Log generation.
    pub generation: u64,
    /// Bytes of the log that belong to the checkpoint.
    pub len: u64,
    /// Devices parked in it.
    pub devices: u64,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    pos: u64,
    len: u32,
    last_ts: i64,
}

/// One partition's parked devices.
#[derive(Debug)]
pub struct ParkedLog {
    dir: PathBuf,
    generation: u64,
    file: std::fs::File,
    len: u64,
    index: HashMap<String, Entry>,
    live_bytes: u64,
    dirty: bool,
}

/// Framing bytes around a record: length, timestamp, id length, CRC.
const FRAME: usize = 4 + 8 + 2 + 4;

/// File name of a parked-device log generation.
pub fn log_name(generation: u64) -> String {
    format!("parked-{generation:010}.log")
}

fn log_path(dir: &Path, generation: u64) -> PathBuf {
    dir.join(log_name(generation))
}

impl ParkedLog {
    /// Opens (creating if need be) generation `at.generation` in `dir`, cut to `at.len`, and
    /// indexes its entries; devices `active` (restored from the checkpoint) are left out.
    /// Damaged entries end the scan (what follows them is dropped and logged).
    pub fn open(dir: &Path, at: ParkedRef, active: &dyn Fn(&str) -> bool) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = log_path(dir, at.generation);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        let have = file.metadata()?.len();
        if have < at.len {
            tracing::warn!(path = %path.display(), have, want = at.len, "parked-device log is shorter than its checkpoint says; the devices missing from it start cold when they return");
        }
        let len = at.len.min(have);
        file.set_len(len)?;
        let mut bytes = Vec::with_capacity(len as usize);
        file.seek(SeekFrom::Start(0))?;
        (&mut file).take(len).read_to_end(&mut bytes)?;
        let mut log = Self {
            dir: dir.to_path_buf(),
            generation: at.generation,
            file,
            len: 0,
            index: HashMap::new(),
            live_bytes: 0,
            dirty: false,
        };
        let mut pos = 0usize;
        while pos + FRAME <= bytes.len() {
            let n = u32::from_le_bytes(bytes[pos..pos + 4].try_into().unwrap_or_default()) as usize;
            let end = pos + 4 + n + 4;
            if n < 10 || end > bytes.len() {
                break;
            }
            let body = &bytes[pos + 4..pos + 4 + n];
            let crc = u32::from_le_bytes(bytes[end - 4..end].try_into().unwrap_or_default());
            if crc32fast::hash(body) != crc {
                break;
            }
            let last_ts = i64::from_le_bytes(body[..8].try_into().unwrap_or_default());
            let id_len = u16::from_le_bytes([body[8], body[9]]) as usize;
            let Some(id) = body
                .get(10..10 + id_len)
                .and_then(|b| std::str::from_utf8(b).ok())
            else {
                break;
            };
            if active(id) {
                log.index.remove(id);
            } else {
                let e = Entry {
                    pos: pos as u64,
                    len: (end - pos) as u32,
                    last_ts,
                };
                if let Some(old) = log.index.insert(id.to_string(), e) {
                    log.live_bytes -= old.len as u64;
                }
                log.live_bytes += e.len as u64;
            }
            pos = end;
        }
        if (pos as u64) < len {
            tracing::warn!(path = %path.display(), at = pos, len, "parked-device log has a damaged entry; what follows it is dropped");
            log.file.set_len(pos as u64)?;
        }
        log.len = pos as u64;
        log.file.seek(SeekFrom::Start(log.len))?;
        Ok(log)
    }

    /// Devices parked.
    pub fn devices(&self) -> usize {
        self.index.len()
    }

    /// Whether `id` is parked here.
    pub fn contains(&self, id: &str) -> bool {
        self.index.contains_key(id)
    }

    /// Where a checkpoint taken now finds these devices.
    pub fn at(&self) -> ParkedRef {
        ParkedRef {
            generation: self.generation,
            len: self.len,
            devices: self.index.len() as u64,
        }
    }

    /// Parks device `id` (its `record` as [`crate::engine::snapshot`] writes it, id
    /// included) with the time of its last reading.
    pub fn park(&mut self, id: &str, last_ts: i64, record: &[u8]) -> std::io::Result<()> {
        let n = 8 + record.len();
        let mut buf = Vec::with_capacity(n + 8);
        buf.extend_from_slice(&(n as u32).to_le_bytes());
        buf.extend_from_slice(&last_ts.to_le_bytes());
        buf.extend_from_slice(record);
        let crc = crc32fast::hash(&buf[4..]);
        buf.extend_from_slice(&crc.to_le_bytes());
        self.file.write_all(&buf)?;
        let e = Entry {
            pos: self.len,
            len: buf.len() as u32,
            last_ts,
        };
        if let Some(old) = self.index.insert(id.to_string(), e) {
            self.live_bytes -= old.len as u64;
        }
        self.live_bytes += e.len as u64;
        self.len += buf.len() as u64;
        self.dirty = true;
        Ok(())
    }

    /// Takes device `id` out: its record (id included), to restore into the engine.
    pub fn take(&mut self, id: &str) -> std::io::Result<Option<Vec<u8>>> {
        let Some(e) = self.index.remove(id) else {
            return Ok(None);
        };
        self.live_bytes -= e.len as u64;
        let mut buf = vec![0u8; e.len as usize];
        read_at(&self.file, &mut buf, e.pos)?;
        // length (4) and timestamp (8) before the record, CRC (4) after.
        Ok(Some(buf[12..buf.len() - 4].to_vec()))
    }

    /// Flushes the log to disk (before a checkpoint that names it is written).
    pub fn sync(&mut self) -> std::io::Result<()> {
        if self.dirty {
            self.file.sync_data()?;
            self.dirty = false;
        }
        Ok(())
    }

    /// Drops devices parked since before `cutoff_ts` for good; returns how many.
    pub fn expire(&mut self, cutoff_ts: i64) -> usize {
        let before = self.index.len();
        let mut freed = 0;
        self.index.retain(|_, e| {
            let keep = e.last_ts >= cutoff_ts;
            if !keep {
                freed += e.len as u64;
            }
            keep
        });
        self.live_bytes -= freed;
        before - self.index.len()
    }

    /// When most of the log is dead, copies the live entries into the next generation and
    /// removes generations older than the previous one. Returns whether it did.
    pub fn compact_if_mostly_dead(&mut self, min_bytes: u64) -> std::io::Result<bool> {
        if self.len < min_bytes || self.live_bytes * 2 > self.len {
            return Ok(false);
        }
        let next = self.generation + 1;
        let path = log_path(&self.dir, next);
        let mut out = std::fs::File::create(&path)?;
        let mut entries: Vec<(String, Entry)> =
            self.index.iter().map(|(k, e)| (k.clone(), *e)).collect();
        entries.sort_by_key(|(_, e)| e.pos);
        let mut index = HashMap::with_capacity(entries.len());
        let mut pos = 0u64;
        let mut buf = Vec::new();
        for (id, e) in entries {
            buf.resize(e.len as usize, 0);
            read_at(&self.file, &mut buf, e.pos)?;
            out.write_all(&buf)?;
            index.insert(id, Entry { pos, ..e });
            pos += e.len as u64;
        }
        out.sync_all()?;
        if let Ok(d) = std::fs::File::open(&self.dir) {
            let _ = d.sync_all();
        }
        let old = self.generation;
        self.file = std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .open(&path)?;
        self.generation = next;
        self.len = pos;
        self.live_bytes = pos;
        self.index = index;
        self.dirty = false;
        if old > 0 {
            let _ = std::fs::remove_file(log_path(&self.dir, old - 1));
        }
        Ok(true)
    }
}

fn read_at(file: &std::fs::File, buf: &mut [u8], pos: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    file.read_exact_at(buf, pos)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, fill: u8) -> Vec<u8> {
        let mut r = (id.len() as u16).to_le_bytes().to_vec();
        r.extend_from_slice(id.as_bytes());
        r.extend(std::iter::repeat_n(fill, 100));
        r
    }

    #[test]
    fn parked_devices_survive_a_reopen_at_the_checkpoints_length() {
        let d = tempfile::tempdir().expect("tmp");
        let start = ParkedRef {
            generation: 0,
            len: 0,
            devices: 0,
        };
        let mut log = ParkedLog::open(d.path(), start, &|_| false).expect("open");
        log.park("a", 10, &record("a", 1)).expect("park");
        log.park("b", 20, &record("b", 2)).expect("park");
        let at = log.at();
        // After the checkpoint: c parked, b parked again — both to be forgotten on restore.
        log.park("c", 30, &record("c", 3)).expect("park");
        log.park("b", 40, &record("b", 4)).expect("park");
        log.sync().expect("sync");
        drop(log);
        let mut log = ParkedLog::open(d.path(), at, &|id| id == "a").expect("reopen");
        assert_eq!(
            log.devices(),
            1,
            "a is active in the checkpoint, c came after it"
        );
        assert_eq!(log.take("b").expect("take"), Some(record("b", 2)));
        assert_eq!(log.take("b").expect("take"), None);
        assert!(!log.contains("c"));
    }

    #[test]
    fn a_damaged_tail_is_dropped_and_a_mostly_dead_log_compacts() {
        let d = tempfile::tempdir().expect("tmp");
        let start = ParkedRef {
            generation: 0,
            len: 0,
            devices: 0,
        };
        let mut log = ParkedLog::open(d.path(), start, &|_| false).expect("open");
        for i in 0..10 {
            log.park(&format!("d{i}"), i, &record(&format!("d{i}"), i as u8))
                .expect("park");
        }
        let at = log.at();
        drop(log);
        // Flip a byte in the last entry.
        let path = log_path(d.path(), 0);
        let mut b = std::fs::read(&path).expect("read");
        let n = b.len();
        b[n - 10] ^= 0xff;
        std::fs::write(&path, b).expect("write");
        let mut log = ParkedLog::open(d.path(), at, &|_| false).expect("reopen");
        assert_eq!(log.devices(), 9);
        assert_eq!(log.expire(5), 5, "d0..d4 parked too long");
        for i in 5..8 {
            log.take(&format!("d{i}")).expect("take");
        }
        assert!(log.compact_if_mostly_dead(0).expect("compact"));
        let at = log.at();
        assert_eq!((at.generation, at.devices), (1, 1));
        assert_eq!(log.take("d8").expect("take"), Some(record("d8", 8)));
        let reopened = ParkedLog::open(d.path(), at, &|_| false).expect("reopen");
        assert_eq!(reopened.devices(), 1);
    }
}
