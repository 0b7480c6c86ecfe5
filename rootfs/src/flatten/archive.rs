//! Reading a layer's tar archive: members normalised and staged, contents spooled, PAX
//! extensions and xattrs parsed, every size bounded.
use super::*;

impl Tree {
    /// Reads a whole layer: members normalised and staged, contents spooled, whiteouts set
    /// apart. The tree is not touched.
    pub(super) fn read_layer(
        &mut self,
        layer: &str,
        tar: impl Read,
        stats: &mut LayerStats,
    ) -> Result<(Vec<Staged>, Vec<Removal>), FlattenError> {
        let ended = std::cell::Cell::new(false);
        let mut archive = tar::Archive::new(EndWatch {
            inner: tar,
            ended: &ended,
        });
        let stream_error = |source: io::Error| {
            // The tar crate reports a cut stream as "failed to read entire block" or
            // "unexpected EOF during skip" (kind Other); the watch on the source tells it
            // apart from a malformed header.
            if ended.get() || source.kind() == io::ErrorKind::UnexpectedEof {
                FlattenError::Truncated {
                    layer: layer.to_owned(),
                }
            } else {
                FlattenError::Tar {
                    layer: layer.to_owned(),
                    source,
                }
            }
        };
        // Raw: the tar crate would read GNU long names and PAX headers into memory without a
        // bound; here they are read under `Limits`.
        let entries = archive.entries().map_err(stream_error)?.raw(true);
        let mut staged = Vec::new();
        let mut removals = Vec::new();
        let mut ext = Extensions::default();
        for member in entries {
            let mut member = member.map_err(stream_error)?;
            self.members_seen += 1;
            if self.members_seen > self.limits.max_entries {
                return Err(FlattenError::TooManyEntries {
                    layer: layer.to_owned(),
                    limit: self.limits.max_entries,
                });
            }
            let header = member.header().clone();
            let size = header.entry_size().map_err(stream_error)?;
            let ty = header.entry_type();
            let raw_name = || String::from_utf8_lossy(&header.path_bytes()).into_owned();
            let malformed = |reason| FlattenError::Malformed {
                layer: layer.to_owned(),
                entry: raw_name(),
                reason,
            };
            match ty {
                EntryType::GNULongName | EntryType::GNULongLink => {
                    let limit = self.limits.max_path_bytes as u64 + 1;
                    let data = read_bounded(&mut member, size, limit)
                        .map_err(|e| e.into_error(layer, raw_name(), "GNU long name", limit))?;
                    let data = strip_nul(data);
                    if ty == EntryType::GNULongName {
                        ext.long_name = Some(data);
                    } else {
                        ext.long_link = Some(data);
                    }
                    continue;
                }
                EntryType::XHeader | EntryType::XGlobalHeader => {
                    let limit = self.limits.max_pax_bytes;
                    let data = read_bounded(&mut member, size, limit)
                        .map_err(|e| e.into_error(layer, raw_name(), "PAX header", limit))?;
                    // Global headers set defaults for the rest of the archive; the keys that
                    // matter to a root (path, ownership, xattrs) are per-member in practice,
                    // so they are read (for well-formedness) and not applied.
                    if ty == EntryType::XHeader {
                        ext.pax = Some(data);
                    }
                    continue;
                }
                _ => {}
            }
            let ext = std::mem::take(&mut ext);
            let pax = match &ext.pax {
                Some(data) => parse_pax(data).ok_or_else(|| malformed("malformed PAX record"))?,
                None => Vec::new(),
            };
            let mut path = ext
                .long_name
                .clone()
                .unwrap_or_else(|| header.path_bytes().into_owned());
            let mut link = ext
                .long_link
                .clone()
                .or_else(|| header.link_name_bytes().map(|l| l.into_owned()));
            let mut meta = Meta {
                mode: (header.mode().map_err(stream_error)? & 0o7777) as u16,
                uid: header
                    .uid()
                    .map_err(stream_error)?
                    .try_into()
                    .map_err(|_| malformed("uid over 32 bits"))?,
                gid: header
                    .gid()
                    .map_err(stream_error)?
                    .try_into()
                    .map_err(|_| malformed("gid over 32 bits"))?,
                mtime: i64::try_from(header.mtime().map_err(stream_error)?).unwrap_or(i64::MAX),
                mtime_nsec: 0,
            };
            let mut xattrs: Vec<(Box<str>, Box<[u8]>)> = Vec::new();
            let mut xattr_bytes = 0usize;
            for (key, value) in &pax {
                match *key {
                    b"path" if !value.is_empty() => path = value.to_vec(),
                    b"linkpath" if !value.is_empty() => link = Some(value.to_vec()),
                    b"uid" => {
                        meta.uid = parse_decimal(value).ok_or_else(|| malformed("PAX uid"))?
                    }
                    b"gid" => {
                        meta.gid = parse_decimal(value).ok_or_else(|| malformed("PAX gid"))?
                    }
                    b"mtime" => {
                        (meta.mtime, meta.mtime_nsec) =
                            parse_pax_time(value).ok_or_else(|| malformed("PAX mtime"))?;
                    }
                    // The tar crate positions the stream by the header's size in raw mode; a PAX
                    // size that differs (files of 8 GiB and more) would desynchronise it.
                    b"size" if parse_decimal::<u64>(value) != Some(size) => {
                        return Err(FlattenError::Unsupported {
                            layer: layer.to_owned(),
                            entry: raw_name(),
                            reason: "PAX size differs from the header's (files of 8 GiB or more)",
                        });
                    }
                    k if k.starts_with(b"GNU.sparse.") => {
                        return Err(FlattenError::Unsupported {
                            layer: layer.to_owned(),
                            entry: raw_name(),
                            reason: "sparse file",
                        });
                    }
                    k if k.starts_with(b"SCHILY.xattr.") => {
                        let name = &k[b"SCHILY.xattr.".len()..];
                        let Some(name) =
                            std::str::from_utf8(name).ok().filter(|n| xattr_storable(n))
                        else {
                            stats.xattrs_dropped += 1;
                            continue;
                        };
                        xattr_bytes += name.len() + value.len();
                        if xattr_bytes > self.limits.max_xattr_bytes {
                            return Err(FlattenError::TooLarge {
                                layer: layer.to_owned(),
                                entry: raw_name(),
                                what: "xattr bytes",
                                limit: self.limits.max_xattr_bytes as u64,
                            });
                        }
                        xattrs.retain(|(n, _)| &**n != name);
                        xattrs.push((name.into(), value.to_vec().into()));
                    }
                    _ => {}
                }
            }
            xattrs.sort();
            let name = String::from_utf8_lossy(&path).into_owned();
            let comps = self.normalize(layer, &name, &path)?;

            // Whiteouts: by the last component's name, whatever the member's type.
            if let Some((last, dir)) = comps.split_last()
                && let Some(hidden) = last.strip_prefix(b".wh.")
            {
                if hidden == b".wh..opq" {
                    stats.opaques += 1;
                    removals.push(Removal::Opaque(dir.to_vec()));
                } else if hidden.starts_with(b".wh.")
                    || hidden.is_empty()
                    || hidden == b"."
                    || hidden == b".."
                {
                    // AUFS's own metadata (`.wh..wh.plnk`, `.wh..wh.aufs`), or nonsense.
                    stats.skipped += 1;
                } else {
                    stats.whiteouts += 1;
                    removals.push(Removal::Whiteout {
                        dir: dir.to_vec(),
                        name: hidden.into(),
                    });
                }
                continue;
            }

            let kind = match ty {
                EntryType::Regular | EntryType::Continuous => {
                    if self.spool.written + size > self.limits.max_spool_bytes {
                        return Err(FlattenError::TooLarge {
                            layer: layer.to_owned(),
                            entry: name,
                            what: "spooled content bytes",
                            limit: self.limits.max_spool_bytes,
                        });
                    }
                    let offset = self.spool.written;
                    let copied =
                        io::copy(&mut (&mut member).take(size), &mut self.spool).map_err(|e| {
                            if e.kind() == io::ErrorKind::UnexpectedEof || ended.get() {
                                FlattenError::Truncated {
                                    layer: layer.to_owned(),
                                }
                            } else if matches!(
                                e.kind(),
                                io::ErrorKind::StorageFull | io::ErrorKind::WriteZero
                            ) {
                                FlattenError::Spool {
                                    layer: layer.to_owned(),
                                    source: e,
                                }
                            } else {
                                stream_error(e)
                            }
                        })?;
                    if copied != size {
                        return Err(FlattenError::Truncated {
                            layer: layer.to_owned(),
                        });
                    }
                    stats.bytes += size;
                    StagedKind::Node(NodeKind::File { offset, len: size })
                }
                EntryType::Directory => StagedKind::Node(NodeKind::Dir(BTreeMap::new())),
                EntryType::Symlink => {
                    let target = link.ok_or_else(|| malformed("symlink without a target"))?;
                    if target.is_empty() || target.contains(&0) {
                        return Err(malformed("empty symlink target or NUL in it"));
                    }
                    if target.len() > MAX_SYMLINK_BYTES {
                        return Err(FlattenError::TooLarge {
                            layer: layer.to_owned(),
                            entry: name,
                            what: "symlink target bytes",
                            limit: MAX_SYMLINK_BYTES as u64,
                        });
                    }
                    StagedKind::Node(NodeKind::Symlink(target.into()))
                }
                EntryType::Link => {
                    let target = link.ok_or_else(|| malformed("hard link without a target"))?;
                    let target_name = String::from_utf8_lossy(&target).into_owned();
                    // A target is a member path, relative to the archive root however it is
                    // spelt (GNU tar strips a leading `/` from both); `..` above the root is
                    // refused like any escaping member, naming the link.
                    let target = self.normalize(layer, &name, &target)?;
                    StagedKind::HardLink {
                        target,
                        target_name,
                    }
                }
                EntryType::Char | EntryType::Block => {
                    let major = header.device_major().map_err(stream_error)?.unwrap_or(0);
                    let minor = header.device_minor().map_err(stream_error)?.unwrap_or(0);
                    // What Linux's dev_t (and erofs's `new_encode_dev`) can hold.
                    if major >= 1 << 12 || minor >= 1 << 20 {
                        return Err(malformed(
                            "device number beyond Linux's 12-bit major, 20-bit minor",
                        ));
                    }
                    StagedKind::Node(if ty == EntryType::Char {
                        NodeKind::CharDevice { major, minor }
                    } else {
                        NodeKind::BlockDevice { major, minor }
                    })
                }
                EntryType::Fifo => StagedKind::Node(NodeKind::Fifo),
                EntryType::GNUSparse => {
                    return Err(FlattenError::Unsupported {
                        layer: layer.to_owned(),
                        entry: name,
                        reason: "sparse file",
                    });
                }
                _ => {
                    stats.skipped += 1;
                    continue;
                }
            };
            staged.push(Staged {
                path: comps,
                name,
                what: kind,
                meta,
                xattrs,
            });
        }
        if ended.get() || ext.long_name.is_some() || ext.long_link.is_some() || ext.pax.is_some() {
            // No end-of-archive block (the tar crate stops quietly at a clean EOF), or an
            // extension header for a member that never came.
            return Err(FlattenError::Truncated {
                layer: layer.to_owned(),
            });
        }
        Ok((staged, removals))
    }

