//! Assembling the root image from its chunks: which chunk goes where, fetched by a few workers,
//! each chunk verified against the signed manifest before a byte of it is written.
//!
//! The network and the disk are injected ([`ChunkSource`], [`ChunkSink`]) so the scheduling,
//! the retries and the verification are tested in memory; `main` plugs in HTTP and `/dev/ram0`.
use std::{
    fs::File,
    io,
    os::unix::fs::FileExt as _,
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use stampede_rootfs::manifest::{Chunk, RootManifest, Sha256Digest};

/// Fetches chunk bytes; one per worker thread, so an implementation may keep a connection.
pub trait ChunkFetcher {
    fn fetch(&mut self, index: usize, chunk: &Chunk) -> Result<Vec<u8>, String>;
}

/// Makes a fetcher for each worker.
pub trait ChunkSource: Sync {
    type Fetcher: ChunkFetcher;
    fn fetcher(&self) -> Self::Fetcher;
}

/// Where verified chunks go: positioned writes, then one flush.
pub trait ChunkSink: Sync {
    fn write_at(&self, offset: u64, bytes: &[u8]) -> io::Result<()>;
    fn flush(&self) -> io::Result<()>;
}

/// A block device or file, written with `pwrite(2)` from every worker at once.
#[derive(Debug)]
pub struct FileSink(pub File);

impl ChunkSink for FileSink {
    fn write_at(&self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        self.0.write_all_at(bytes, offset)
    }

    fn flush(&self) -> io::Result<()> {
        self.0.sync_all()
    }
}

/// How hard to try each chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkRetry {
    /// Fetches of one chunk before the assembly fails.
    pub attempts: u32,
    /// Wait after the first failure; doubles each time up to `max_delay`.
    pub first_delay: Duration,
    pub max_delay: Duration,
}

impl Default for ChunkRetry {
    /// Five fetches over about 7.5 s: rides out a server restart or a dropped connection, and
    /// a chunk that is still wrong after that is wrong at the source, which a whole-step retry
    /// (after the step's own backoff) will find out again.
    fn default() -> Self {
        Self {
            attempts: 5,
            first_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(4),
        }
    }
}

impl ChunkRetry {
    fn delay(&self, failures: u32) -> Duration {
        self.first_delay
            .checked_mul(
                1u32.checked_shl(failures.saturating_sub(1))
                    .unwrap_or(u32::MAX),
            )
            .unwrap_or(self.max_delay)
            .min(self.max_delay)
    }
}

