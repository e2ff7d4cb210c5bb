//! The decoders of bytes that come from disk or a broker — checkpoints, their device records,
//! parked-device logs — run on mutated inputs: they must refuse them without a panic and
//! without any single allocation larger than a small multiple of the input (a size field read
//! from the bytes must never size an allocation by itself).
//!
//! The seed corpus is in `tests/corpus/` (a checkpoint of three devices); the test mutates it
//! with a fixed seed, recomputing the checksum in half of the cases so that the mutations also
//! reach the header and the records behind it. `SENSORCAST_WRITE_CORPUS=1` rewrites the seed
//! (after a change of the checkpoint format or the state layout).

use rand::{Rng, SeedableRng};
use sensorcast::engine::testing::{settings, synthetic_model, synthetic_readings};
use sensorcast::engine::{BatchOutput, Engine};
use sensorcast::state::parked::{ParkedLog, ParkedRef};
use sensorcast::state::{Checkpoint, Header};
use sensorcast::tools::bench::BenchSpec;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;

/// Counts the largest allocation made by a thread while it is watching.
struct Largest;

thread_local! {
    static WATCHING: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    if WATCHING.with(Cell::get) {
        LARGEST.with(|l| l.set(l.get().max(size)));
    }
}

// SAFETY: every call is passed on to the system allocator unchanged.
unsafe impl GlobalAlloc for Largest {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Largest = Largest;

/// The largest single allocation `f` makes.
fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|l| l.set(0));
    WATCHING.with(|w| w.set(true));
    let out = f();
    WATCHING.with(|w| w.set(false));
    (out, LARGEST.with(Cell::get))
}

fn spec() -> BenchSpec {
    BenchSpec {
        devices: 3,
        steps: 2,
        hidden: 8,
        features: 4,
        layers: 1,
        horizon: 3,
        batch: 64,
    }
}

fn engine() -> Engine {
    Engine::new(Arc::new(synthetic_model(spec().shape())), settings()).expect("engine")
}

/// A checkpoint of three devices that have seen two readings each.
fn seed() -> Checkpoint {
    let mut e = engine();
    let readings = synthetic_readings(3, 2, 4);
    let shards = vec![0u32; readings.len()];
    e.process_sharded(&readings, &shards, &mut BatchOutput::default())
        .expect("step");
    let (_, records) = e.snapshot(|_| true).remove(0);
    Checkpoint {
        header: Header {
            group: "g".into(),
            stream: "pumps".into(),
            topic: "t".into(),
            topic_id: Some("AAAAAAAAAAAAAAAAAAAAAQ".into()),
            partition: 0,
            offset: 6,
            model: e.model().version.clone(),
            layout: e.state_layout(),
            devices: records.devices as u64,
            created_ms: 0,
            parked: None,
        },
        records,
    }
}

fn corpus() -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus/checkpoint-3-devices.bin");
    if std::env::var_os("SENSORCAST_WRITE_CORPUS").is_some() {
        std::fs::write(&path, seed().encode()).expect("write corpus");
    }
    let bytes = std::fs::read(&path).expect("corpus");
    let c = Checkpoint::decode(&bytes).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; rewrite it with SENSORCAST_WRITE_CORPUS=1",
            path.display()
        )
    });
    assert!(
        engine()
            .restore(0, c.header.layout, &c.records)
            .is_ok_and(|n| n == 3),
        "{}: its records no longer restore; rewrite it with SENSORCAST_WRITE_CORPUS=1",
        path.display()
    );
    bytes
}

