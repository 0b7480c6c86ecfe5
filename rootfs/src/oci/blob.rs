//! The blob cache: verified blobs by digest, partial downloads resumed, copies bounded.
use super::*;

/// Verified blobs by SHA-256. A blob is written to a temporary or `.partial` file beside its
/// final name, hashed as it is written, and renamed only when its size and digest match.
#[derive(Debug)]
pub(crate) struct BlobCache {
    pub(super) dir: PathBuf,
}

/// Where a blob's bytes come from: a local layout, an archive member, a registry.
pub(crate) trait BlobSource {
    /// Where blobs are read from, for messages (a path or a URL).
    fn location(&self, digest: &Sha256Digest) -> String;

    /// The blob's bytes from `offset` on. Returns the reader and the offset it really starts
    /// at: `offset`, or 0 when the source cannot resume (a server that ignores Range).
    fn open_blob(
        &mut self,
        digest: &Sha256Digest,
        offset: u64,
    ) -> Result<(Box<dyn Read + '_>, u64), ImportError>;

    /// A manifest or index named by digest (registries serve those at `/manifests/`).
    fn open_manifest(&mut self, digest: &Sha256Digest) -> Result<Box<dyn Read + '_>, ImportError> {
        self.open_blob(digest, 0).map(|(reader, _)| reader)
    }

    /// Keep an interrupted download as `.partial` to resume (worth it only over a network).
    fn resumable(&self) -> bool;
}

impl BlobCache {
    pub(crate) fn open(blob_dir: &Path) -> Result<Self, ImportError> {
        let dir = blob_dir.join("sha256");
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        Ok(Self { dir })
    }

    pub(crate) fn path(&self, digest: &Sha256Digest) -> PathBuf {
        self.dir.join(digest.to_hex())
    }

    pub(super) fn partial_path(&self, digest: &Sha256Digest) -> PathBuf {
        self.dir.join(format!("{}.partial", digest.to_hex()))
    }

