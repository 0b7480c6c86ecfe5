//! Image imports: copying a file into the appliance's content-addressed store as a job whose
//! progress can be read (`GET /api/v1/images/imports/{id}`) and followed (`image_import`
//! events on `/api/v1/events`).
//!
//! A source in skopeo's transport syntax (`oci:`, `oci-archive:`, `docker-archive:`,
//! `docker://`) is an OCI image: the job builds a diskless root from it through the
//! [`RootBuilder`] the appliance attaches (pull with every digest verified, flatten, erofs,
//! chunks, signed manifest, node initramfs) and records a [`RootImage`] under the import's name.
//!
//! The design is deliberately plain: one import is one thread of tokio's blocking pool, reading
//! the source in chunks, hashing as it copies (the store does that), and publishing the bytes
//! done in an atomic. Jobs live in memory: a restart forgets them (and a half-written import
//! leaves only a temporary file the store never names). The image itself is recorded in the
//! state file with its audit entry, like a registered one.
use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::broadcast;

use crate::api_types::{ImportJob, ImportRequest, ImportState, PutOutcome};
use crate::model::{ImageKind, RootImage};

/// How often a running import publishes a progress event (and at its start and end).
pub const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);

/// Imports running at once; more are refused (429) until one ends. Each is a thread and a
/// stream of disk writes: a handful saturates a disk already.
pub const MAX_RUNNING_IMPORTS: usize = 4;

/// A URL source that sends nothing for this long fails (a stalled server must not hold an
/// import slot forever).
pub const URL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Finished jobs kept for `GET /api/v1/images/imports`; older ones are forgotten. Running jobs
/// are always kept.
pub const FINISHED_JOBS_KEPT: usize = 100;

/// Where imported bytes go: the appliance's content store. Object names are SHA-256 digests.
pub trait ImageStore: Send + Sync + std::fmt::Debug + 'static {
    /// Copies everything `source` yields into the store. When `expected` is given and the
    /// content hashes to something else, nothing is stored and the error says so.
    fn import(
        &self,
        source: &mut dyn Read,
        expected: Option<[u8; 32]>,
    ) -> Result<StoredObject, ImageStoreError>;
}

/// An object in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredObject {
    pub sha256: [u8; 32],
    /// Where the object's bytes are.
    pub path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum ImageStoreError {
    #[error("content hashes to {actual}, not the expected {expected}")]
    Mismatch { expected: String, actual: String },
    #[error(transparent)]
    Other(Box<dyn std::error::Error + Send + Sync>),
}

/// Builds diskless roots from OCI images: the appliance's side of a root import. The control
/// crate sees the builder only through this trait, so it does not depend on the image code.
pub trait RootBuilder: Send + Sync + std::fmt::Debug + 'static {
    /// Checks a transport source's syntax without reading it. `Ok`: the name a root imported
    /// from it gets when the request gives none (the repository's last component and tag, or
    /// the file or directory name).
    fn check_source(&self, source: &str) -> Result<String, String>;

    /// Pulls, verifies and builds (blocking: called on the import's own thread). `progress`
    /// is told the pull's bytes, then that the build proper started.
    fn build(
        &self,
        request: &RootBuildRequest<'_>,
        progress: &dyn Fn(RootBuildProgress),
    ) -> Result<BuiltRootRecord, RootBuildError>;

    /// Removes built roots whose id is not in `keep` (the recorded roots' `root_id`s), and
    /// what only they used. A builder that keeps no files of its own has nothing to remove.
    fn collect_garbage(
        &self,
        keep: &std::collections::BTreeSet<String>,
    ) -> Result<(), RootBuildError> {
        let _ = keep;
        Ok(())
    }
}

/// What a root build needs besides the builder's own state.
#[derive(Debug, Clone)]
pub struct RootBuildRequest<'a> {
    pub source: &'a str,
    /// `docker://`: registry user and password.
    pub credentials: Option<(String, String)>,
    /// `docker://`: PEM text of CA certificates trusted for the registry's https.
    pub ca_pem: Option<&'a str>,
    /// `docker://`: speak plain http.
    pub plain_http: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootBuildProgress {
    /// Bytes of the image's config and layers read and verified so far, of `total`.
    Pulling { done: u64, total: u64 },
    /// Flattening, writing the file system, chunks, manifest and node initramfs.
    Building,
}