    /// A member path as components: leading `/` and `.` dropped, `..` applied lexically and
    /// refused above the root.
    pub(super) fn normalize(
        &self,
        layer: &str,
        entry: &str,
        raw: &[u8],
    ) -> Result<Vec<Box<[u8]>>, FlattenError> {
        if raw.len() > self.limits.max_path_bytes {
            return Err(FlattenError::TooLarge {
                layer: layer.to_owned(),
                entry: entry.to_owned(),
                what: "path bytes",
                limit: self.limits.max_path_bytes as u64,
            });
        }
        let mut comps: Vec<Box<[u8]>> = Vec::new();
        for comp in raw.split(|&b| b == b'/') {
            match comp {
                b"" | b"." => {}
                b".." => {
                    if comps.pop().is_none() {
                        return Err(FlattenError::Escapes {
                            layer: layer.to_owned(),
                            entry: entry.to_owned(),
                        });
                    }
                }
                _ if comp.len() > MAX_NAME_BYTES => {
                    return Err(FlattenError::TooLarge {
                        layer: layer.to_owned(),
                        entry: entry.to_owned(),
                        what: "name bytes",
                        limit: MAX_NAME_BYTES as u64,
                    });
                }
                _ if comp.contains(&0) => {
                    return Err(FlattenError::Malformed {
                        layer: layer.to_owned(),
                        entry: entry.to_owned(),
                        reason: "NUL in a name",
                    });
                }
                _ => comps.push(comp.into()),
            }
        }
        Ok(comps)
    }
}

