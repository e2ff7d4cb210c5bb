//! A file `serve` reads again whenever it changes (maintenance windows, operator labels):
//! checked at most once a second, by modification time and length.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// One watched file.
#[derive(Debug)]
pub struct WatchedFile {
    path: PathBuf,
    /// The file's modification time and length when last reported (`None`: missing).
    seen: Option<Option<(SystemTime, u64)>>,
    last_check: Option<Instant>,
}

impl WatchedFile {
    /// Watches `path`; the first [`changed`](Self::changed) reports it.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            seen: None,
            last_check: None,
        }
    }

    /// The path, when the file changed (appeared, disappeared, was written) since the last
    /// report, or on the first call; checked at most once a second.
    pub fn changed(&mut self) -> Option<&Path> {
        if self
            .last_check
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return None;
        }
        self.last_check = Some(Instant::now());
        let stamp = std::fs::metadata(&self.path)
            .ok()
            .map(|m| (m.modified().unwrap_or(UNIX_EPOCH), m.len()));
        if self.seen == Some(stamp) {
            return None;
        }
        self.seen = Some(stamp);
        Some(&self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_the_first_call_and_each_change_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f.toml");
        let mut w = WatchedFile::new(&path);
        assert!(w.changed().is_some(), "first call, even when missing");
        w.last_check = None;
        assert!(w.changed().is_none(), "still missing");
        std::fs::write(&path, "a = 1\n").expect("write");
        assert!(w.changed().is_none(), "not again within the second");
        w.last_check = None;
        assert_eq!(w.changed(), Some(path.as_path()), "appeared");
        w.last_check = None;
        assert!(w.changed().is_none(), "unchanged");
        std::fs::write(&path, "a = 12\n").expect("write");
        w.last_check = None;
        assert!(w.changed().is_some(), "longer");
    }
}
