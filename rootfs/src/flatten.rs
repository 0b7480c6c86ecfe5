//! Flattening: an image's layers, applied in order, become one file tree.
//!
//! The rules are the OCI image spec's layer changesets (image-spec `layer.md`, "Whiteouts"):
//!
//! - `DIR/.wh.NAME` deletes `DIR/NAME`, and everything under it, from the *lower* layers;
//! - `DIR/.wh..wh..opq` makes `DIR` opaque: its lower contents are gone, this layer's stay;
//! - any other entry replaces what the lower layers had at its path (a file replacing a
//!   directory takes the whole subtree with it), except that a directory over a directory
//!   merges: its metadata is updated and the lower children stay.
//!
//! Because whiteouts "MUST only apply to resources in lower/parent layers", a layer is read
//! whole first (metadata kept, file contents spooled) and applied in two steps: its whiteouts
//! and opaque markers against the lower tree, then its entries in archive order. So the order of
//! entries inside a layer does not matter for whiteouts, and a stream that turns out truncated,
//! or names a path outside the root, leaves the tree as it was.
//!
//! Paths are normalised as tar tools do (leading `/` and `./` stripped), and a `..` that would
//! climb above the root is refused ([`FlattenError::Escapes`]). Symlinks met in the *parent* of
//! an entry's path are followed inside the root, the way containerd applies layers
//! (`fs.RootPath`): an absolute target starts again at the root and `..` stops at the root. So
//! `etc -> /` followed by `etc/passwd` writes `/passwd`; nothing ever leaves the tree, because
//! the tree is all there is. The last component of an entry is never followed: an entry over a
//! symlink replaces the symlink.
//!
//! Memory holds metadata only: file contents go to one anonymous spool file in a directory the
//! caller chooses (a replaced file leaves its bytes there as garbage). Everything a hostile
//! layer could grow is bounded by [`Limits`].
use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::FileExt as _;
use std::path::Path;

use tar::EntryType;

mod archive;

use archive::Spool;
pub(crate) use archive::xattr_index;

/// The longest name of one path component: Linux's `NAME_MAX`, which is also erofs's
/// `EROFS_NAME_LEN`.
pub const MAX_NAME_BYTES: usize = 255;
/// The longest symlink target: Linux's `PATH_MAX` less its terminating NUL.
pub const MAX_SYMLINK_BYTES: usize = 4095;
/// The longest xattr name, prefix included (Linux's `XATTR_NAME_MAX`).
pub const MAX_XATTR_NAME_BYTES: usize = 255;
/// Symlinks followed while resolving one path (Linux's `MAXSYMLINKS`).
pub const MAX_SYMLINK_FOLLOWS: usize = 40;

/// Bounds on what a layer can make the flattener hold. Each default is written for real images
/// with a wide margin, and small enough that a hostile layer fails fast.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Tar members over all layers, extension headers included. 2 million: a full Debian
    /// desktop is about 300,000 files; metadata is about 200 bytes a member.
    pub max_entries: u64,
    /// Bytes of one entry's path (and hard link target) before normalisation: Linux's
    /// `PATH_MAX`, 4096.
    pub max_path_bytes: usize,
    /// Components in the path of any entry, as placed (symlinks in its parents followed):
    /// 1,024, far deeper than any root, and a bound on what walking the tree costs.
    pub max_depth: usize,
    /// One entry's xattrs, names and values together: 64 KiB, Linux's largest single value
    /// (`XATTR_SIZE_MAX`), far more than `security.capability` (20 bytes) or an ACL needs.
    pub max_xattr_bytes: usize,
    /// One PAX extended header: 1 MiB, enough for the xattrs above and long paths.
    pub max_pax_bytes: u64,
    /// File contents spooled over all layers (replaced files included): 64 GiB, beyond any
    /// root a machine boots from RAM; also the bound on a decompression bomb.
    pub max_spool_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_entries: 2_000_000,
            max_path_bytes: 4096,
            max_depth: 1024,
            max_xattr_bytes: 64 << 10,
            max_pax_bytes: 1 << 20,
            max_spool_bytes: 64 << 30,
        }
    }
}

/// Why a layer could not be applied. Every variant names the layer, and the entry where there
/// is one, so an operator can find the culprit in the image.
#[derive(Debug, thiserror::Error)]
pub enum FlattenError {
    #[error("layer {layer}: entry {entry:?} escapes the root")]
    Escapes { layer: String, entry: String },
    #[error("layer {layer}: the tar stream ends before its end-of-archive marker")]
    Truncated { layer: String },
    #[error("layer {layer}: hard link {entry:?}: its target {target:?} is not in the tree")]
    LinkTargetMissing {
        layer: String,
        entry: String,
        target: String,
    },
    #[error("layer {layer}: hard link {entry:?}: its target {target:?} is a directory")]
    LinkToDirectory {
        layer: String,
        entry: String,
        target: String,
    },
    #[error("layer {layer}: entry {entry:?}: a component of its path is not a directory")]
    NotADirectory { layer: String, entry: String },
    #[error("layer {layer}: entry {entry:?}: more than {MAX_SYMLINK_FOLLOWS} symlinks in its path")]
    SymlinkLoop { layer: String, entry: String },
    #[error("layer {layer}: entry {entry:?}: {what} is over the limit of {limit}")]
    TooLarge {
        layer: String,
        entry: String,
        what: &'static str,
        limit: u64,
    },
    #[error("layer {layer}: more than {limit} tar members in the image")]
    TooManyEntries { layer: String, limit: u64 },
    #[error("layer {layer}: entry {entry:?}: {reason}")]
    Malformed {
        layer: String,
        entry: String,
        reason: &'static str,
    },
    #[error("layer {layer}: entry {entry:?}: {reason}")]
    Unsupported {
        layer: String,
        entry: String,
        reason: &'static str,
    },
    #[error("layer {layer}: reading the tar stream")]
    Tar {
        layer: String,
        #[source]
        source: io::Error,
    },
    #[error("layer {layer}: writing the content spool")]
    Spool {
        layer: String,
        #[source]
        source: io::Error,
    },
}

/// What one layer did to the tree.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LayerStats {
    /// Tar members that became (or replaced) tree entries.
    pub entries: u64,
    /// Bytes of file content spooled.
    pub bytes: u64,
    /// `.wh.NAME` markers (whether or not a lower entry was there to delete).
    pub whiteouts: u64,
    /// `.wh..wh..opq` markers.
    pub opaques: u64,
    /// Hard link members.
    pub hard_links: u64,
    /// Xattrs in namespaces a Linux root cannot carry in erofs (anything but `user.`,
    /// `trusted.`, `security.` and the two POSIX ACLs), dropped.
    pub xattrs_dropped: u64,
    /// Members with no place in a root: tar volume labels and unknown types, AUFS metadata
    /// (`.wh..wh.*` other than the opaque marker), whiteouts of `.` or `..`.
    pub skipped: u64,
}