/// The content spool: appended to only, its length counted by what was written so that a
/// copy cut short by a bad stream still leaves the next file's offset right.
#[derive(Debug)]
pub(super) struct Spool {
    pub(super) out: BufWriter<File>,
    pub(super) written: u64,
}

impl Write for Spool {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Extension headers waiting for the member they describe.
#[derive(Debug, Default)]
pub(super) struct Extensions {
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    pax: Option<Vec<u8>>,
}

/// Whether erofs can store an xattr of this name: it keeps a name as a namespace index and a
/// suffix (`fs/erofs/erofs_fs.h`, `EROFS_XATTR_INDEX_*`), and the kernel serves only these.
pub(crate) fn xattr_storable(name: &str) -> bool {
    name.len() <= MAX_XATTR_NAME_BYTES && xattr_index(name).is_some()
}

/// The erofs name index of an xattr and the suffix stored after it.
pub(crate) fn xattr_index(name: &str) -> Option<(u8, &str)> {
    // Whole names first: the ACL indexes have an empty suffix.
    match name {
        "system.posix_acl_access" => return Some((2, "")),
        "system.posix_acl_default" => return Some((3, "")),
        _ => {}
    }
    for (prefix, index) in [("user.", 1), ("trusted.", 4), ("security.", 6)] {
        if let Some(suffix) = name.strip_prefix(prefix) {
            return (!suffix.is_empty()).then_some((index, suffix));
        }
    }
    None
}

/// Watches a layer stream for its end: the tar crate takes a clean EOF where a header should
/// be as the end of the archive, so a stream cut at a 512-byte boundary would otherwise read
/// as a whole, shorter archive. A well-formed archive ends with a zero block the tar crate
/// stops at, before any EOF.
pub(super) struct EndWatch<'c, R> {
    inner: R,
    ended: &'c std::cell::Cell<bool>,
}