    /// The cached blob, if there is one of the right size. One of another size is not this
    /// blob (a damaged cache): it is removed so it is fetched again.
    pub(super) fn lookup(
        &self,
        digest: &Sha256Digest,
        size: u64,
    ) -> Result<Option<PathBuf>, ImportError> {
        let path = self.path(digest);
        match fs::metadata(&path) {
            Ok(meta) if meta.is_file() && meta.len() == size => Ok(Some(path)),
            Ok(_) => {
                fs::remove_file(&path).map_err(io_err(&path))?;
                Ok(None)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// Stores bytes already verified against `digest`.
    pub(super) fn put(&self, digest: &Sha256Digest, bytes: &[u8]) -> Result<PathBuf, ImportError> {
        let path = self.path(digest);
        if path.is_file() {
            return Ok(path);
        }
        let mut temp = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempfile_in(&self.dir)
            .map_err(io_err(&self.dir))?;
        temp.write_all(bytes).map_err(io_err(temp.path()))?;
        temp.as_file().sync_all().map_err(io_err(temp.path()))?;
        temp.persist(&path).map_err(|e| io_err(&path)(e.error))?;
        Ok(path)
    }

    /// Stores a file already verified against `digest` (it is moved, not copied).
    pub(super) fn put_file(
        &self,
        digest: &Sha256Digest,
        file: tempfile::NamedTempFile,
    ) -> Result<PathBuf, ImportError> {
        let path = self.path(digest);
        file.as_file().sync_all().map_err(io_err(file.path()))?;
        file.persist(&path).map_err(|e| io_err(&path)(e.error))?;
        Ok(path)
    }

    /// Opens and locks `<hex>.partial`. The lock (flock) keeps two pulls sharing the cache from
    /// writing one file; the loop reopens when the file we locked was renamed into the cache or
    /// removed by the previous holder meanwhile.
    pub(super) fn lock_partial(
        &self,
        digest: &Sha256Digest,
    ) -> Result<(File, PathBuf), ImportError> {
        let partial = self.partial_path(digest);
        loop {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&partial)
                .map_err(io_err(&partial))?;
            file.lock().map_err(io_err(&partial))?;
            let locked = file.metadata().map_err(io_err(&partial))?;
            match fs::metadata(&partial) {
                Ok(now) if now.ino() == locked.ino() && now.dev() == locked.dev() => {
                    return Ok((file, partial));
                }
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(&partial)(e)),
            }
        }
    }

    /// Fetches the blob `desc` into the cache (unless it is there), verifying size and digest.
    pub(super) fn fetch(
        &self,
        what: &str,
        desc: &Descriptor,
        source: &mut dyn BlobSource,
        progress: &mut dyn FnMut(u64),
    ) -> Result<PathBuf, ImportError> {
        if let Some(path) = self.lookup(&desc.digest, desc.size)? {
            progress(desc.size);
            return Ok(path);
        }
        let (mut file, partial) = self.lock_partial(&desc.digest)?;
        // Another pull may have finished this blob while we waited for the lock; the partial
        // file we hold is then an empty one of our own.
        if let Some(path) = self.lookup(&desc.digest, desc.size)? {
            let _ = fs::remove_file(&partial);
            progress(desc.size);
            return Ok(path);
        }
        let result = self.fill(what, desc, source, &mut file, &partial, progress);
        match result {
            Ok(()) => {
                let path = self.path(&desc.digest);
                fs::rename(&partial, &path).map_err(io_err(&path))?;
                Ok(path)
            }
            Err(err) => {
                let keep = source.resumable()
                    && matches!(
                        err,
                        ImportError::Transfer { .. } | ImportError::ShortBlob { .. }
                    );
                if !keep {
                    let _ = fs::remove_file(&partial);
                }
                Err(err)
            }
        }
    }

    /// Writes the blob into the locked `.partial` file: resumes after what it holds, and starts
    /// over once if a resumed blob does not verify (the earlier bytes may be from a bad server).
    pub(super) fn fill(
        &self,
        what: &str,
        desc: &Descriptor,
        source: &mut dyn BlobSource,
        file: &mut File,
        partial: &Path,
        progress: &mut dyn FnMut(u64),
    ) -> Result<(), ImportError> {
        let location = source.location(&desc.digest);
        let mut have = file.metadata().map_err(io_err(partial))?.len();
        if have > desc.size || !source.resumable() {
            have = 0;
        }
        for attempt in 0..2 {
            let resumed_from = have;
            let mut hasher = Sha256::new();
            if have > 0 {
                file.seek(SeekFrom::Start(0)).map_err(io_err(partial))?;
                let copied =
                    io::copy(&mut (&mut *file).take(have), &mut hasher).map_err(io_err(partial))?;
                if copied != have {
                    have = 0;
                    hasher = Sha256::new();
                }
            }
            if have < desc.size {
                let (mut reader, start) = source
                    .open_blob(&desc.digest, have)
                    .map_err(|e| naming(e, what))?;
                if start != have {
                    // The source sent the whole blob: drop what we had.
                    have = 0;
                    hasher = Sha256::new();
                }
                file.set_len(have).map_err(io_err(partial))?;
                file.seek(SeekFrom::Start(have)).map_err(io_err(partial))?;
                progress(have);
                have = copy_bounded(&mut reader, file, &mut hasher, have, desc.size, progress)
                    .map_err(|e| match e {
                        CopyError::Read(source) => ImportError::Transfer {
                            what: what.to_owned(),
                            location: location.clone(),
                            source,
                        },
                        CopyError::Write(source) => io_err(partial)(source),
                        CopyError::TooLong => ImportError::TooLarge {
                            what: what.to_owned(),
                            location: location.clone(),
                            limit: desc.size,
                        },
                    })?;
                if have < desc.size {
                    file.sync_all().map_err(io_err(partial))?;
                    return Err(ImportError::ShortBlob {
                        what: what.to_owned(),
                        location,
                        expected: desc.size,
                        actual: have,
                    });
                }
            } else {
                progress(have);
            }
            let actual = Sha256Digest(hasher.finalize().into());
            if actual == desc.digest {
                file.sync_all().map_err(io_err(partial))?;
                return Ok(());
            }
            if resumed_from == 0 || attempt == 1 {
                return Err(ImportError::DigestMismatch {
                    what: what.to_owned(),
                    location,
                    expected: oci_digest(&desc.digest),
                    actual: oci_digest(&actual),
                });
            }
            have = 0;
        }
        unreachable!("the second attempt returns")
    }
}

/// A missing blob named as what it is to the image ("layer 2 of 3", "config").
pub(super) fn naming(err: ImportError, what: &str) -> ImportError {
    match err {
        ImportError::MissingBlob {
            digest, location, ..
        } => ImportError::MissingBlob {
            what: what.to_owned(),
            digest,
            location,
        },
        other => other,
    }
}

pub(super) enum CopyError {
    Read(io::Error),
    Write(io::Error),
    TooLong,
}

/// Copies from `reader` until `limit` bytes are in `out` (counting `done` already there),
/// hashing as it goes; one byte more from the reader is an error. Returns the bytes in `out`.
pub(super) fn copy_bounded(
    reader: &mut dyn Read,
    out: &mut dyn Write,
    hasher: &mut Sha256,
    mut done: u64,
    limit: u64,
    progress: &mut dyn FnMut(u64),
) -> Result<u64, CopyError> {
    let mut buf = vec![0u8; 256 << 10];
    let mut reported = done;
    loop {
        let want = usize::try_from((limit - done).min(buf.len() as u64)).unwrap_or(buf.len());
        if want == 0 {
            // Exactly the size read: a server sending more is cut off here and refused.
            let mut probe = [0u8; 1];
            return match read_retrying(reader, &mut probe).map_err(CopyError::Read)? {
                0 => Ok(done),
                _ => Err(CopyError::TooLong),
            };
        }
        let n = read_retrying(reader, &mut buf[..want]).map_err(CopyError::Read)?;
        if n == 0 {
            progress(done);
            return Ok(done);
        }
        out.write_all(&buf[..n]).map_err(CopyError::Write)?;
        hasher.update(&buf[..n]);
        done += n as u64;
        if done - reported >= PROGRESS_STEP || done == limit {
            progress(done);
            reported = done;
        }
    }
}

pub(super) fn read_retrying(reader: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match reader.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}