/// The kind of a tree entry, with what only that kind has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
    Symlink { target: String },
    CharDevice { major: u32, minor: u32 },
    BlockDevice { major: u32, minor: u32 },
    Fifo,
}

/// One entry of the tree as callers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryInfo {
    pub kind: EntryKind,
    /// Permission bits with setuid, setgid and sticky (`0o7777`), without the type.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Content bytes of a file, target bytes of a symlink, 0 otherwise.
    pub size: u64,
    pub mtime: i64,
    /// Names of a file (hard links); `2 + subdirectories` for a directory, as in stat(2).
    pub nlink: u32,
    /// The entry's identity in this tree: equal for the names of one hard-linked file.
    pub inode: u64,
    /// Xattrs by full name (`security.capability`), sorted by name.
    pub xattrs: Vec<(String, Vec<u8>)>,
}

pub(crate) type NodeId = usize;
pub(crate) const ROOT: NodeId = 0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Meta {
    /// `0o7777` bits.
    pub(crate) mode: u16,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) mtime: i64,
    pub(crate) mtime_nsec: u32,
}

impl Meta {
    /// What a directory made implicitly (a member's missing parent) gets, as tar tools give it.
    const IMPLICIT_DIR: Meta = Meta {
        mode: 0o755,
        uid: 0,
        gid: 0,
        mtime: 0,
        mtime_nsec: 0,
    };
}

#[derive(Debug)]
pub(crate) enum NodeKind {
    /// Content at `offset..offset + len` in the spool.
    File {
        offset: u64,
        len: u64,
    },
    /// Children sorted by name bytes: the order erofs wants and a deterministic walk.
    Dir(BTreeMap<Box<[u8]>, NodeId>),
    Symlink(Box<[u8]>),
    CharDevice {
        major: u32,
        minor: u32,
    },
    BlockDevice {
        major: u32,
        minor: u32,
    },
    Fifo,
}

#[derive(Debug)]
pub(crate) struct Node {
    pub(crate) kind: NodeKind,
    pub(crate) meta: Meta,
    /// Sorted by name, names unique.
    pub(crate) xattrs: Vec<(Box<str>, Box<[u8]>)>,
    /// Names in the tree that refer to this node; 0 once unlinked (the arena keeps it as
    /// garbage, bounded by [`Limits::max_entries`]).
    pub(crate) names: u32,
}

/// The flattened file tree of an image. See the module documentation for the rules.
///
/// After an error from [`Tree::apply_layer`] found while reading the stream (truncation, an
/// escaping path, a limit) the tree is as it was; an error found while applying (a hard link
/// to nothing, a file used as a directory) leaves it partly changed, and it should be dropped.
#[derive(Debug)]
pub struct Tree {
    nodes: Vec<Node>,
    spool: Spool,
    limits: Limits,
    members_seen: u64,
}

/// A layer member read and normalised, waiting for the layer's whiteouts to be applied.
#[derive(Debug)]
struct Staged {
    path: Vec<Box<[u8]>>,
    /// The path as the archive spells it, for errors.
    name: String,
    what: StagedKind,
    meta: Meta,
    xattrs: Vec<(Box<str>, Box<[u8]>)>,
}

#[derive(Debug)]
enum StagedKind {
    Node(NodeKind),
    HardLink {
        target: Vec<Box<[u8]>>,
        target_name: String,
    },
}

#[derive(Debug)]
enum Removal {
    /// Delete `dir/name` from the lower layers.
    Whiteout {
        dir: Vec<Box<[u8]>>,
        name: Box<[u8]>,
    },
    /// Empty the lower directory at this path.
    Opaque(Vec<Box<[u8]>>),
}

/// Why a walk through the tree stopped.
#[derive(Debug)]
enum WalkError {
    /// `name` is not in directory `dir`, which sits at depth `depth` (the root is 1).
    Missing {
        dir: NodeId,
        name: Box<[u8]>,
        depth: usize,
    },
    NotADirectory,
    Loop,
    /// A missing directory would be made deeper than [`Limits::max_depth`].
    TooDeep,
}

/// A walk's result: the nodes from the root to the one the path names, and their names.
#[derive(Debug)]
struct Walked {
    nodes: Vec<NodeId>,
    names: Vec<Box<[u8]>>,
}

impl Walked {
    fn last(&self) -> NodeId {
        *self.nodes.last().expect("a walk starts at the root")
    }
}

impl Tree {
    /// An empty tree (a root directory owned by root, mode 0755) spooling file contents to an
    /// anonymous file in `spool_dir`.
    pub fn new(spool_dir: &Path) -> io::Result<Tree> {
        Self::with_limits(spool_dir, Limits::default())
    }

    pub fn with_limits(spool_dir: &Path, limits: Limits) -> io::Result<Tree> {
        let spool = tempfile::tempfile_in(spool_dir)?;
        Ok(Tree {
            nodes: vec![Node {
                kind: NodeKind::Dir(BTreeMap::new()),
                meta: Meta::IMPLICIT_DIR,
                xattrs: Vec::new(),
                names: 1,
            }],
            spool: Spool {
                out: BufWriter::with_capacity(1 << 20, spool),
                written: 0,
            },
            limits,
            members_seen: 0,
        })
    }

    /// Applies one uncompressed layer tar stream (see [`crate::layer::decompressed`]) on top of
    /// the tree. `layer_name` (a digest, say) only names the layer in errors.
    pub fn apply_layer(
        &mut self,
        layer_name: &str,
        tar: impl Read,
    ) -> Result<LayerStats, FlattenError> {
        let mut stats = LayerStats::default();
        let (staged, removals) = self.read_layer(layer_name, tar, &mut stats)?;
        self.spool.flush().map_err(|source| FlattenError::Spool {
            layer: layer_name.to_owned(),
            source,
        })?;
        for removal in &removals {
            self.remove_lower(removal);
        }
        for entry in staged {
            self.apply_entry(layer_name, entry, &mut stats)?;
        }
        Ok(stats)
    }