impl<R: Read> Read for EndWatch<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.ended.set(true);
        }
        Ok(n)
    }
}

pub(super) enum BoundedRead {
    TooLarge,
    Short,
    Io(io::Error),
}

impl BoundedRead {
    fn into_error(
        self,
        layer: &str,
        entry: String,
        what: &'static str,
        limit: u64,
    ) -> FlattenError {
        match self {
            BoundedRead::TooLarge => FlattenError::TooLarge {
                layer: layer.to_owned(),
                entry,
                what,
                limit,
            },
            BoundedRead::Short => FlattenError::Truncated {
                layer: layer.to_owned(),
            },
            BoundedRead::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                FlattenError::Truncated {
                    layer: layer.to_owned(),
                }
            }
            BoundedRead::Io(source) => FlattenError::Tar {
                layer: layer.to_owned(),
                source,
            },
        }
    }
}

pub(super) fn read_bounded(
    r: &mut impl Read,
    size: u64,
    limit: u64,
) -> Result<Vec<u8>, BoundedRead> {
    if size > limit {
        return Err(BoundedRead::TooLarge);
    }
    let mut data = Vec::with_capacity(size as usize);
    r.take(size)
        .read_to_end(&mut data)
        .map_err(BoundedRead::Io)?;
    if data.len() as u64 != size {
        return Err(BoundedRead::Short);
    }
    Ok(data)
}

pub(super) fn strip_nul(mut data: Vec<u8>) -> Vec<u8> {
    if let Some(end) = data.iter().position(|&b| b == 0) {
        data.truncate(end);
    }
    data
}

/// PAX extended header records (POSIX.1-2001 `pax`, "extended header"): `LEN KEY=VALUE\n`, where
/// LEN counts the whole record in decimal. Values are raw bytes (xattr values are binary), so
/// records are cut by their length, never by searching for the newline.
pub(super) fn parse_pax(data: &[u8]) -> Option<Vec<(&[u8], &[u8])>> {
    let mut records = Vec::new();
    let mut rest = data;
    // Some writers pad the header's data with NULs.
    while !rest.is_empty() && rest[0] != 0 {
        let space = rest.iter().take(20).position(|&b| b == b' ')?;
        let len: usize = parse_decimal(&rest[..space])?;
        if len <= space + 1 || len > rest.len() {
            return None;
        }
        let record = rest[space + 1..len].strip_suffix(b"\n")?;
        let eq = record.iter().position(|&b| b == b'=')?;
        records.push((&record[..eq], &record[eq + 1..]));
        rest = &rest[len..];
    }
    Some(records)
}

pub(super) fn parse_decimal<T: std::str::FromStr>(digits: &[u8]) -> Option<T> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// A PAX time: decimal seconds, maybe negative, maybe with a fraction (`1700000000.123456789`).
pub(super) fn parse_pax_time(value: &[u8]) -> Option<(i64, u32)> {
    let (negative, value) = match value.strip_prefix(b"-") {
        Some(rest) => (true, rest),
        None => (false, value),
    };
    let (secs, frac) = match value.iter().position(|&b| b == b'.') {
        Some(dot) => (&value[..dot], &value[dot + 1..]),
        None => (value, &b""[..]),
    };
    let secs: i64 = parse_decimal(secs)?;
    if !frac.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut nsec = 0u32;
    for i in 0..9 {
        nsec = nsec * 10 + frac.get(i).map_or(0, |d| u32::from(d - b'0'));
    }
    if negative {
        // -1.5 is 1.5 s before the epoch: -2 s + 0.5 s.
        if nsec == 0 {
            Some((-secs, 0))
        } else {
            Some((-secs - 1, 1_000_000_000 - nsec))
        }
    } else {
        Some((secs, nsec))
    }
}