/// Something a worker saw that an operator should know, though the assembly goes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkNote {
    /// The bytes arrived but are not the chunk: refetching.
    Corrupt {
        index: usize,
        reason: String,
        attempt: u32,
    },
    /// The fetch itself failed: refetching.
    FetchFailed {
        index: usize,
        reason: String,
        attempt: u32,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AssemblyReport {
    pub chunks: usize,
    pub bytes: u64,
    /// Fetches that failed or brought wrong bytes, then succeeded on a later try.
    pub retries: u64,
    /// Of those, the ones whose bytes did not match the manifest.
    pub corrupt: u64,
    pub elapsed: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum AssemblyError {
    #[error("chunk {index} ({digest}) failed {attempts} times, last: {last}")]
    Chunk {
        index: usize,
        digest: Sha256Digest,
        attempts: u32,
        last: String,
    },
    #[error("writing chunk {index} at offset {offset}: {source}")]
    Write {
        index: usize,
        offset: u64,
        #[source]
        source: io::Error,
    },
    #[error("flushing the root image: {0}")]
    Flush(#[source] io::Error),
    #[error("a chunk worker panicked")]
    WorkerPanicked,
}

/// Fetches every chunk of `manifest` with `workers` threads, verifies each with
/// [`Chunk::check`] and writes it at [`RootManifest::offset`]; then flushes `sink`. Stops at the
/// first chunk that fails [`ChunkRetry::attempts`] times. `note` hears every retry.
pub fn assemble<S: ChunkSource, K: ChunkSink>(
    manifest: &RootManifest,
    workers: usize,
    source: &S,
    sink: &K,
    retry: ChunkRetry,
    note: &(dyn Fn(ChunkNote) + Sync),
) -> Result<AssemblyReport, AssemblyError> {
    let started = Instant::now();
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let first_error: Mutex<Option<AssemblyError>> = Mutex::new(None);
    let bytes = AtomicU64::new(0);
    let retries = AtomicU64::new(0);
    let corrupt = AtomicU64::new(0);
    let fail = |err: AssemblyError| {
        stop.store(true, Ordering::SeqCst);
        let mut slot = first_error.lock().unwrap_or_else(|p| p.into_inner());
        slot.get_or_insert(err);
    };
    let workers = workers.clamp(1, manifest.chunks.len().max(1));
    let panicked = thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| {
                    let mut fetcher = source.fetcher();
                    // Chunks are taken in order, so writes sweep the device front to back.
                    while !stop.load(Ordering::SeqCst) {
                        let index = next.fetch_add(1, Ordering::SeqCst);
                        let Some(chunk) = manifest.chunks.get(index) else {
                            break;
                        };
                        let fetched = fetch_verified(
                            &mut fetcher,
                            index,
                            chunk,
                            retry,
                            &stop,
                            note,
                            &retries,
                            &corrupt,
                        );
                        let data = match fetched {
                            Ok(Some(data)) => data,
                            Ok(None) => break,
                            Err(err) => {
                                fail(err);
                                break;
                            }
                        };
                        let offset = manifest.offset(index);
                        if let Err(source) = sink.write_at(offset, &data) {
                            fail(AssemblyError::Write {
                                index,
                                offset,
                                source,
                            });
                            break;
                        }
                        bytes.fetch_add(data.len() as u64, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().is_err())
            .fold(false, |a, b| a | b)
    });
    if let Some(err) = first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(err);
    }
    if panicked {
        return Err(AssemblyError::WorkerPanicked);
    }
    sink.flush().map_err(AssemblyError::Flush)?;
    Ok(AssemblyReport {
        chunks: manifest.chunks.len(),
        bytes: bytes.into_inner(),
        retries: retries.into_inner(),
        corrupt: corrupt.into_inner(),
        elapsed: started.elapsed(),
    })
}

/// One chunk, verified, or `None` when another worker already failed the assembly.
#[expect(
    clippy::too_many_arguments,
    reason = "the worker's shared state, passed down once"
)]
fn fetch_verified<F: ChunkFetcher>(
    fetcher: &mut F,
    index: usize,
    chunk: &Chunk,
    retry: ChunkRetry,
    stop: &AtomicBool,
    note: &(dyn Fn(ChunkNote) + Sync),
    retries: &AtomicU64,
    corrupt: &AtomicU64,
) -> Result<Option<Vec<u8>>, AssemblyError> {
    let mut last = String::new();
    for attempt in 1..=retry.attempts.max(1) {
        if attempt > 1 {
            thread::sleep(retry.delay(attempt - 1));
            if stop.load(Ordering::SeqCst) {
                return Ok(None);
            }
        }
        match fetcher.fetch(index, chunk) {
            Ok(data) => match chunk.check(&data) {
                Ok(()) => {
                    if attempt > 1 {
                        retries.fetch_add(u64::from(attempt - 1), Ordering::SeqCst);
                    }
                    return Ok(Some(data));
                }
                Err(err) => {
                    last = err.to_string();
                    corrupt.fetch_add(1, Ordering::SeqCst);
                    note(ChunkNote::Corrupt {
                        index,
                        reason: last.clone(),
                        attempt,
                    });
                }
            },
            Err(err) => {
                last = err;
                note(ChunkNote::FetchFailed {
                    index,
                    reason: last.clone(),
                    attempt,
                });
            }
        }
    }
    Err(AssemblyError::Chunk {
        index,
        digest: chunk.sha256,
        attempts: retry.attempts.max(1),
        last,
    })
}

#[cfg(test)]
mod tests {
    use std::{
        collections::HashMap,
        sync::{Arc, atomic::AtomicU32},
    };

    use stampede_rootfs::manifest::{CHUNK_SIZE, RootFormat};

    use super::*;