    /// The entry at `path` (absolute or relative to the root), looked up literally: no
    /// symlink is followed, `..` finds nothing. Use [`Tree::resolve`] first to follow links.
    pub fn entry(&self, path: &str) -> Option<EntryInfo> {
        let id = self.lookup(path)?;
        let node = self.node(id);
        let (kind, size, nlink) = match &node.kind {
            NodeKind::File { len, .. } => (EntryKind::File, *len, node.names),
            NodeKind::Dir(children) => {
                let subdirs = children
                    .values()
                    .filter(|&&c| matches!(self.nodes[c].kind, NodeKind::Dir(_)))
                    .count();
                (
                    EntryKind::Dir,
                    0,
                    2 + u32::try_from(subdirs).unwrap_or(u32::MAX - 2),
                )
            }
            NodeKind::Symlink(target) => (
                EntryKind::Symlink {
                    target: String::from_utf8_lossy(target).into_owned(),
                },
                target.len() as u64,
                node.names,
            ),
            NodeKind::CharDevice { major, minor } => (
                EntryKind::CharDevice {
                    major: *major,
                    minor: *minor,
                },
                0,
                node.names,
            ),
            NodeKind::BlockDevice { major, minor } => (
                EntryKind::BlockDevice {
                    major: *major,
                    minor: *minor,
                },
                0,
                node.names,
            ),
            NodeKind::Fifo => (EntryKind::Fifo, 0, node.names),
        };
        Some(EntryInfo {
            kind,
            mode: u32::from(node.meta.mode),
            uid: node.meta.uid,
            gid: node.meta.gid,
            size,
            mtime: node.meta.mtime,
            nlink,
            inode: id as u64,
            xattrs: node
                .xattrs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_vec()))
                .collect(),
        })
    }

    /// The content of the regular file at `path` (looked up as [`Tree::entry`] does); `None`
    /// when there is no regular file there.
    pub fn read_file(&self, path: &str) -> Option<io::Result<Vec<u8>>> {
        let id = self.lookup(path)?;
        let NodeKind::File { offset, len } = self.nodes[id].kind else {
            return None;
        };
        let Ok(len) = usize::try_from(len) else {
            return Some(Err(io::Error::other("file larger than memory")));
        };
        let mut buf = Vec::with_capacity(len);
        Some(
            self.copy_content(offset, len as u64, &mut buf)
                .map(|()| buf),
        )
    }

    /// The names in the directory at `path` (looked up as [`Tree::entry`] does), sorted by
    /// their bytes, without `.` and `..`. Names that are not UTF-8 are given lossily.
    pub fn list_dir(&self, path: &str) -> Option<Vec<String>> {
        let id = self.lookup(path)?;
        let NodeKind::Dir(children) = &self.nodes[id].kind else {
            return None;
        };
        Some(
            children
                .keys()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .collect(),
        )
    }

    /// The path `path` names once every symlink in it is followed inside the root (absolute
    /// targets start at the root, `..` stops at the root, at most [`MAX_SYMLINK_FOLLOWS`]),
    /// as an absolute path with no symlink in it. `None` if it names nothing or loops.
    ///
    /// This is how the appliance finds `/sbin/init` or `/lib/modules` in a merged-/usr root.
    pub fn resolve(&self, path: &str) -> Option<String> {
        let comps: Vec<Box<[u8]>> = path
            .split('/')
            .filter(|c| !c.is_empty())
            .map(|c| c.as_bytes().into())
            .collect();
        let walked = self.walk(&comps, true).ok()?;
        let mut out = String::new();
        for name in &walked.names {
            out.push('/');
            out.push_str(&String::from_utf8_lossy(name));
        }
        if out.is_empty() {
            out.push('/');
        }
        Some(out)
    }

    /// The arena's size: every node id is below it (unlinked nodes included).
    pub(crate) fn node_count(&self) -> usize {
        self.nodes.len()
    }

    pub(crate) fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id]
    }

    /// Copies `len` bytes of spooled content from `offset` to `out`.
    pub(crate) fn copy_content(
        &self,
        offset: u64,
        len: u64,
        out: &mut impl Write,
    ) -> io::Result<()> {
        let mut buf = vec![0u8; 256 << 10];
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(buf.len() as u64) as usize;
            self.spool
                .out
                .get_ref()
                .read_exact_at(&mut buf[..n], offset + done)?;
            out.write_all(&buf[..n])?;
            done += n as u64;
        }
        Ok(())
    }

    fn lookup(&self, path: &str) -> Option<NodeId> {
        let mut id = ROOT;
        for comp in path.split('/').filter(|c| !c.is_empty() && *c != ".") {
            let NodeKind::Dir(children) = &self.nodes[id].kind else {
                return None;
            };
            id = *children.get(comp.as_bytes())?;
        }
        Some(id)
    }

    /// Walks `comps` from the root. Symlinks before the last component are followed (inside
    /// the root); the last one only if `follow_last`.
    fn walk(&self, comps: &[Box<[u8]>], follow_last: bool) -> Result<Walked, WalkError> {
        let mut walked = Walked {
            nodes: vec![ROOT],
            names: Vec::new(),
        };
        let mut pending: VecDeque<Box<[u8]>> = comps.iter().cloned().collect();
        let mut follows = 0;
        while let Some(comp) = pending.pop_front() {
            match &*comp {
                b"" | b"." => continue,
                b".." => {
                    // `..` at the root stays at the root, as in a chroot.
                    if walked.nodes.len() > 1 {
                        walked.nodes.pop();
                        walked.names.pop();
                    }
                    continue;
                }
                _ => {}
            }
            let dir = walked.last();
            let NodeKind::Dir(children) = &self.nodes[dir].kind else {
                return Err(WalkError::NotADirectory);
            };
            let Some(&child) = children.get(&comp) else {
                return Err(WalkError::Missing {
                    dir,
                    name: comp,
                    depth: walked.nodes.len(),
                });
            };
            let last = pending.is_empty();
            match &self.nodes[child].kind {
                NodeKind::Symlink(target) if !last || follow_last => {
                    follows += 1;
                    if follows > MAX_SYMLINK_FOLLOWS {
                        return Err(WalkError::Loop);
                    }
                    if target.starts_with(b"/") {
                        walked.nodes.truncate(1);
                        walked.names.clear();
                    }
                    for part in target.split(|&b| b == b'/').rev() {
                        pending.push_front(part.into());
                    }
                }
                NodeKind::Dir(_) => {
                    walked.nodes.push(child);
                    walked.names.push(comp);
                }
                _ if last => {
                    walked.nodes.push(child);
                    walked.names.push(comp);
                }
                _ => return Err(WalkError::NotADirectory),
            }
        }
        Ok(walked)
    }

    /// The directory `comps` names, following symlinks and creating missing directories (as
    /// tar tools create a member's missing parents). Returns it with its depth.
    fn walk_creating(&mut self, comps: &[Box<[u8]>]) -> Result<(NodeId, usize), WalkError> {
        loop {
            match self.walk(comps, true) {
                Ok(walked) => {
                    let id = walked.last();
                    return match self.nodes[id].kind {
                        NodeKind::Dir(_) => Ok((id, walked.nodes.len())),
                        _ => Err(WalkError::NotADirectory),
                    };
                }
                // Each round makes one directory, so this ends within the path's length
                // (symlink expansions included, themselves bounded).
                Err(WalkError::Missing { dir, name, depth }) => {
                    if depth > self.limits.max_depth {
                        return Err(WalkError::TooDeep);
                    }
                    let id = self.push_node(
                        NodeKind::Dir(BTreeMap::new()),
                        Meta::IMPLICIT_DIR,
                        Vec::new(),
                    );
                    self.insert(dir, name, id);
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn push_node(
        &mut self,
        kind: NodeKind,
        meta: Meta,
        xattrs: Vec<(Box<str>, Box<[u8]>)>,
    ) -> NodeId {
        self.nodes.push(Node {
            kind,
            meta,
            xattrs,
            names: 0,
        });
        self.nodes.len() - 1
    }

    /// Puts `id` under `name` in `dir`, unlinking what was there.
    fn insert(&mut self, dir: NodeId, name: Box<[u8]>, id: NodeId) {
        self.nodes[id].names += 1;
        let NodeKind::Dir(children) = &mut self.nodes[dir].kind else {
            unreachable!("insert into a directory only");
        };
        if let Some(old) = children.insert(name, id) {
            self.release(old);
        }
    }

    fn unlink(&mut self, dir: NodeId, name: &[u8]) {
        let NodeKind::Dir(children) = &mut self.nodes[dir].kind else {
            return;
        };
        if let Some(old) = children.remove(name) {
            self.release(old);
        }
    }

    /// Drops one name of `id`; a directory losing its only name releases its subtree. An
    /// explicit stack: a hostile tree may be deep.
    fn release(&mut self, id: NodeId) {
        let mut work = vec![id];
        while let Some(id) = work.pop() {
            let node = &mut self.nodes[id];
            node.names = node.names.saturating_sub(1);
            if node.names == 0
                && let NodeKind::Dir(children) = &mut node.kind
            {
                work.extend(std::mem::take(children).into_values());
            }
        }
    }

    fn remove_lower(&mut self, removal: &Removal) {
        match removal {
            Removal::Whiteout { dir, name } => {
                // A whiteout under a path that is not a directory in the lower tree has
                // nothing to delete.
                if let Ok(walked) = self.walk(dir, true) {
                    self.unlink(walked.last(), name);
                }
            }
            Removal::Opaque(dir) => {
                let Some((name, parent)) = dir.split_last() else {
                    let root = std::mem::replace(
                        &mut self.nodes[ROOT].kind,
                        NodeKind::Dir(BTreeMap::new()),
                    );
                    if let NodeKind::Dir(children) = root {
                        children.into_values().for_each(|c| self.release(c));
                    }
                    return;
                };
                let Ok(walked) = self.walk(parent, true) else {
                    return;
                };
                let parent = walked.last();
                let NodeKind::Dir(children) = &self.nodes[parent].kind else {
                    return;
                };
                let Some(&id) = children.get(name) else {
                    return;
                };
                if let NodeKind::Dir(children) = &mut self.nodes[id].kind {
                    let lower = std::mem::take(children);
                    lower.into_values().for_each(|c| self.release(c));
                } else {
                    // A lower non-directory where this layer has an opaque directory: the
                    // lower thing is hidden all the same.
                    self.unlink(parent, name);
                }
            }
        }
    }

    fn apply_entry(
        &mut self,
        layer: &str,
        entry: Staged,
        stats: &mut LayerStats,
    ) -> Result<(), FlattenError> {
        let max_depth = self.limits.max_depth as u64;
        let walk_error = |e: WalkError, name: &str| match e {
            WalkError::NotADirectory | WalkError::Missing { .. } => FlattenError::NotADirectory {
                layer: layer.to_owned(),
                entry: name.to_owned(),
            },
            WalkError::Loop => FlattenError::SymlinkLoop {
                layer: layer.to_owned(),
                entry: name.to_owned(),
            },
            WalkError::TooDeep => FlattenError::TooLarge {
                layer: layer.to_owned(),
                entry: name.to_owned(),
                what: "directory depth",
                limit: max_depth,
            },
        };
        let Some((last, parent)) = entry.path.split_last() else {
            // The archive's root (`./`): only a directory can be the root.
            return match entry.what {
                StagedKind::Node(NodeKind::Dir(_)) => {
                    self.nodes[ROOT].meta = entry.meta;
                    self.nodes[ROOT].xattrs = entry.xattrs;
                    stats.entries += 1;
                    Ok(())
                }
                _ => Err(FlattenError::Malformed {
                    layer: layer.to_owned(),
                    entry: entry.name,
                    reason: "the archive root is not a directory",
                }),
            };
        };
        let (dir, depth) = self
            .walk_creating(parent)
            .map_err(|e| walk_error(e, &entry.name))?;
        if depth > self.limits.max_depth {
            return Err(FlattenError::TooLarge {
                layer: layer.to_owned(),
                entry: entry.name,
                what: "directory depth",
                limit: self.limits.max_depth as u64,
            });
        }
        let NodeKind::Dir(children) = &self.nodes[dir].kind else {
            unreachable!("walk_creating returns directories");
        };
        let existing = children.get(last).copied();
        stats.entries += 1;
        match entry.what {
            StagedKind::HardLink {
                target,
                target_name,
            } => {
                stats.hard_links += 1;
                let missing = || FlattenError::LinkTargetMissing {
                    layer: layer.to_owned(),
                    entry: entry.name.clone(),
                    target: target_name.clone(),
                };
                // The link's own last component is not followed: a hard link to a symlink
                // links the symlink, as link(2) does.
                let walked = self.walk(&target, false).map_err(|e| match e {
                    WalkError::Missing { .. } | WalkError::NotADirectory => missing(),
                    WalkError::Loop | WalkError::TooDeep => walk_error(e, &entry.name),
                })?;
                if walked.names.is_empty() {
                    return Err(missing());
                }
                let id = walked.last();
                if matches!(self.nodes[id].kind, NodeKind::Dir(_)) {
                    return Err(FlattenError::LinkToDirectory {
                        layer: layer.to_owned(),
                        entry: entry.name,
                        target: target_name,
                    });
                }
                if existing != Some(id) {
                    self.insert(dir, last.clone(), id);
                }
            }
            StagedKind::Node(NodeKind::Dir(_)) => match existing {
                // A directory over a directory merges (overlayfs semantics), unless an opaque
                // marker emptied it first.
                Some(id) if matches!(self.nodes[id].kind, NodeKind::Dir(_)) => {
                    self.nodes[id].meta = entry.meta;
                    self.nodes[id].xattrs = entry.xattrs;
                }
                _ => {
                    let id =
                        self.push_node(NodeKind::Dir(BTreeMap::new()), entry.meta, entry.xattrs);
                    self.insert(dir, last.clone(), id);
                }
            },
            StagedKind::Node(kind) => {
                let id = self.push_node(kind, entry.meta, entry.xattrs);
                self.insert(dir, last.clone(), id);
            }
        }
        Ok(())
    }
}

/// Layer tars written byte by byte, so tests can say anything a hostile layer can (the tar
/// crate's builder refuses `..` and would hide what a test means to show).
#[cfg(test)]
pub(crate) mod fixture {
    use tar::{EntryType, Header};

    /// One member; build with the constructors and adjust fields.
    #[derive(Debug, Clone)]
    pub(crate) struct Member {
        pub(crate) ty: EntryType,
        pub(crate) name: Vec<u8>,
        pub(crate) link: Vec<u8>,
        pub(crate) mode: u32,
        pub(crate) uid: u64,
        pub(crate) gid: u64,
        pub(crate) mtime: u64,
        pub(crate) data: Vec<u8>,
        pub(crate) dev: (u32, u32),
        pub(crate) pax: Vec<(String, Vec<u8>)>,
    }

    impl Member {
        fn new(ty: EntryType, name: &str, mode: u32) -> Self {
            Member {
                ty,
                name: name.as_bytes().to_vec(),
                link: Vec::new(),
                mode,
                uid: 0,
                gid: 0,
                mtime: 1_700_000_000,
                data: Vec::new(),
                dev: (0, 0),
                pax: Vec::new(),
            }
        }
        pub(crate) fn file(name: &str, data: &[u8]) -> Self {
            Member {
                data: data.to_vec(),
                ..Self::new(EntryType::Regular, name, 0o644)
            }
        }
        pub(crate) fn dir(name: &str) -> Self {
            Self::new(EntryType::Directory, name, 0o755)
        }
        pub(crate) fn symlink(name: &str, target: &str) -> Self {
            Member {
                link: target.as_bytes().to_vec(),
                ..Self::new(EntryType::Symlink, name, 0o777)
            }
        }
        pub(crate) fn hardlink(name: &str, target: &str) -> Self {
            Member {
                link: target.as_bytes().to_vec(),
                ..Self::new(EntryType::Link, name, 0o644)
            }
        }
        pub(crate) fn device(ty: EntryType, name: &str, major: u32, minor: u32) -> Self {
            Member {
                dev: (major, minor),
                ..Self::new(ty, name, 0o660)
            }
        }
        pub(crate) fn fifo(name: &str) -> Self {
            Self::new(EntryType::Fifo, name, 0o600)
        }
        pub(crate) fn whiteout(dir: &str, name: &str) -> Self {
            let path = if dir.is_empty() {
                format!(".wh.{name}")
            } else {
                format!("{dir}/.wh.{name}")
            };
            Self::file(&path, b"")
        }
        pub(crate) fn opaque(dir: &str) -> Self {
            Self::file(&format!("{dir}/.wh..wh..opq"), b"")
        }
        pub(crate) fn owner(mut self, uid: u64, gid: u64) -> Self {
            self.uid = uid;
            self.gid = gid;
            self
        }
        pub(crate) fn mode(mut self, mode: u32) -> Self {
            self.mode = mode;
            self
        }
        pub(crate) fn xattr(mut self, name: &str, value: &[u8]) -> Self {
            self.pax
                .push((format!("SCHILY.xattr.{name}"), value.to_vec()));
            self
        }
    }

    /// A PAX record: its length counts its own digits.
    fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
        let body = key.len() + value.len() + 3; // ' ', '=', '\n'
        let mut len = body + 1;
        while len != body + len.to_string().len() {
            len = body + len.to_string().len();
        }
        let mut r = format!("{len} {key}=").into_bytes();
        r.extend_from_slice(value);
        r.push(b'\n');
        r
    }

    fn push_block(out: &mut Vec<u8>, header: &Header, data: &[u8]) {
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().next_multiple_of(512), 0);
    }

    /// One layer's tar stream, end-of-archive blocks included.
    pub(crate) fn layer(members: &[Member]) -> Vec<u8> {
        let mut out = Vec::new();
        for m in members {
            let mut pax: Vec<u8> = Vec::new();
            for (k, v) in &m.pax {
                pax.extend(pax_record(k, v));
            }
            if m.name.len() > 100 {
                pax.extend(pax_record("path", &m.name));
            }
            if m.link.len() > 100 {
                pax.extend(pax_record("linkpath", &m.link));
            }
            if !pax.is_empty() {
                let mut h = Header::new_ustar();
                h.as_ustar_mut().expect("ustar").name[..13].copy_from_slice(b"././@PaxHeadr");
                h.set_entry_type(EntryType::XHeader);
                h.set_size(pax.len() as u64);
                h.set_mode(0o644);
                h.set_cksum();
                push_block(&mut out, &h, &pax);
            }
            let mut h = Header::new_ustar();
            {
                let ustar = h.as_ustar_mut().expect("ustar");
                let n = m.name.len().min(100);
                ustar.name[..n].copy_from_slice(&m.name[..n]);
                let n = m.link.len().min(100);
                ustar.linkname[..n].copy_from_slice(&m.link[..n]);
            }
            h.set_entry_type(m.ty);
            h.set_size(m.data.len() as u64);
            h.set_mode(m.mode);
            h.set_uid(m.uid);
            h.set_gid(m.gid);
            h.set_mtime(m.mtime);
            h.set_device_major(m.dev.0).expect("ustar");
            h.set_device_minor(m.dev.1).expect("ustar");
            h.set_cksum();
            push_block(&mut out, &h, &m.data);
        }
        out.extend_from_slice(&[0; 1024]);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::archive::{parse_pax, parse_pax_time};
    use super::fixture::{Member, layer};
    use super::*;

    fn tree() -> (tempfile::TempDir, Tree) {
        let dir = tempfile::tempdir().expect("spool dir");
        let tree = Tree::new(dir.path()).expect("tree");
        (dir, tree)
    }

    fn apply(tree: &mut Tree, name: &str, members: &[Member]) -> LayerStats {
        tree.apply_layer(name, &layer(members)[..])
            .unwrap_or_else(|e| panic!("layer {name}: {e}"))
    }

    fn refuse(tree: &mut Tree, name: &str, members: &[Member]) -> FlattenError {
        match tree.apply_layer(name, &layer(members)[..]) {
            Ok(stats) => panic!("layer {name} was accepted: {stats:?}"),
            Err(e) => e,
        }
    }

    fn content(tree: &Tree, path: &str) -> Vec<u8> {
        tree.read_file(path)
            .unwrap_or_else(|| panic!("{path} is not a file"))
            .expect("spool read")
    }

    #[test]
    fn keeps_kinds_owners_modes_and_xattrs() {
        let (_d, mut t) = tree();
        let cap = [
            0x01, 0x00, 0x00, 0x02, 0x00, 0x20, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        let stats = apply(
            &mut t,
            "base",
            &[
                Member::dir("./").mode(0o755),
                Member::dir("./usr/bin/"),
                Member::file("./usr/bin/ping", b"\x7fELF")
                    .mode(0o4755)
                    .owner(0, 0)
                    .xattr("security.capability", &cap),
                Member::dir("tmp").mode(0o1777),
                Member::file("/home/u/notes", b"hello")
                    .owner(1000, 1000)
                    .mode(0o600)
                    .xattr("user.k", b"v\n=\0x")
                    .xattr("lustre.x", b"y"),
                Member::symlink("bin", "usr/bin"),
                Member::device(EntryType::Char, "dev/null", 1, 3),
                Member::device(EntryType::Block, "dev/sda", 8, 0),
                Member::fifo("run/initctl"),
            ],
        );
        assert_eq!(stats.entries, 9);
        assert_eq!(stats.bytes, 9);
        assert_eq!(stats.xattrs_dropped, 1, "lustre.x has no erofs index");

        let ping = t.entry("/usr/bin/ping").expect("ping");
        assert_eq!(
            (ping.kind, ping.mode, ping.size),
            (EntryKind::File, 0o4755, 4)
        );
        assert_eq!(
            ping.xattrs,
            vec![("security.capability".to_owned(), cap.to_vec())]
        );
        assert_eq!(t.entry("tmp").expect("tmp").mode, 0o1777);
        let notes = t.entry("home/u/notes").expect("notes");
        assert_eq!(
            (notes.uid, notes.gid, notes.mode, notes.mtime),
            (1000, 1000, 0o600, 1_700_000_000)
        );
        assert_eq!(
            notes.xattrs,
            vec![("user.k".to_owned(), b"v\n=\0x".to_vec())]
        );
        assert_eq!(content(&t, "home/u/notes"), b"hello");
        // The implicit parent of a member gets tar's defaults.
        let home = t.entry("home").expect("implicit home");
        assert_eq!((home.kind, home.mode, home.uid), (EntryKind::Dir, 0o755, 0));
        assert_eq!(
            t.entry("bin").expect("bin").kind,
            EntryKind::Symlink {
                target: "usr/bin".into()
            }
        );
        assert_eq!(
            t.entry("dev/null").expect("null").kind,
            EntryKind::CharDevice { major: 1, minor: 3 }
        );
        assert_eq!(
            t.entry("dev/sda").expect("sda").kind,
            EntryKind::BlockDevice { major: 8, minor: 0 }
        );
        assert_eq!(t.entry("run/initctl").expect("fifo").kind, EntryKind::Fifo);
        assert_eq!(
            t.list_dir("/").expect("root"),
            ["bin", "dev", "home", "run", "tmp", "usr"]
        );
        assert_eq!(t.entry("/").expect("root").nlink, 2 + 5);
    }

    #[test]
    fn whiteout_deletes_lower_entry_and_its_subtree() {
        let (_d, mut t) = tree();
        apply(
            &mut t,
            "l1",
            &[
                Member::file("etc/keep", b"k"),
                Member::file("etc/gone", b"g"),
                Member::file("var/cache/apt/a", b"a"),
                Member::file("var/cache/apt/sub/b", b"b"),
            ],
        );
        let stats = apply(
            &mut t,
            "l2",
            &[
                Member::whiteout("etc", "gone"),
                Member::whiteout("var/cache", "apt"),
                Member::whiteout("nowhere", "x"),
            ],
        );
        assert_eq!(stats.whiteouts, 3);
        assert!(t.entry("etc/gone").is_none());
        assert!(t.entry("var/cache/apt").is_none());
        assert!(t.entry("var/cache/apt/sub/b").is_none());
        assert_eq!(
            t.list_dir("var/cache").expect("cache"),
            Vec::<String>::new()
        );
        assert_eq!(content(&t, "etc/keep"), b"k");
        assert!(t.entry("nowhere").is_none(), "a whiteout creates nothing");
    }

    #[test]
    fn whiteout_spares_its_own_layer_in_any_order() {
        let (_d, mut t) = tree();
        apply(
            &mut t,
            "l1",
            &[Member::file("a/f", b"old"), Member::file("a/g", b"old")],
        );
        // The new `f` comes before its whiteout in the archive: the whiteout still only
        // hides the lower `f`.
        apply(
            &mut t,
            "l2",
            &[
                Member::file("a/f", b"new"),
                Member::whiteout("a", "f"),
                Member::whiteout("a", "g"),
            ],
        );
        assert_eq!(content(&t, "a/f"), b"new");
        assert!(t.entry("a/g").is_none());
    }

    #[test]
    fn opaque_directory_hides_lower_keeps_own_in_any_order() {
        let (_d, mut t) = tree();
        apply(
            &mut t,
            "l1",
            &[
                Member::file("opt/app/old1", b"1"),
                Member::file("opt/app/deep/old2", b"2"),
                Member::file("opt/other", b"o"),
            ],
        );
        let stats = apply(
            &mut t,
            "l2",
            &[
                Member::dir("opt/app").mode(0o700),
                Member::file("opt/app/new", b"n"),
                // The marker after this layer's own entry.
                Member::opaque("opt/app"),
            ],
        );
        assert_eq!(stats.opaques, 1);
        assert_eq!(t.list_dir("opt/app").expect("app"), ["new"]);
        assert_eq!(t.entry("opt/app").expect("app").mode, 0o700);
        assert_eq!(content(&t, "opt/other"), b"o");
    }

    #[test]
    fn later_entries_replace_files_dirs_and_symlinks() {
        let (_d, mut t) = tree();
        apply(
            &mut t,
            "l1",
            &[
                Member::file("x/inner", b"i"),
                Member::file("y", b"file"),
                Member::symlink("z", "/x"),
                Member::dir("w").mode(0o700),
                Member::file("w/kept", b"k"),
            ],
        );
        apply(
            &mut t,
            "l2",
            &[
                Member::file("x", b"now a file"),
                Member::dir("y"),
                Member::dir("z"),
                Member::dir("w").mode(0o750),
            ],
        );
        assert_eq!(content(&t, "x"), b"now a file");
        assert_eq!(t.entry("y").expect("y").kind, EntryKind::Dir);
        assert_eq!(
            t.entry("z").expect("z").kind,
            EntryKind::Dir,
            "a dir over a symlink replaces it"
        );
        assert_eq!(
            t.list_dir("z").expect("z"),
            Vec::<String>::new(),
            "not /x's contents"
        );
        // A directory over a directory merges.
        assert_eq!(t.entry("w").expect("w").mode, 0o750);
        assert_eq!(content(&t, "w/kept"), b"k");
        // Within one layer too, the last member wins.
        apply(
            &mut t,
            "l3",
            &[Member::file("v", b"1"), Member::file("v", b"2")],
        );
        assert_eq!(content(&t, "v"), b"2");
    }

    #[test]
    fn hard_links_share_an_inode() {
        let (_d, mut t) = tree();
        let stats = apply(
            &mut t,
            "l1",
            &[
                Member::file("usr/bin/perl5.36", b"perl").mode(0o755),
                Member::hardlink("usr/bin/perl", "usr/bin/perl5.36"),
                Member::hardlink("/usr/bin/perl-again", "./usr/bin/perl"),
            ],
        );
        assert_eq!(stats.hard_links, 2);
        let a = t.entry("usr/bin/perl5.36").expect("a");
        let b = t.entry("usr/bin/perl").expect("b");
        assert_eq!(a.inode, b.inode);
        assert_eq!((a.nlink, b.mode), (3, 0o755));
        // Replacing one name gives it a new inode and leaves the others linked.
        apply(
            &mut t,
            "l2",
            &[
                Member::file("usr/bin/perl", b"other"),
                Member::whiteout("usr/bin", "perl-again"),
            ],
        );
        assert_ne!(t.entry("usr/bin/perl").expect("b").inode, a.inode);
        assert_eq!(t.entry("usr/bin/perl5.36").expect("a").nlink, 1);
        assert_eq!(content(&t, "usr/bin/perl5.36"), b"perl");
    }

    #[test]
    fn hard_link_refusals_name_entry_and_layer() {
        let (_d, mut t) = tree();
        apply(
            &mut t,
            "base",
            &[Member::dir("etc"), Member::file("etc/f", b"f")],
        );
        let e = refuse(
            &mut t,
            "sha256:missing",
            &[Member::hardlink("a", "etc/nothing")],
        );
        assert!(
            matches!(&e, FlattenError::LinkTargetMissing { layer, entry, target }
                if layer == "sha256:missing" && entry == "a" && target == "etc/nothing"),
            "{e}"
        );
        let e = refuse(&mut t, "sha256:dir", &[Member::hardlink("b", "etc")]);
        assert!(
            matches!(&e, FlattenError::LinkToDirectory { layer, entry, .. } if layer == "sha256:dir" && entry == "b"),
            "{e}"
        );
        for target in ["../etc/f", "etc/../../etc/f", "/../etc/f"] {
            let e = refuse(&mut t, "sha256:esc", &[Member::hardlink("c", target)]);
            assert!(
                matches!(&e, FlattenError::Escapes { layer, entry } if layer == "sha256:esc" && entry == "c"),
                "{target}: {e}"
            );
            assert!(
                e.to_string().contains("sha256:esc") && e.to_string().contains("\"c\""),
                "{e}"
            );
        }
        assert!(t.entry("c").is_none());
    }

    #[test]
    fn escaping_members_are_refused_and_leave_the_tree_alone() {
        for name in ["../etc/passwd", "a/../../etc/passwd", "./../x", "/../x"] {
            let (_d, mut t) = tree();
            apply(&mut t, "base", &[Member::file("a/ok", b"ok")]);
            let e = refuse(
                &mut t,
                "evil",
                &[Member::file("a/fine", b"f"), Member::file(name, b"pwned")],
            );
            match &e {
                FlattenError::Escapes { layer, entry } => {
                    assert_eq!((layer.as_str(), entry.as_str()), ("evil", name));
                }
                other => panic!("{name}: {other}"),
            }
            assert!(
                t.entry("a/fine").is_none(),
                "nothing of a refused layer is applied"
            );
        }
        // `..` that stays inside is only a spelling.
        let (_d, mut t) = tree();
        apply(&mut t, "l", &[Member::file("a/b/../c", b"c")]);
        assert_eq!(content(&t, "a/c"), b"c");
    }

    #[test]
    fn members_under_a_symlink_stay_inside_the_root() {
        let (_d, mut t) = tree();
        apply(
            &mut t,
            "l1",
            &[
                Member::symlink("etc", "/"),
                Member::symlink("up", "../../../.."),
                Member::dir("usr/lib"),
                Member::symlink("lib", "usr/lib"),
            ],
        );
        apply(
            &mut t,
            "l2",
            &[
                Member::file("etc/passwd", b"root"),
                Member::file("up/shadow", b"s"),
                Member::file("lib/libc.so", b"c"),
                Member::whiteout("etc", "nothing"),
            ],
        );
        // `etc -> /` resolves to the root of the tree, never further.
        assert_eq!(content(&t, "passwd"), b"root");
        assert_eq!(content(&t, "shadow"), b"s");
        assert_eq!(content(&t, "usr/lib/libc.so"), b"c");
        assert_eq!(
            t.entry("etc").expect("etc").kind,
            EntryKind::Symlink { target: "/".into() }
        );
        // Symlinks that loop are refused by name.
        apply(
            &mut t,
            "l3",
            &[Member::symlink("p", "q"), Member::symlink("q", "p")],
        );
        let e = refuse(&mut t, "l4", &[Member::file("p/x", b"x")]);
        assert!(
            matches!(&e, FlattenError::SymlinkLoop { layer, entry } if layer == "l4" && entry == "p/x"),
            "{e}"
        );
        // A file used as a directory.
        let e = refuse(&mut t, "l5", &[Member::file("passwd/x", b"x")]);
        assert!(
            matches!(&e, FlattenError::NotADirectory { layer, entry } if layer == "l5" && entry == "passwd/x"),
            "{e}"
        );
    }

    #[test]
    fn resolve_follows_symlinks_inside_the_root() {
        let (_d, mut t) = tree();
        apply(
            &mut t,
            "l",
            &[
                Member::file("usr/lib/systemd/systemd", b"init"),
                Member::symlink("lib", "usr/lib"),
                Member::symlink("usr/sbin/init", "../lib/systemd/systemd"),
                Member::symlink("sbin", "usr/sbin"),
                Member::symlink("abs", "/../../sbin/init"),
                Member::symlink("loop", "loop"),
            ],
        );
        assert_eq!(
            t.resolve("/sbin/init").as_deref(),
            Some("/usr/lib/systemd/systemd")
        );
        assert_eq!(
            t.resolve("abs").as_deref(),
            Some("/usr/lib/systemd/systemd")
        );
        assert_eq!(
            t.resolve("/lib/systemd").as_deref(),
            Some("/usr/lib/systemd")
        );
        assert_eq!(t.resolve("/").as_deref(), Some("/"));
        assert_eq!(t.resolve("/loop"), None);
        assert_eq!(t.resolve("/missing"), None);
        // The literal lookups follow nothing.
        assert!(t.read_file("sbin/init").is_none());
        assert_eq!(
            t.read_file("/usr/lib/systemd/systemd")
                .expect("file")
                .expect("read"),
            b"init"
        );
    }

    #[test]
    fn truncated_streams_are_errors_not_partial_trees() {
        let big = vec![7u8; 3000];
        let whole = layer(&[Member::file("a", b"x"), Member::file("b", &big)]);
        // At a block boundary (no end-of-archive marker), inside a header, inside content,
        // and nothing at all.
        for cut in [
            whole.len() - 1024,
            512 + 512 + 100,
            512 + 512 + 512 + 1000,
            0,
        ] {
            let (_d, mut t) = tree();
            match t.apply_layer("cut", &whole[..cut]) {
                Err(FlattenError::Truncated { layer }) => assert_eq!(layer, "cut"),
                other => panic!("cut at {cut}: {other:?}"),
            }
            assert!(t.entry("a").is_none(), "cut at {cut}: partial tree");
        }
        // The same through gzip.
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&whole).expect("gz");
        let gz = enc.finish().expect("gz");
        let (_d, mut t) = tree();
        let tar = crate::layer::decompressed(&gz[..gz.len() - 20]).expect("gzip");
        assert!(matches!(
            t.apply_layer("gz", tar),
            Err(FlattenError::Truncated { .. })
        ));
        let stats = t
            .apply_layer("gz", crate::layer::decompressed(&gz[..]).expect("gzip"))
            .expect("whole gzip layer");
        assert_eq!(stats.bytes, 3001);
        assert!(
            content(&t, "b") == big,
            "content after a failed layer's garbage in the spool"
        );
    }

    #[test]
    fn hostile_sizes_are_bounded() {
        let dir = tempfile::tempdir().expect("spool dir");
        let limits = Limits {
            max_xattr_bytes: 100,
            max_pax_bytes: 4096,
            ..Limits::default()
        };
        let mut t = Tree::with_limits(dir.path(), limits).expect("tree");
        let long = "n".repeat(256);
        let e = refuse(&mut t, "l", &[Member::file(&long, b"")]);
        assert!(
            matches!(&e, FlattenError::TooLarge { what: "name bytes", entry, .. } if *entry == long),
            "{e}"
        );
        let e = refuse(
            &mut t,
            "l",
            &[Member::file("x", b"").xattr("user.big", &[1; 200])],
        );
        assert!(
            matches!(
                &e,
                FlattenError::TooLarge {
                    what: "xattr bytes",
                    ..
                }
            ),
            "{e}"
        );
        let e = refuse(
            &mut t,
            "l",
            &[Member::file("x", b"").xattr("user.huge", &[1; 5000])],
        );
        assert!(
            matches!(
                &e,
                FlattenError::TooLarge {
                    what: "PAX header",
                    ..
                }
            ),
            "{e}"
        );
        let e = refuse(&mut t, "l", &[Member::symlink("s", &"a/".repeat(2100))]);
        assert!(matches!(&e, FlattenError::TooLarge { .. }), "{e}");
        let limits = Limits {
            max_entries: 5,
            ..Limits::default()
        };
        let mut t = Tree::with_limits(dir.path(), limits).expect("tree");
        let few: Vec<Member> = (0..5).map(|i| Member::file(&i.to_string(), b"")).collect();
        apply(&mut t, "few", &few);
        let e = refuse(&mut t, "many", &[Member::file("5", b"")]);
        assert!(
            matches!(&e, FlattenError::TooManyEntries { limit: 5, .. }),
            "{e}"
        );
        let limits = Limits {
            max_depth: 3,
            ..Limits::default()
        };
        let mut t = Tree::with_limits(dir.path(), limits).expect("tree");
        apply(&mut t, "ok", &[Member::file("a/b/f", b"")]);
        for (name, members) in [
            ("a/b/c/f", vec![Member::file("a/b/c/f", b"")]),
            ("a/b/c/d", vec![Member::dir("a/b/c/d")]),
            // Depth reached through a symlink counts as well.
            (
                "s/c/f",
                vec![Member::symlink("s", "a/b"), Member::file("s/c/f", b"")],
            ),
        ] {
            let e = refuse(&mut t, "deep", &members);
            assert!(
                matches!(&e, FlattenError::TooLarge { what: "directory depth", entry, .. } if entry == name),
                "{e}"
            );
        }
        // A 255-byte name is fine.
        let (_d, mut t) = tree();
        apply(
            &mut t,
            "l",
            &[Member::file(&format!("d/{}", "n".repeat(255)), b"ok")],
        );
        assert_eq!(content(&t, &format!("d/{}", "n".repeat(255))), b"ok");
    }

    #[test]
    fn pax_records_are_cut_by_length() {
        let data = b"30 SCHILY.xattr.user.a=x\ny=z\n\n12 path=abc\n";
        let records = parse_pax(data).expect("well formed");
        assert_eq!(
            records,
            vec![
                (&b"SCHILY.xattr.user.a"[..], &b"x\ny=z\n"[..]),
                (&b"path"[..], &b"abc"[..])
            ]
        );
        for bad in [
            &b"99 path=abc\n"[..],
            b"5 path=abc\n",
            b"x path=abc\n",
            b"12 pathXabc\n",
        ] {
            assert!(
                parse_pax(bad).is_none(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            parse_pax_time(b"1700000000.5"),
            Some((1_700_000_000, 500_000_000))
        );
        assert_eq!(parse_pax_time(b"-1.25"), Some((-2, 750_000_000)));
        assert_eq!(parse_pax_time(b"12a"), None);
    }
}
