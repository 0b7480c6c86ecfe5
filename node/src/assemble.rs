//! Assembling the root image from its chunks: which chunk goes where, fetched by a few workers,
//! each chunk verified against the signed manifest before a byte of it is written.
//!
//! Chunks come in runs: a worker claims up to [`FetchPlan::run_chunks`] consecutive chunks and
//! fetches them with one request for their bytes of the whole image
//! ([`ChunkFetcher::fetch_run`], an HTTP `Range`), then checks each chunk of the run on its own.
//! A chunk of a run that does not check out, or a run whose request failed, is fetched chunk by
//! chunk ([`ChunkFetcher::fetch`]) with the retries of [`ChunkRetry`]; a source that does not
//! serve the image at all ([`RunError::NotServed`], an older appliance) turns the whole assembly
//! to chunk by chunk, once.
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

/// Why a run's request brought nothing usable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunError {
    /// The source does not serve the whole image (a 404 from an appliance older than ranges):
    /// no run will do better, every chunk is fetched on its own.
    NotServed(String),
    /// This run failed (a connection error, a short body, another range than asked): its
    /// chunks are fetched one by one, and the next run is tried again.
    Failed(String),
}

/// Fetches chunk bytes; one per worker thread, so an implementation may keep a connection.
pub trait ChunkFetcher {
    fn fetch(&mut self, index: usize, chunk: &Chunk) -> Result<Vec<u8>, String>;

    /// Bytes `offset..offset + len` of the whole image (`image_size` bytes), which hold a run of
    /// consecutive chunks; exactly `len` of them, or an error. The bytes are checked chunk by
    /// chunk by the caller. By default the image is not served.
    fn fetch_run(&mut self, offset: u64, len: u64, image_size: u64) -> Result<Vec<u8>, RunError> {
        let _ = (offset, len, image_size);
        Err(RunError::NotServed(
            "this source fetches chunk by chunk".into(),
        ))
    }
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

/// How the chunks are fetched: in runs by a few workers, or one by one by more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchPlan {
    /// Consecutive chunks fetched with one [`ChunkFetcher::fetch_run`]; 1 or less fetches chunk
    /// by chunk from the start.
    pub run_chunks: usize,
    /// Workers claiming runs, each with its own fetcher (connection).
    pub run_workers: usize,
    /// Workers once the source turns out not to serve runs ([`RunError::NotServed`]), or from
    /// the start when `run_chunks` is 1: a chunk per request needs more of them in flight.
    pub chunk_workers: usize,
}