/// A built root as the builder reports it; the job names it and records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltRootRecord {
    pub image: String,
    pub root_id: String,
    pub kernel_release: String,
    pub chunks: u64,
    pub bytes: u64,
    pub initrd_bytes: u64,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub roots_dir: PathBuf,
}

/// Why a root was not built: the builder's message, with its causes.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RootBuildError(pub String);

/// The transports of skopeo's syntax that name OCI images (what [`RootBuilder`] builds from).
pub const ROOT_TRANSPORTS: &[&str] = &["oci:", "oci-archive:", "docker-archive:", "docker://"];

/// Whether `source` is an OCI image source rather than a file or URL.
pub fn is_root_source(source: &str) -> bool {
    ROOT_TRANSPORTS.iter().any(|t| source.starts_with(t))
}

#[derive(Debug)]
struct Job {
    view: Mutex<ImportJob>,
    /// Updated by the copying thread on every chunk; read without the lock.
    done: AtomicU64,
}

impl Job {
    fn snapshot(&self) -> ImportJob {
        let mut view = lock(&self.view).clone();
        if view.state == ImportState::Running {
            view.bytes_done = self.done.load(Ordering::Relaxed);
        }
        view
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Every import this process has run (within [`FINISHED_JOBS_KEPT`]).
#[derive(Debug)]
pub struct ImportJobs {
    next_id: AtomicU64,
    jobs: Mutex<BTreeMap<u64, Arc<Job>>>,
    events: broadcast::Sender<Arc<ImportJob>>,
}

impl Default for ImportJobs {
    fn default() -> Self {
        Self::new()
    }
}

impl ImportJobs {
    pub fn new() -> Self {
        Self {
            next_id: AtomicU64::new(1),
            jobs: Mutex::default(),
            // Progress events are small and a slow reader only misses some (it is told).
            events: broadcast::channel(256).0,
        }
    }

    /// Progress of every import from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<ImportJob>> {
        self.events.subscribe()
    }

    pub fn list(&self) -> Vec<ImportJob> {
        lock(&self.jobs).values().map(|j| j.snapshot()).collect()
    }

    pub fn get(&self, id: u64) -> Option<ImportJob> {
        lock(&self.jobs).get(&id).map(|j| j.snapshot())
    }

    /// Registers a running job and announces it; `None` when [`MAX_RUNNING_IMPORTS`] run.
    pub(crate) fn start(
        &self,
        req: &ImportRequest,
        name: &str,
        kind: ImageKind,
        bytes_total: Option<u64>,
        now_ms: u64,
    ) -> Option<JobHandle> {
        let mut jobs = lock(&self.jobs);
        let running = jobs
            .values()
            .filter(|j| lock(&j.view).state == ImportState::Running)
            .count();
        if running >= MAX_RUNNING_IMPORTS {
            return None;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let job = Arc::new(Job {
            view: Mutex::new(ImportJob {
                id,
                name: name.to_owned(),
                source: req.source.clone(),
                kind,
                state: ImportState::Running,
                stage: None,
                root: None,
                bytes_done: 0,
                bytes_total,
                sha256: None,
                expected_sha256: req.sha256.as_ref().map(|s| s.to_ascii_lowercase()),
                outcome: None,
                error: None,
                started_at_ms: now_ms,
                finished_at_ms: None,
            }),
            done: AtomicU64::new(0),
        });
        jobs.insert(id, Arc::clone(&job));
        let finished: Vec<u64> = jobs
            .iter()
            .filter(|(_, j)| lock(&j.view).state != ImportState::Running)
            .map(|(id, _)| *id)
            .collect();
        let excess = finished.len().saturating_sub(FINISHED_JOBS_KEPT);
        for old in finished.into_iter().take(excess) {
            jobs.remove(&old);
        }
        drop(jobs);
        let handle = JobHandle {
            job,
            events: self.events.clone(),
            last_pull_event: Mutex::new(Instant::now()),
        };
        handle.publish();
        Some(handle)
    }
}

/// The copying thread's side of a job.
#[derive(Debug)]
pub(crate) struct JobHandle {
    job: Arc<Job>,
    events: broadcast::Sender<Arc<ImportJob>>,
    /// When a root pull last published its progress.
    last_pull_event: Mutex<Instant>,
}

impl JobHandle {
    pub(crate) fn id(&self) -> u64 {
        self.job.snapshot().id
    }

    pub(crate) fn snapshot(&self) -> ImportJob {
        self.job.snapshot()
    }

    fn publish(&self) {
        // No subscriber is fine: nobody is watching.
        let _ = self.events.send(Arc::new(self.job.snapshot()));
    }

    /// `source` counting its bytes into the job and publishing progress now and then.
    pub(crate) fn reader<'a, R: Read>(&'a self, source: R) -> ProgressReader<'a, R> {
        ProgressReader {
            source,
            handle: self,
            last_event: Instant::now(),
        }
    }

