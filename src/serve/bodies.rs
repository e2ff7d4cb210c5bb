//! Line-protocol buffers handed round between the engine stage and the sink.
//!
//! Every micro-batch's points and every write request are megabytes of text. `serve` maps
//! blocks of a megabyte and more on their own (its mmap threshold, `src/serve/mod.rs`), so a
//! buffer allocated fresh each time was mapped afresh, and each of its pages faulted in and
//! zero-filled before the text was written over it: ≈ 6 % of `serve`'s CPU in a throughput
//! run (`PROFILE=1 scripts/bench-e2e.sh`). A buffer the engine stage wrote a batch into comes
//! back here once the sink has copied it into a request; a request's buffer comes back once
//! the HTTP client has let go of every part of it (a retry or a split of the request holds it
//! until then).
//!
//! A pool makes a new buffer only when it has none to give, so it never holds more buffers
//! than were in use at once; it keeps at most `keep` of them, and none once nothing has been
//! taken for a while ([`Bodies::trim_idle`]): a quiet `serve` holds no idle megabytes.
//! `serve` has one pool for the micro-batches' bodies and one for the requests' (a batch's
//! body that is a request on its own goes back to the batches' pool), so a buffer keeps the
//! size of its role: what is resident is what the buffers in use held before, the in-flight
//! terms of the memory bound in docs/OPERATIONS.md §5.

use bytes::Bytes;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A pool of line-protocol buffers (cheap to clone: every clone is the same pool).
#[derive(Clone)]
pub struct Bodies(Arc<Pool>);

struct Pool {
    free: Mutex<Free>,
    keep: usize,
}

struct Free {
    buffers: Vec<String>,
    last_take: Instant,
}

impl Bodies {
    /// A pool that keeps at most `keep` buffers.
    pub fn new(keep: usize) -> Self {
        Self(Arc::new(Pool {
            free: Mutex::new(Free {
                buffers: Vec::with_capacity(keep),
                last_take: Instant::now(),
            }),
            keep,
        }))
    }

    /// An empty buffer with room for at least `capacity` bytes: a returned one when the pool
    /// has one, else a new one.
    pub fn take(&self, capacity: usize) -> String {
        let mut body = {
            let mut free = self.free();
            free.last_take = Instant::now();
            free.buffers.pop().unwrap_or_default()
        };
        body.reserve_exact(capacity);
        body
    }

    /// Returns a buffer for reuse (dropped instead if the pool is full).
    pub fn give(&self, mut body: String) {
        if body.capacity() == 0 {
            return;
        }
        let mut free = self.free();
        if free.buffers.len() < self.0.keep {
            body.clear();
            free.buffers.push(body);
        }
    }

    /// Drops every buffer waiting if none has been taken for `idle`.
    pub fn trim_idle(&self, idle: Duration) {
        let mut free = self.free();
        if free.last_take.elapsed() >= idle {
            free.buffers = Vec::new();
        }
    }

    /// `body` as the bytes of a request, returned to the pool once the last part of them
    /// is dropped.
    pub fn bytes(&self, body: String) -> Bytes {
        Bytes::from_owner(Lent {
            body,
            to: self.clone(),
        })
    }

    /// Buffers waiting in the pool.
    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.free().buffers.len()
    }

    fn free(&self) -> std::sync::MutexGuard<'_, Free> {
        // A panic while holding the lock leaves a list of buffers, which is still valid.
        self.0.free.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A buffer lent out as `Bytes`; comes back to its pool when dropped.
struct Lent {
    body: String,
    to: Bodies,
}

impl AsRef<[u8]> for Lent {
    fn as_ref(&self) -> &[u8] {
        self.body.as_bytes()
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        self.to.give(std::mem::take(&mut self.body));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_comes_back_empty_with_its_room() {
        let bodies = Bodies::new(2);
        let mut b = bodies.take(1000);
        b.push_str("m f=1 1\n");
        let (ptr, cap) = (b.as_ptr(), b.capacity());
        bodies.give(b);
        let again = bodies.take(10);
        assert!(again.is_empty());
        assert_eq!((again.as_ptr(), again.capacity()), (ptr, cap));
        assert_eq!(bodies.waiting(), 0);
    }

    #[test]
    fn lent_bytes_come_back_once_every_part_is_dropped() {
        let bodies = Bodies::new(2);
        let mut b = bodies.take(64);
        b.push_str("m f=1 1\nm f=2 2\n");
        let whole = bodies.bytes(b);
        let (head, tail) = (whole.slice(..8), whole.slice(8..));
        drop(whole);
        assert_eq!(&head[..], b"m f=1 1\n");
        drop(head);
        assert_eq!(bodies.waiting(), 0, "a part is still in use");
        assert_eq!(&tail[..], b"m f=2 2\n");
        drop(tail);
        assert_eq!(bodies.waiting(), 1);
    }

    #[test]
    fn keeps_no_more_buffers_than_it_was_told() {
        let bodies = Bodies::new(2);
        for _ in 0..3 {
            bodies.give(String::with_capacity(100));
        }
        assert_eq!(bodies.waiting(), 2);
        let bodies = Bodies::new(2);
        bodies.give(String::new());
        assert_eq!(
            bodies.waiting(),
            0,
            "nothing to keep in an unallocated buffer"
        );
    }

    #[test]
    fn an_idle_pool_lets_its_buffers_go() {
        let bodies = Bodies::new(2);
        let b = bodies.take(100);
        bodies.give(b);
        bodies.trim_idle(Duration::from_secs(3600));
        assert_eq!(bodies.waiting(), 1, "taken from just now");
        std::thread::sleep(Duration::from_millis(5));
        bodies.trim_idle(Duration::from_millis(1));
        assert_eq!(bodies.waiting(), 0);
    }
}