#[cfg(test)]
impl FetchPlan {
    /// Chunk by chunk only, with `workers` workers.
    pub fn chunk_by_chunk(workers: usize) -> Self {
        Self {
            run_chunks: 1,
            run_workers: workers,
            chunk_workers: workers,
        }
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
    /// The bytes arrived but are not the chunk: refetching. Attempt 1 of a chunk that came in a
    /// run is the run's bytes of it.
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
    /// The request for chunks `first..=last` failed: fetching them one by one.
    RunFailed {
        first: usize,
        last: usize,
        reason: String,
    },
    /// The source does not serve runs: every chunk not yet written is fetched on its own.
    /// Heard once per assembly.
    RunsNotServed { reason: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AssemblyReport {
    pub chunks: usize,
    pub bytes: u64,
    /// Fetches that failed or brought wrong bytes, then succeeded on a later try.
    pub retries: u64,
    /// Of those, the ones whose bytes did not match the manifest.
    pub corrupt: u64,
    /// Chunks written from a run's bytes.
    pub by_run: usize,
    /// Runs fetched whole (one request each).
    pub runs: usize,
    /// Chunks written from a request of their own.
    pub by_chunk: usize,
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

/// What the workers share.
struct Shared<'a, K> {
    manifest: &'a RootManifest,
    sink: &'a K,
    retry: ChunkRetry,
    note: &'a (dyn Fn(ChunkNote) + Sync),
    /// The first chunk no worker claimed yet.
    next: AtomicUsize,
    /// Runs are off: not planned, or not served.
    chunk_by_chunk: AtomicBool,
    stop: AtomicBool,
    first_error: Mutex<Option<AssemblyError>>,
    bytes: AtomicU64,
    retries: AtomicU64,
    corrupt: AtomicU64,
    by_run: AtomicUsize,
    runs: AtomicUsize,
    by_chunk: AtomicUsize,
}

impl<K: ChunkSink> Shared<'_, K> {
    fn fail(&self, err: AssemblyError) {
        self.stop.store(true, Ordering::SeqCst);
        let mut slot = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
        slot.get_or_insert(err);
    }

    /// Writes a verified chunk; `false` when the write failed the assembly.
    fn write(&self, index: usize, data: &[u8]) -> bool {
        let offset = self.manifest.offset(index);
        if let Err(source) = self.sink.write_at(offset, data) {
            self.fail(AssemblyError::Write {
                index,
                offset,
                source,
            });
            return false;
        }
        self.bytes.fetch_add(data.len() as u64, Ordering::SeqCst);
        true
    }

    /// One worker: claims runs (or single chunks) until none is left or the assembly failed.
    fn work<F: ChunkFetcher>(&self, fetcher: &mut F, run_chunks: usize) {
        let count = self.manifest.chunks.len();
        // Chunks are taken in order, so writes sweep the device front to back.
        while !self.stop.load(Ordering::SeqCst) {
            let ranged = !self.chunk_by_chunk.load(Ordering::SeqCst);
            let step = if ranged { run_chunks } else { 1 };
            let first = self.next.fetch_add(step, Ordering::SeqCst);
            if first >= count {
                break;
            }
            let end = first.saturating_add(step).min(count);
            // Chunks of the claim still to fetch one by one, with the tries already spent.
            let pending = if ranged {
                self.run(fetcher, first, end)
            } else {
                vec![(first, 0)]
            };
            for (index, tried) in pending {
                if !self.one(fetcher, index, tried) {
                    return;
                }
            }
        }
    }

    /// Fetches chunks `first..end` with one request, writes those that check out and returns
    /// the others (with 1 try spent on a chunk whose bytes were wrong).
    fn run<F: ChunkFetcher>(&self, fetcher: &mut F, first: usize, end: usize) -> Vec<(usize, u32)> {
        let manifest = self.manifest;
        let start = manifest.offset(first);
        let last = &manifest.chunks[end - 1];
        let len = manifest.offset(end - 1) + last.size - start;
        let every = || (first..end).map(|i| (i, 0)).collect();
        let body = match fetcher.fetch_run(start, len, manifest.size) {
            Ok(body) if body.len() as u64 == len => body,
            Ok(body) => {
                (self.note)(ChunkNote::RunFailed {
                    first,
                    last: end - 1,
                    reason: format!("{} bytes, not {len}", body.len()),
                });
                return every();
            }
            Err(RunError::Failed(reason)) => {
                (self.note)(ChunkNote::RunFailed {
                    first,
                    last: end - 1,
                    reason,
                });
                return every();
            }
            Err(RunError::NotServed(reason)) => {
                if !self.chunk_by_chunk.swap(true, Ordering::SeqCst) {
                    (self.note)(ChunkNote::RunsNotServed { reason });
                }
                return every();
            }
        };
        self.runs.fetch_add(1, Ordering::SeqCst);
        let mut pending = Vec::new();
        for (index, chunk) in manifest.chunks[first..end].iter().enumerate() {
            let index = first + index;
            let at = usize::try_from(manifest.offset(index) - start).unwrap_or(usize::MAX);
            // Within the body by the manifest's own layout; checked anyway, a PID 1 must not
            // panic on arithmetic.
            let Some(data) = body
                .get(at..)
                .and_then(|rest| rest.get(..usize::try_from(chunk.size).unwrap_or(usize::MAX)))
            else {
                pending.push((index, 0));
                continue;
            };
            match chunk.check(data) {
                Ok(()) => {
                    if !self.write(index, data) {
                        return Vec::new();
                    }
                    self.by_run.fetch_add(1, Ordering::SeqCst);
                }
                Err(err) => {
                    self.corrupt.fetch_add(1, Ordering::SeqCst);
                    (self.note)(ChunkNote::Corrupt {
                        index,
                        reason: err.to_string(),
                        attempt: 1,
                    });
                    pending.push((index, 1));
                }
            }
        }
        pending
    }

    /// Fetches, checks and writes one chunk on its own; `false` when the assembly is over.
    fn one<F: ChunkFetcher>(&self, fetcher: &mut F, index: usize, tried: u32) -> bool {
        let chunk = &self.manifest.chunks[index];
        match fetch_verified(fetcher, index, chunk, tried, self) {
            Ok(Some(data)) => {
                if !self.write(index, &data) {
                    return false;
                }
                self.by_chunk.fetch_add(1, Ordering::SeqCst);
                true
            }
            Ok(None) => false,
            Err(err) => {
                self.fail(err);
                false
            }
        }
    }
}

/// Fetches every chunk of `manifest` as `plan` says, verifies each with [`Chunk::check`] and
/// writes it at [`RootManifest::offset`]; then flushes `sink`. Stops at the first chunk that
/// fails [`ChunkRetry::attempts`] times. `note` hears every retry and every failed run.
pub fn assemble<S: ChunkSource, K: ChunkSink>(
    manifest: &RootManifest,
    plan: FetchPlan,
    source: &S,
    sink: &K,
    retry: ChunkRetry,
    note: &(dyn Fn(ChunkNote) + Sync),
) -> Result<AssemblyReport, AssemblyError> {
    let started = Instant::now();
    let count = manifest.chunks.len();
    let run_chunks = plan.run_chunks.max(1);
    let shared = Shared {
        manifest,
        sink,
        retry,
        note,
        next: AtomicUsize::new(0),
        chunk_by_chunk: AtomicBool::new(run_chunks == 1),
        stop: AtomicBool::new(false),
        first_error: Mutex::new(None),
        bytes: AtomicU64::new(0),
        retries: AtomicU64::new(0),
        corrupt: AtomicU64::new(0),
        by_run: AtomicUsize::new(0),
        runs: AtomicUsize::new(0),
        by_chunk: AtomicUsize::new(0),
    };
    let run_workers = if run_chunks == 1 {
        plan.chunk_workers
    } else {
        plan.run_workers
    }
    .clamp(1, count.div_ceil(run_chunks).max(1));
    let workers = plan.chunk_workers.max(run_workers).clamp(1, count.max(1));
    let shared = &shared;
    let panicked = thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|worker| {
                scope.spawn(move || {
                    // Workers beyond the runs' wait until runs turn out not to be served (then
                    // they help chunk by chunk) or every chunk is claimed; they open nothing.
                    while worker >= run_workers
                        && !shared.chunk_by_chunk.load(Ordering::SeqCst)
                        && !shared.stop.load(Ordering::SeqCst)
                        && shared.next.load(Ordering::SeqCst) < count
                    {
                        thread::sleep(Duration::from_millis(20));
                    }
                    let mut fetcher = source.fetcher();
                    shared.work(&mut fetcher, run_chunks);
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().is_err())
            .fold(false, |a, b| a | b)
    });
    let Shared {
        first_error,
        bytes,
        retries,
        corrupt,
        by_run,
        runs,
        by_chunk,
        ..
    } = shared;
    if let Some(err) = first_error.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return Err(err);
    }
    if panicked {
        return Err(AssemblyError::WorkerPanicked);
    }
    sink.flush().map_err(AssemblyError::Flush)?;
    Ok(AssemblyReport {
        chunks: count,
        bytes: bytes.load(Ordering::SeqCst),
        retries: retries.load(Ordering::SeqCst),
        corrupt: corrupt.load(Ordering::SeqCst),
        by_run: by_run.load(Ordering::SeqCst),
        runs: runs.load(Ordering::SeqCst),
        by_chunk: by_chunk.load(Ordering::SeqCst),
        elapsed: started.elapsed(),
    })
}

/// One chunk, verified, or `None` when another worker already failed the assembly. `tried`
/// attempts were already spent on it (its bytes in a run were wrong).
fn fetch_verified<F: ChunkFetcher, K>(
    fetcher: &mut F,
    index: usize,
    chunk: &Chunk,
    tried: u32,
    shared: &Shared<'_, K>,
) -> Result<Option<Vec<u8>>, AssemblyError> {
    let Shared {
        retry,
        stop,
        note,
        retries,
        corrupt,
        ..
    } = shared;
    let mut last = String::from("its bytes in a run were wrong");
    for attempt in (tried + 1)..=retry.attempts.max(tried + 1) {
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
        attempts: retry.attempts.max(tried + 1),
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
    /// Runs: `runs` says how the image is served, `run_faults` what the first runs get, and
    /// `corrupt_in_runs[i]` how many runs bring chunk `i` with a flipped byte.
    #[derive(Clone)]
    struct Served {
        image: Arc<Vec<u8>>,
        faults: Arc<Mutex<HashMap<usize, Vec<Fault>>>>,
        fetches: Arc<Mutex<HashMap<usize, u32>>>,
        runs: Runs,
        run_faults: Arc<Mutex<Vec<Fault>>>,
        corrupt_in_runs: Arc<Mutex<HashMap<usize, u32>>>,
        /// `(offset, len)` of every run asked for.
        run_requests: Arc<Mutex<Vec<(u64, u64)>>>,
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Runs {
        Served,
        NotServed,
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
                runs: Runs::Served,
                run_faults: Arc::default(),
                corrupt_in_runs: Arc::default(),
                run_requests: Arc::default(),
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

        fn chunk_fetches(&self) -> u32 {
            self.fetches.lock().expect("lock").values().sum()
        }

        fn run_requests(&self) -> Vec<(u64, u64)> {
            let mut runs = self.run_requests.lock().expect("lock").clone();
            runs.sort();
            runs
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

        fn fetch_run(
            &mut self,
            offset: u64,
            len: u64,
            image_size: u64,
        ) -> Result<Vec<u8>, RunError> {
            assert_eq!(image_size, self.image.len() as u64);
            self.run_requests.lock().expect("lock").push((offset, len));
            if self.runs == Runs::NotServed {
                return Err(RunError::NotServed("HTTP 404".into()));
            }
            let (start, end) = (offset as usize, (offset + len) as usize);
            let mut data = self.image[start..end].to_vec();
            for (index, left) in self.corrupt_in_runs.lock().expect("lock").iter_mut() {
                let at = index * CHUNK_SIZE as usize;
                if *left > 0 && (start..end).contains(&at) {
                    *left -= 1;
                    data[at - start + 7] ^= 0x40;
                }
            }
            let fault = {
                let mut faults = self.run_faults.lock().expect("lock");
                (!faults.is_empty()).then(|| faults.remove(0))
            };
            match fault {
                None | Some(Fault::FlipByte) => Ok(data),
                Some(Fault::Short) => {
                    data.pop();
                    Ok(data)
                }
                Some(Fault::Refused) => Err(RunError::Failed("connection refused".into())),
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
        let report = assemble(
            &m,
            FetchPlan::chunk_by_chunk(4),
            &served,
            &disk,
            FAST,
            &note,
        )
        .expect("assembles");
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
        let report = assemble(
            &m,
            FetchPlan::chunk_by_chunk(2),
            &served,
            &disk,
            FAST,
            &note,
        )
        .expect("assembles");
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
        let err = assemble(
            &m,
            FetchPlan::chunk_by_chunk(3),
            &served,
            &disk,
            FAST,
            &note,
        )
        .expect_err("fails");
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
        let err = assemble(
            &m,
            FetchPlan::chunk_by_chunk(1),
            &served,
            &disk,
            FAST,
            &note,
        )
        .expect_err("fails");
        assert!(
            matches!(err, AssemblyError::Write { index: 2, offset, .. } if offset == 2 * CHUNK_SIZE),
            "{err}"
        );
    }

    /// Runs of 3 chunks by 2 workers (4 once runs are not served).
    const RUNS_OF_3: FetchPlan = FetchPlan {
        run_chunks: 3,
        run_workers: 2,
        chunk_workers: 4,
    };

    #[test]
    fn runs_are_claimed_in_order_and_cut_into_their_chunks() {
        // 8 chunks, the last one short: runs 0-2, 3-5 and 6-7.
        let img = image(7 * CHUNK_SIZE as usize + 4_321);
        let m = manifest_of(&img);
        let served = Served::new(img.clone(), &[]);
        let disk = Disk::new(img.len());
        let (seen, note) = notes();
        let report = assemble(&m, RUNS_OF_3, &served, &disk, FAST, &note).expect("assembles");
        assert_eq!(*disk.bytes.lock().expect("lock"), img);
        let mib = CHUNK_SIZE;
        assert_eq!(
            served.run_requests(),
            [(0, 3 * mib), (3 * mib, 3 * mib), (6 * mib, mib + 4_321)]
        );
        assert_eq!(served.chunk_fetches(), 0, "nothing fetched chunk by chunk");
        assert_eq!(
            (report.chunks, report.by_run, report.runs, report.by_chunk),
            (8, 8, 3, 0)
        );
        assert_eq!(report.bytes, img.len() as u64);
        assert_eq!((report.retries, report.corrupt), (0, 0));
        // Each chunk written on its own, once, at its offset.
        let mut writes = disk.writes.lock().expect("lock").clone();
        writes.sort();
        let want: Vec<(u64, usize)> = (0..8)
            .map(|i| (m.offset(i), m.chunks[i].size as usize))
            .collect();
        assert_eq!(writes, want);
        assert_eq!(disk.flushed.load(Ordering::SeqCst), 1);
        assert!(seen.lock().expect("lock").is_empty());
    }

    #[test]
    fn a_corrupt_chunk_in_a_run_is_fetched_again_on_its_own() {
        let img = image(6 * CHUNK_SIZE as usize);
        let m = manifest_of(&img);
        let served = Served::new(img.clone(), &[]);
        served.corrupt_in_runs.lock().expect("lock").insert(4, 1);
        let disk = Disk::new(img.len());
        let (seen, note) = notes();
        let report = assemble(&m, RUNS_OF_3, &served, &disk, FAST, &note).expect("assembles");
        assert_eq!(*disk.bytes.lock().expect("lock"), img);
        assert_eq!(served.fetches(4), 1, "the corrupt chunk, on its own");
        assert_eq!(served.chunk_fetches(), 1, "and only it");
        assert_eq!(served.run_requests().len(), 2);
        assert_eq!(
            (report.by_run, report.runs, report.by_chunk),
            (5, 2, 1),
            "{report:?}"
        );
        assert_eq!((report.retries, report.corrupt), (1, 1));
        // The run's bad copy never reached the disk: one write per chunk.
        assert_eq!(disk.writes.lock().expect("lock").len(), 6);
        let seen = seen.lock().expect("lock");
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert!(matches!(
            &seen[0],
            ChunkNote::Corrupt { index: 4, attempt: 1, reason } if reason.contains("corrupt")
        ));
    }

    #[test]
    fn a_chunk_wrong_in_its_run_and_on_its_own_fails_after_all_its_tries() {
        let img = image(3 * CHUNK_SIZE as usize);
        let m = manifest_of(&img);
        let served = Served::new(img.clone(), &[(1, &[Fault::FlipByte; 10])]);
        served.corrupt_in_runs.lock().expect("lock").insert(1, 1);
        let disk = Disk::new(img.len());
        let (_seen, note) = notes();
        let err = assemble(&m, RUNS_OF_3, &served, &disk, FAST, &note).expect_err("fails");
        // The run's copy was try 1 of FAST's 3.
        assert!(
            matches!(
                err,
                AssemblyError::Chunk {
                    index: 1,
                    attempts: 3,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(served.fetches(1), 2);
        assert!(
            !disk
                .writes
                .lock()
                .expect("lock")
                .contains(&(m.offset(1), CHUNK_SIZE as usize))
        );
        assert_eq!(disk.flushed.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_failed_or_short_run_falls_back_to_its_chunks_and_the_next_run_is_a_run_again() {
        let img = image(9 * CHUNK_SIZE as usize);
        let m = manifest_of(&img);
        let served = Served::new(img.clone(), &[]);
        *served.run_faults.lock().expect("lock") = vec![Fault::Refused, Fault::Short];
        let disk = Disk::new(img.len());
        let (seen, note) = notes();
        let plan = FetchPlan {
            run_workers: 1,
            ..RUNS_OF_3
        };
        let report = assemble(&m, plan, &served, &disk, FAST, &note).expect("assembles");
        assert_eq!(*disk.bytes.lock().expect("lock"), img);
        assert_eq!(served.run_requests().len(), 3, "every run was tried");
        assert_eq!(
            (report.by_run, report.runs, report.by_chunk),
            (3, 1, 6),
            "{report:?}"
        );
        for i in 0..6 {
            assert_eq!(served.fetches(i), 1, "chunk {i}");
        }
        // A failed run is not a failed try of its chunks.
        assert_eq!((report.retries, report.corrupt), (0, 0));
        let seen = seen.lock().expect("lock");
        assert!(
            matches!(
                &seen[..],
                [
                    ChunkNote::RunFailed { first: 0, last: 2, reason: a },
                    ChunkNote::RunFailed { first: 3, last: 5, reason: b },
                ] if a.contains("refused") && b.contains("not 3145728")
            ),
            "{seen:?}"
        );
    }

    #[test]
    fn an_image_not_served_turns_the_assembly_chunk_by_chunk_once() {
        let img = image(10 * CHUNK_SIZE as usize + 5);
        let m = manifest_of(&img);
        let mut served = Served::new(img.clone(), &[(7, &[Fault::FlipByte])]);
        served.runs = Runs::NotServed;
        let disk = Disk::new(img.len());
        let (seen, note) = notes();
        let report = assemble(&m, RUNS_OF_3, &served, &disk, FAST, &note).expect("assembles");
        assert_eq!(*disk.bytes.lock().expect("lock"), img);
        // Each run worker may have asked once before the other's 404 turned runs off.
        let asked = served.run_requests().len();
        assert!((1..=2).contains(&asked), "{asked} runs asked");
        assert_eq!(
            (report.by_run, report.runs, report.by_chunk),
            (0, 0, 11),
            "{report:?}"
        );
        assert_eq!(served.fetches(7), 2, "the per-chunk retries still hold");
        assert_eq!((report.retries, report.corrupt), (1, 1));
        let seen = seen.lock().expect("lock");
        let not_served = seen
            .iter()
            .filter(|n| matches!(n, ChunkNote::RunsNotServed { reason } if reason == "HTTP 404"))
            .count();
        assert_eq!(not_served, 1, "said once: {seen:?}");
    }

    #[test]
    fn retry_delays_double_to_their_ceiling() {
        let r = ChunkRetry::default();
        let ms: Vec<u128> = (1..=6).map(|f| r.delay(f).as_millis()).collect();
        assert_eq!(ms, [500, 1000, 2000, 4000, 4000, 4000]);
    }
}