    /// A root import's pull progress (the total is known once the manifest is read).
    pub(crate) fn pulled(&self, done: u64, total: u64) {
        let first = {
            let mut view = lock(&self.job.view);
            let first = view.bytes_total != Some(total) || view.stage.is_none();
            view.bytes_total = Some(total);
            view.stage = Some("pulling".into());
            first
        };
        self.job.done.store(done, Ordering::Relaxed);
        let due = {
            let mut last = lock(&self.last_pull_event);
            let due = first || last.elapsed() >= PROGRESS_INTERVAL;
            if due {
                *last = Instant::now();
            }
            due
        };
        if due {
            self.publish();
        }
    }

    pub(crate) fn stage(&self, stage: &str) {
        lock(&self.job.view).stage = Some(stage.to_owned());
        self.publish();
    }

    pub(crate) fn finish_root(&self, root: RootImage) {
        lock(&self.job.view).root = Some(root);
    }

    pub(crate) fn finish(&self, result: Result<(String, PutOutcome), String>, now_ms: u64) {
        {
            let mut view = lock(&self.job.view);
            view.bytes_done = self.job.done.load(Ordering::Relaxed);
            view.finished_at_ms = Some(now_ms);
            view.stage = None;
            match result {
                Ok((sha256, outcome)) => {
                    view.state = ImportState::Done;
                    view.sha256 = Some(sha256);
                    view.outcome = Some(outcome);
                }
                Err(error) => {
                    view.state = ImportState::Failed;
                    view.error = Some(error);
                }
            }
        }
        self.publish();
    }
}

pub(crate) struct ProgressReader<'a, R> {
    source: R,
    handle: &'a JobHandle,
    last_event: Instant,
}

impl<R: Read> Read for ProgressReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.source.read(buf)?;
        self.handle.job.done.fetch_add(n as u64, Ordering::Relaxed);
        if self.last_event.elapsed() >= PROGRESS_INTERVAL {
            self.last_event = Instant::now();
            self.handle.publish();
        }
        Ok(n)
    }
}

/// Starts a GET of `url`; on a 2xx answer, its body as a blocking reader (chunks arrive from a
/// task on the current runtime, a few at a time) and its length if the server said.
pub(crate) async fn fetch(url: &str) -> Result<(BodyReader, Option<u64>), String> {
    let client = crate::client::http_client(None).map_err(|e| e.to_string())?;
    let response = client
        .get(url)
        .send()
        .await
        .map_err(|e| crate::error_chain(&e))?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("the server answered {status}"));
    }
    let total = response.content_length();
    // Four chunks in flight: the network runs ahead of the disk by a little, no more.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        let mut response = response;
        loop {
            let next = match tokio::time::timeout(URL_IDLE_TIMEOUT, response.chunk()).await {
                Ok(Ok(Some(chunk))) => Ok(chunk),
                Ok(Ok(None)) => break,
                Ok(Err(e)) => Err(std::io::Error::other(crate::error_chain(&e))),
                Err(_) => Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no data for {} s", URL_IDLE_TIMEOUT.as_secs()),
                )),
            };
            let failed = next.is_err();
            // The import ended (its reader is gone): stop downloading.
            if tx.send(next).await.is_err() || failed {
                break;
            }
        }
    });
    Ok((
        BodyReader {
            rx,
            chunk: bytes::Bytes::new(),
        },
        total,
    ))
}

/// The blocking side of [`fetch`]: what the import thread reads.
#[derive(Debug)]
pub(crate) struct BodyReader {
    rx: tokio::sync::mpsc::Receiver<std::io::Result<bytes::Bytes>>,
    chunk: bytes::Bytes,
}

impl Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.chunk.is_empty() {
            match self.rx.blocking_recv() {
                Some(chunk) => self.chunk = chunk?,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk.split_to(n));
        Ok(n)
    }
}