/// One mutation of `bytes`: flipped, overwritten (0xFF runs inflate any size field they hit),
/// cut, doubled or spliced; with the checksum made valid again half of the time.
fn mutate(rng: &mut rand::rngs::StdRng, bytes: &[u8]) -> Vec<u8> {
    let mut b = bytes.to_vec();
    let at = rng.random_range(0..b.len());
    match rng.random_range(0..6) {
        0 => b[at] ^= 1 << rng.random_range(0..8),
        1 => {
            let end = (at + rng.random_range(1..9)).min(b.len());
            b[at..end].fill(0xFF);
        }
        2 => b.truncate(at),
        3 => {
            let tail = b[at..].to_vec();
            b.extend_from_slice(&tail);
        }
        4 => b[at] = rng.random(),
        _ => {
            // A size field of the JSON header made huge (the header's length field follows).
            let keys: [&[u8]; 3] = [b"\"devices\":", b"\"offset\":", b"\"len\":"];
            let key = keys[rng.random_range(0..keys.len())];
            if let Some(i) = b.windows(key.len()).position(|w| w == key) {
                let j = i + key.len();
                let digits = b[j..].iter().take_while(|c| c.is_ascii_digit()).count();
                let huge = b"18446744073709551615";
                b.splice(j..j + digits, huge.iter().copied());
                if b.len() >= 16 {
                    let hlen = u32::from_le_bytes([b[12], b[13], b[14], b[15]]);
                    let hlen = hlen.wrapping_add((huge.len() - digits) as u32);
                    b[12..16].copy_from_slice(&hlen.to_le_bytes());
                }
            }
        }
    }
    if rng.random_bool(0.5) && b.len() >= 4 {
        let n = b.len() - 4;
        let crc = crc32fast::hash(&b[..n]);
        b[n..].copy_from_slice(&crc.to_le_bytes());
    }
    b
}

#[test]
fn mutated_checkpoints_are_refused_without_a_panic_or_an_outsized_allocation() {
    let seed = corpus();
    let mut rng = rand::rngs::StdRng::seed_from_u64(17);
    let (mut decoded, mut restored) = (0, 0);
    for i in 0..4000 {
        let bytes = mutate(&mut rng, &seed);
        let limit = 4 * bytes.len().max(seed.len()) + (64 << 10);
        let mut e = engine();
        let (n, largest) = largest_allocation(|| {
            let c = Checkpoint::decode(&bytes).ok()?;
            Some(e.restore(0, c.header.layout, &c.records).ok().is_some())
        });
        decoded += n.is_some() as usize;
        restored += (n == Some(true)) as usize;
        assert!(
            largest <= limit,
            "mutation {i}: an allocation of {largest} bytes decoding {} bytes",
            bytes.len()
        );
    }
    // The mutations reach past the checksum and the header.
    assert!(
        decoded > 100 && restored > 10,
        "decoded {decoded}, restored {restored}"
    );
}

#[test]
fn a_mutated_parked_device_log_is_refused_without_a_panic_or_an_outsized_allocation() {
    // A log of parked devices, as the engine stage writes it, then mutated on disk.
    let dir = tempfile::tempdir().expect("tempdir");
    let c = seed();
    let mut log = ParkedLog::open(
        dir.path(),
        ParkedRef {
            generation: 1,
            len: 0,
            devices: 0,
        },
        &|_| false,
    )
    .expect("log");
    for (id, ts, record) in c.records.iter(c.header.layout) {
        log.park(id, ts, record).expect("park");
    }
    log.sync().expect("sync");
    let at = log.at();
    drop(log);
    let path = std::fs::read_dir(dir.path())
        .expect("dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.is_file())
        .expect("the log file");
    let seed = std::fs::read(&path).expect("log");
    let mut rng = rand::rngs::StdRng::seed_from_u64(18);
    for i in 0..1000 {
        let bytes = mutate(&mut rng, &seed);
        std::fs::write(&path, &bytes).expect("write");
        let claimed = ParkedRef {
            len: if rng.random_bool(0.5) {
                u64::MAX
            } else {
                at.len
            },
            devices: rng.random(),
            ..at
        };
        let (_, largest) = largest_allocation(|| {
            if let Ok(mut log) = ParkedLog::open(dir.path(), claimed, &|_| false) {
                for id in ["dev-0", "dev-1", "dev-2"] {
                    let _ = log.take(id);
                }
            }
        });
        let limit = 4 * bytes.len() + (64 << 10);
        assert!(
            largest <= limit,
            "mutation {i}: an allocation of {largest} bytes opening a {} byte log",
            bytes.len()
        );
    }
}