    fn image(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 253) as u8).collect()
    }

    fn manifest_of(image: &[u8]) -> RootManifest {
        RootManifest::describe(
            "t",
            "sha256:00",
            RootFormat::Erofs,
            image,
            "/sbin/init",
            None,
        )
    }

    /// Serves the image's chunks; `faults[i]` lists what the first fetches of chunk `i` get.
    #[derive(Clone)]
    struct Served {
        image: Arc<Vec<u8>>,
        faults: Arc<Mutex<HashMap<usize, Vec<Fault>>>>,
        fetches: Arc<Mutex<HashMap<usize, u32>>>,
    }

    #[derive(Clone, Copy, Debug)]
    enum Fault {
        FlipByte,
        Short,
        Refused,
    }

    impl Served {
        fn new(image: Vec<u8>, faults: &[(usize, &[Fault])]) -> Self {
            Self {
                image: Arc::new(image),
                faults: Arc::new(Mutex::new(
                    faults.iter().map(|(i, f)| (*i, f.to_vec())).collect(),
                )),
                fetches: Arc::default(),
            }
        }

        fn fetches(&self, index: usize) -> u32 {
            self.fetches
                .lock()
                .expect("lock")
                .get(&index)
                .copied()
                .unwrap_or(0)
        }
    }

    impl ChunkSource for Served {
        type Fetcher = Served;
        fn fetcher(&self) -> Served {
            self.clone()
        }
    }

    impl ChunkFetcher for Served {
        fn fetch(&mut self, index: usize, chunk: &Chunk) -> Result<Vec<u8>, String> {
            *self.fetches.lock().expect("lock").entry(index).or_default() += 1;
            let start = index * CHUNK_SIZE as usize;
            let mut data = self.image[start..start + chunk.size as usize].to_vec();
            let fault = {
                let mut faults = self.faults.lock().expect("lock");
                faults
                    .get_mut(&index)
                    .and_then(|f| (!f.is_empty()).then(|| f.remove(0)))
            };
            match fault {
                None => Ok(data),
                Some(Fault::FlipByte) => {
                    data[7] ^= 0x40;
                    Ok(data)
                }
                Some(Fault::Short) => {
                    data.pop();
                    Ok(data)
                }
                Some(Fault::Refused) => Err("connection refused".into()),
            }
        }
    }

    /// An in-memory device that records where each write landed.
    struct Disk {
        bytes: Mutex<Vec<u8>>,
        writes: Mutex<Vec<(u64, usize)>>,
        flushed: AtomicU32,
    }

    impl Disk {
        fn new(len: usize) -> Self {
            Self {
                bytes: Mutex::new(vec![0; len]),
                writes: Mutex::default(),
                flushed: AtomicU32::new(0),
            }
        }
    }

    impl ChunkSink for Disk {
        fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
            let mut bytes = self.bytes.lock().expect("lock");
            let at = offset as usize;
            if at + data.len() > bytes.len() {
                return Err(io::Error::from_raw_os_error(28)); // ENOSPC
            }
            bytes[at..at + data.len()].copy_from_slice(data);
            self.writes.lock().expect("lock").push((offset, data.len()));
            Ok(())
        }
        fn flush(&self) -> io::Result<()> {
            self.flushed.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    const FAST: ChunkRetry = ChunkRetry {
        attempts: 3,
        first_delay: Duration::ZERO,
        max_delay: Duration::ZERO,
    };

    fn notes() -> (Arc<Mutex<Vec<ChunkNote>>>, impl Fn(ChunkNote) + Sync) {
        let seen: Arc<Mutex<Vec<ChunkNote>>> = Arc::default();
        let sink = seen.clone();
        (seen, move |n| sink.lock().expect("lock").push(n))
    }

    #[test]
    fn every_chunk_lands_at_its_offset_and_the_disk_is_flushed() {
        let img = image(5 * CHUNK_SIZE as usize + 12_345);
        let m = manifest_of(&img);
        let served = Served::new(img.clone(), &[]);
        let disk = Disk::new(img.len());
        let (seen, note) = notes();
        let report = assemble(&m, 4, &served, &disk, FAST, &note).expect("assembles");
        assert_eq!(*disk.bytes.lock().expect("lock"), img);
        assert_eq!(report.chunks, 6);
        assert_eq!(report.bytes, img.len() as u64);
        assert_eq!((report.retries, report.corrupt), (0, 0));
        assert_eq!(disk.flushed.load(Ordering::SeqCst), 1);
        let mut writes = disk.writes.lock().expect("lock").clone();
        writes.sort();
        let want: Vec<(u64, usize)> = (0..6)
            .map(|i| (m.offset(i), m.chunks[i].size as usize))
            .collect();
        assert_eq!(writes, want);
        assert!(seen.lock().expect("lock").is_empty());
    }

    #[test]
    fn a_corrupt_or_short_chunk_is_never_written_and_is_fetched_again() {
        let img = image(3 * CHUNK_SIZE as usize);
        let m = manifest_of(&img);
        let served = Served::new(
            img.clone(),
            &[
                (1, &[Fault::FlipByte]),
                (2, &[Fault::Short, Fault::Refused]),
            ],
        );
        let disk = Disk::new(img.len());
        let (seen, note) = notes();
        let report = assemble(&m, 2, &served, &disk, FAST, &note).expect("assembles");
        assert_eq!(*disk.bytes.lock().expect("lock"), img);
        assert_eq!(served.fetches(1), 2);
        assert_eq!(served.fetches(2), 3);
        assert_eq!((report.retries, report.corrupt), (3, 2));
        // Exactly one write per chunk: the bad bytes never reached the disk.
        assert_eq!(disk.writes.lock().expect("lock").len(), 3);
        let seen = seen.lock().expect("lock");
        assert!(seen.iter().any(|n| matches!(
            n,
            ChunkNote::Corrupt { index: 1, attempt: 1, reason } if reason.contains("corrupt")
        )));
        assert!(seen.iter().any(|n| matches!(
            n,
            ChunkNote::FetchFailed {
                index: 2,
                attempt: 2,
                ..
            }
        )));
    }

    #[test]
    fn a_chunk_wrong_every_time_fails_the_assembly_by_name() {
        let img = image(4 * CHUNK_SIZE as usize);
        let m = manifest_of(&img);
        let served = Served::new(img.clone(), &[(2, &[Fault::FlipByte; 10])]);
        let disk = Disk::new(img.len());
        let (_seen, note) = notes();
        let err = assemble(&m, 3, &served, &disk, FAST, &note).expect_err("fails");
        match &err {
            AssemblyError::Chunk {
                index,
                digest,
                attempts,
                last,
            } => {
                assert_eq!((*index, *attempts), (2, 3));
                assert_eq!(*digest, m.chunks[2].sha256);
                assert!(last.contains("corrupt"), "{last}");
            }
            other => panic!("wrong error: {other}"),
        }
        assert!(
            err.to_string().contains(&m.chunks[2].sha256.to_hex()),
            "{err}"
        );
        assert_eq!(served.fetches(2), 3);
        assert_eq!(disk.flushed.load(Ordering::SeqCst), 0, "never flushed");
        let written: Vec<u64> = disk
            .writes
            .lock()
            .expect("lock")
            .iter()
            .map(|w| w.0)
            .collect();
        assert!(!written.contains(&m.offset(2)), "{written:?}");
    }

    #[test]
    fn a_failed_write_stops_the_assembly() {
        let img = image(2 * CHUNK_SIZE as usize + 1);
        let m = manifest_of(&img);
        let served = Served::new(img.clone(), &[]);
        // One byte too small: the last chunk does not fit.
        let disk = Disk::new(img.len() - 1);
        let (_seen, note) = notes();
        let err = assemble(&m, 1, &served, &disk, FAST, &note).expect_err("fails");
        assert!(
            matches!(err, AssemblyError::Write { index: 2, offset, .. } if offset == 2 * CHUNK_SIZE),
            "{err}"
        );
    }

    #[test]
    fn retry_delays_double_to_their_ceiling() {
        let r = ChunkRetry::default();
        let ms: Vec<u128> = (1..=6).map(|f| r.delay(f).as_millis()).collect();
        assert_eq!(ms, [500, 1000, 2000, 4000, 4000, 4000]);
    }
}
