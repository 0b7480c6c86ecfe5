//! A flattened [`Tree`] written as an erofs image, the root file system a node mounts.
//!
//! The image is **uncompressed**. A node fetches the image into RAM and mounts it from there
//! (a loop device or, from Linux 6.12, the file itself): with plain blocks every read is a
//! page-cache copy, with no decompression on the node's CPU at boot and no decompressed copy of
//! hot pages beside the compressed ones. Whether compression would pay for itself in transfer
//! time is a separate question, measured elsewhere; this writer keeps the format simple enough
//! to check by hand against the kernel's reader.
//!
//! The format is Linux's `fs/erofs/erofs_fs.h`; the writer uses the subset every kernel since
//! 5.4 reads, so Debian 12's 6.1 mounts it as well as 6.18:
//!
//! - 4 KiB blocks (`blkszbits` 12, what 6.1 requires on a 4 KiB-page machine). The superblock
//!   sits at byte 1024; its checksum feature (`EROFS_FEATURE_COMPAT_SB_CHKSUM`) is left off,
//!   because every chunk of the image is already checked by SHA-256 against a signed manifest
//!   before a node uses it, and no other feature bit is set.
//! - The metadata area starts at block 0 (`meta_blkaddr` 0), right after the superblock, so the
//!   root directory is the first inode, nid 36, well inside the superblock's 16-bit `root_nid`.
//!   A nid is an inode's byte offset over 32.
//! - Every inode is the 64-byte extended form: 32-bit uid and gid, its own mtime and nlink.
//! - Xattrs are inline in the inode (no shared xattrs), names as an index and a suffix.
//! - Data is `FLAT_PLAIN` (whole blocks in the data area) or `FLAT_INLINE`: the last partial
//!   block ("tail") right after the inode and its xattrs. The kernel refuses a tail that
//!   crosses a block boundary (`erofs_map_blocks_flatmode`), so an inode with an inline tail is
//!   placed wholly inside one block, padding to the next block when needed; an inode whose
//!   tail cannot fit in a block keeps its data plain.
//! - Directories are blocks of 12-byte dirents followed by their names, sorted by bytes within
//!   and across blocks (the kernel's lookup is a binary search over both), `.` and `..`
//!   included in that order. A name is not NUL-terminated: it ends where the next one starts,
//!   or at the end of the block, which is zero-padded.
//!
//! Output depends only on the tree: inodes in breadth-first order of sorted names, no
//! timestamps or UUID of the build, so the same tree gives the same bytes.
use std::collections::VecDeque;
use std::io::{self, BufWriter, Write};
use std::ops::Range;

use crate::flatten::{NodeId, NodeKind, ROOT, Tree, xattr_index};

pub const BLOCK_SIZE: u64 = 4096;
const BLOCK_SIZE_BITS: u8 = 12;
const SUPERBLOCK_OFFSET: u64 = 1024;
const SUPERBLOCK_SIZE: u64 = 128;
const MAGIC: u32 = 0xE0F5_E1E2;
/// An extended inode's size.
const INODE_SIZE: u64 = 64;
/// Inodes sit on 32-byte slots (`EROFS_ISLOTBITS` 5): the unit of a nid.
const SLOT: u64 = 32;
const DIRENT_SIZE: usize = 12;
/// `erofs_xattr_ibody_header`: name filter (unused here), shared count, reserved.
const XATTR_HEADER_SIZE: usize = 12;
const XATTR_ENTRY_HEADER_SIZE: usize = 4;

/// `i_format`: bit 0 is the inode version (1: extended), bits 1-3 the data layout.
const FORMAT_EXTENDED: u16 = 1;
const LAYOUT_FLAT_PLAIN: u16 = 0;
const LAYOUT_FLAT_INLINE: u16 = 2;

/// `EROFS_FT_*`, the dirent file types.
mod file_type {
    pub const REG_FILE: u8 = 1;
    pub const DIR: u8 = 2;
    pub const CHRDEV: u8 = 3;
    pub const BLKDEV: u8 = 4;
    pub const FIFO: u8 = 5;
    pub const SYMLINK: u8 = 7;
}

/// `S_IF*`, the file type bits of `i_mode`.
mod mode_type {
    pub const FIFO: u16 = 0o010000;
    pub const CHR: u16 = 0o020000;
    pub const DIR: u16 = 0o040000;
    pub const BLK: u16 = 0o060000;
    pub const REG: u16 = 0o100000;
    pub const LNK: u16 = 0o120000;
}

/// `struct erofs_super_block`, 128 bytes at offset 1024.
mod sb_field {
    use std::ops::Range;
    pub const MAGIC: Range<usize> = 0..4;
    pub const BLKSZBITS: usize = 12;
    pub const ROOT_NID: Range<usize> = 14..16;
    pub const INOS: Range<usize> = 16..24;
    pub const BLOCKS: Range<usize> = 36..40;
    pub const META_BLKADDR: Range<usize> = 40..44;
}

/// `struct erofs_inode_extended`, 64 bytes.
mod inode_field {
    use std::ops::Range;
    pub const FORMAT: Range<usize> = 0..2;
    pub const XATTR_ICOUNT: Range<usize> = 2..4;
    pub const MODE: Range<usize> = 4..6;
    pub const SIZE: Range<usize> = 8..16;
    /// `raw_blkaddr` for flat data, `rdev` for devices.
    pub const U: Range<usize> = 16..20;
    pub const INO: Range<usize> = 20..24;
    pub const UID: Range<usize> = 24..28;
    pub const GID: Range<usize> = 28..32;
    pub const MTIME: Range<usize> = 32..40;
    pub const MTIME_NSEC: Range<usize> = 40..44;
    pub const NLINK: Range<usize> = 44..48;
}

/// Why an image could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ErofsError {
    #[error("reading the content spool or writing the image")]
    Io(#[from] io::Error),
    /// Unreachable through [`Tree`], which drops such xattrs when it reads a layer.
    #[error("inode {inode}: xattr {name:?} has no erofs name index")]
    XattrName { inode: usize, name: String },
    #[error(
        "inode {inode}: xattrs take {bytes} bytes, over what an inode's 16-bit xattr count holds"
    )]
    XattrsTooLarge { inode: usize, bytes: usize },
    #[error("the image needs {blocks} blocks, over erofs's 32-bit block addresses")]
    TooManyBlocks { blocks: u64 },
}

/// One dirent, before nids are known.
#[derive(Debug)]
struct Dirent<'t> {
    name: &'t [u8],
    node: NodeId,
    file_type: u8,
}

/// One inode of the image and where its parts go.
#[derive(Debug)]
struct Inode<'t> {
    node: NodeId,
    /// Byte offset of the inode in the image (the metadata area starts at 0).
    pos: u64,
    /// `i_size`: content bytes, symlink target bytes, or directory bytes.
    size: u64,
    inline: bool,
    /// First block of the data in the data area (full blocks only for an inline layout).
    blkaddr: u32,
    nlink: u32,
    xattrs: Vec<u8>,
    /// Directories: their dirents, sorted.
    dirents: Vec<Dirent<'t>>,
}

impl Inode<'_> {
    fn nid(&self) -> u64 {
        self.pos / SLOT
    }

    /// Bytes that go in whole blocks in the data area.
    fn block_bytes(&self) -> u64 {
        if self.inline {
            self.size - self.size % BLOCK_SIZE
        } else {
            self.size
        }
    }

    fn tail_bytes(&self) -> u64 {
        if self.inline {
            self.size % BLOCK_SIZE
        } else {
            0
        }
    }
}

/// Writes `tree` as an uncompressed erofs image to `out`, from `out`'s current position
/// (which is byte 0 of the image). Returns the image's size in bytes, a whole number of blocks.
pub fn write_erofs(tree: &Tree, out: &mut impl Write) -> Result<u64, ErofsError> {
    let mut inodes = collect(tree);
    for inode in &mut inodes {
        inode.xattrs = xattr_body(tree, inode.node)?;
        inode.size = match &tree.node(inode.node).kind {
            NodeKind::File { len, .. } => *len,
            NodeKind::Symlink(target) => target.len() as u64,
            NodeKind::Dir(_) => dir_size(&inode.dirents),
            _ => 0,
        };
    }
    let data_start = place_metadata(&mut inodes);
    let total_blocks = place_data(&mut inodes, data_start)?;

    let mut nids = vec![u64::MAX; tree.node_count()];
    for inode in &inodes {
        nids[inode.node] = inode.nid();
    }
    let mut out = Positioned {
        inner: BufWriter::with_capacity(1 << 20, out),
        pos: 0,
    };
    out.pad_to(SUPERBLOCK_OFFSET)?;
    out.write_all(&superblock(
        inodes[0].nid(),
        inodes.len() as u64,
        total_blocks,
    ))?;
    for (ino, inode) in inodes.iter().enumerate() {
        out.pad_to(inode.pos)?;
        out.write_all(&inode_core(tree, inode, ino as u32))?;
        out.write_all(&inode.xattrs)?;
        if inode.tail_bytes() > 0 {
            write_data(
                tree,
                inode,
                &nids,
                inode.block_bytes(),
                inode.tail_bytes(),
                &mut out,
            )?;
        }
    }
    for inode in &inodes {
        if inode.block_bytes() == 0 {
            continue;
        }
        out.pad_to(u64::from(inode.blkaddr) * BLOCK_SIZE)?;
        write_data(tree, inode, &nids, 0, inode.block_bytes(), &mut out)?;
    }
    let end = total_blocks * BLOCK_SIZE;
    out.pad_to(end)?;
    out.inner.flush()?;
    Ok(end)
}

/// Every inode reachable from the root, breadth first in name order (a directory's children
/// get neighbouring inodes: `ls -l` reads one stretch of metadata), with dirents and nlinks.
fn collect(tree: &Tree) -> Vec<Inode<'_>> {
    const UNSEEN: usize = usize::MAX;
    let mut index = vec![UNSEEN; tree.node_count()];
    let new = |node| Inode {
        node,
        pos: 0,
        size: 0,
        inline: false,
        blkaddr: 0,
        nlink: 0,
        xattrs: Vec::new(),
        dirents: Vec::new(),
    };
    let mut inodes = vec![new(ROOT)];
    index[ROOT] = 0;
    let mut queue = VecDeque::from([(ROOT, ROOT)]);
    while let Some((dir, parent)) = queue.pop_front() {
        let NodeKind::Dir(children) = &tree.node(dir).kind else {
            unreachable!("only directories are queued");
        };
        let mut dirents = vec![
            Dirent {
                name: b".",
                node: dir,
                file_type: file_type::DIR,
            },
            Dirent {
                name: b"..",
                node: parent,
                file_type: file_type::DIR,
            },
        ];
        let mut subdirs = 0u32;
        for (name, &child) in children {
            if index[child] == UNSEEN {
                index[child] = inodes.len();
                inodes.push(new(child));
                if matches!(tree.node(child).kind, NodeKind::Dir(_)) {
                    queue.push_back((child, dir));
                }
            }
            let file_type = file_type_of(&tree.node(child).kind);
            if file_type == file_type::DIR {
                subdirs += 1;
            } else {
                inodes[index[child]].nlink += 1;
            }
            dirents.push(Dirent {
                name,
                node: child,
                file_type,
            });
        }
        // `.` and `..` sort among the names by bytes (`!` and `-` come before `.`).
        dirents.sort_by(|a, b| a.name.cmp(b.name));
        let inode = &mut inodes[index[dir]];
        inode.dirents = dirents;
        inode.nlink = 2 + subdirs;
    }
    inodes
}

fn file_type_of(kind: &NodeKind) -> u8 {
    match kind {
        NodeKind::File { .. } => file_type::REG_FILE,
        NodeKind::Dir(_) => file_type::DIR,
        NodeKind::Symlink(_) => file_type::SYMLINK,
        NodeKind::CharDevice { .. } => file_type::CHRDEV,
        NodeKind::BlockDevice { .. } => file_type::BLKDEV,
        NodeKind::Fifo => file_type::FIFO,
    }
}

/// Dirents cut into blocks: as many as fit in each, in order.
fn dir_blocks(dirents: &[Dirent<'_>]) -> Vec<Range<usize>> {
    let mut blocks = Vec::new();
    let (mut start, mut used) = (0, 0);
    for (i, d) in dirents.iter().enumerate() {
        let need = DIRENT_SIZE + d.name.len();
        if used + need > BLOCK_SIZE as usize {
            blocks.push(start..i);
            (start, used) = (i, 0);
        }
        used += need;
    }
    blocks.push(start..dirents.len());
    blocks
}

/// A directory's `i_size`: whole blocks, then the bytes the last block uses.
fn dir_size(dirents: &[Dirent<'_>]) -> u64 {
    let blocks = dir_blocks(dirents);
    let last = blocks.last().expect("a directory has `.` and `..`");
    let last_used: usize = dirents[last.clone()]
        .iter()
        .map(|d| DIRENT_SIZE + d.name.len())
        .sum();
    (blocks.len() as u64 - 1) * BLOCK_SIZE + last_used as u64
}

/// Assigns each inode its place in the metadata area; returns the first block after it.
fn place_metadata(inodes: &mut [Inode<'_>]) -> u64 {
    let mut pos = SUPERBLOCK_OFFSET + SUPERBLOCK_SIZE;
    for inode in inodes.iter_mut() {
        let head = INODE_SIZE + inode.xattrs.len() as u64;
        let tail = inode.size % BLOCK_SIZE;
        inode.inline = tail > 0 && head + tail <= BLOCK_SIZE;
        // What must not cross a block boundary: the whole inode with an inline tail, else
        // the 64-byte core (the kernel reads it across blocks, but one block is one read).
        let unbroken = if inode.inline {
            head + tail
        } else {
            INODE_SIZE
        };
        if pos % BLOCK_SIZE + unbroken > BLOCK_SIZE {
            pos = pos.next_multiple_of(BLOCK_SIZE);
        }
        inode.pos = pos;
        pos = (pos + head + inode.tail_bytes()).next_multiple_of(SLOT);
    }
    pos.div_ceil(BLOCK_SIZE)
}

/// Gives each inode with whole blocks its run of blocks; returns the image's block count.
fn place_data(inodes: &mut [Inode<'_>], first_block: u64) -> Result<u64, ErofsError> {
    let mut next = first_block;
    for inode in inodes.iter_mut() {
        let blocks = inode.block_bytes().div_ceil(BLOCK_SIZE);
        if blocks > 0 {
            inode.blkaddr =
                u32::try_from(next).map_err(|_| ErofsError::TooManyBlocks { blocks: next })?;
            next += blocks;
        }
    }
    if next > u64::from(u32::MAX) {
        return Err(ErofsError::TooManyBlocks { blocks: next });
    }
    Ok(next)
}

fn put(buf: &mut [u8], field: Range<usize>, bytes: &[u8]) {
    buf[field].copy_from_slice(bytes);
}

fn superblock(root_nid: u64, inodes: u64, blocks: u64) -> [u8; SUPERBLOCK_SIZE as usize] {
    let mut sb = [0u8; SUPERBLOCK_SIZE as usize];
    put(&mut sb, sb_field::MAGIC, &MAGIC.to_le_bytes());
    sb[sb_field::BLKSZBITS] = BLOCK_SIZE_BITS;
    let root_nid = u16::try_from(root_nid).expect("the root is the first inode, nid 36");
    put(&mut sb, sb_field::ROOT_NID, &root_nid.to_le_bytes());
    put(&mut sb, sb_field::INOS, &inodes.to_le_bytes());
    put(&mut sb, sb_field::BLOCKS, &(blocks as u32).to_le_bytes());
    put(&mut sb, sb_field::META_BLKADDR, &0u32.to_le_bytes());
    sb
}

fn inode_core(tree: &Tree, inode: &Inode<'_>, ino: u32) -> [u8; INODE_SIZE as usize] {
    let node = tree.node(inode.node);
    let (type_bits, u) = match &node.kind {
        NodeKind::File { .. } => (mode_type::REG, inode.blkaddr),
        NodeKind::Dir(_) => (mode_type::DIR, inode.blkaddr),
        NodeKind::Symlink(_) => (mode_type::LNK, inode.blkaddr),
        NodeKind::CharDevice { major, minor } => (mode_type::CHR, encode_dev(*major, *minor)),
        NodeKind::BlockDevice { major, minor } => (mode_type::BLK, encode_dev(*major, *minor)),
        NodeKind::Fifo => (mode_type::FIFO, 0),
    };
    let layout = if inode.inline {
        LAYOUT_FLAT_INLINE
    } else {
        LAYOUT_FLAT_PLAIN
    };
    let xattr_icount = if inode.xattrs.is_empty() {
        0
    } else {
        // `erofs_xattr_ibody_size`: the header counts as one 4-byte unit.
        ((inode.xattrs.len() - XATTR_HEADER_SIZE) / 4 + 1) as u16
    };
    let mut raw = [0u8; INODE_SIZE as usize];
    put(
        &mut raw,
        inode_field::FORMAT,
        &(FORMAT_EXTENDED | layout << 1).to_le_bytes(),
    );
    put(
        &mut raw,
        inode_field::XATTR_ICOUNT,
        &xattr_icount.to_le_bytes(),
    );
    put(
        &mut raw,
        inode_field::MODE,
        &(type_bits | node.meta.mode).to_le_bytes(),
    );
    put(&mut raw, inode_field::SIZE, &inode.size.to_le_bytes());
    put(&mut raw, inode_field::U, &u.to_le_bytes());
    put(&mut raw, inode_field::INO, &ino.to_le_bytes());
    put(&mut raw, inode_field::UID, &node.meta.uid.to_le_bytes());
    put(&mut raw, inode_field::GID, &node.meta.gid.to_le_bytes());
    // Before 1970 is written as 1970: nothing in a root needs it and fsck tools disagree on
    // negative times.
    let mtime = u64::try_from(node.meta.mtime).unwrap_or(0);
    put(&mut raw, inode_field::MTIME, &mtime.to_le_bytes());
    put(
        &mut raw,
        inode_field::MTIME_NSEC,
        &node.meta.mtime_nsec.to_le_bytes(),
    );
    put(&mut raw, inode_field::NLINK, &inode.nlink.to_le_bytes());
    raw
}

/// Linux's `new_encode_dev`, which erofs's reader undoes with `new_decode_dev`.
fn encode_dev(major: u32, minor: u32) -> u32 {
    (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12)
}

/// The inline xattr body: a 12-byte header, then entries of `name_len`, `name_index`,
/// `value_size`, suffix and value, each padded to 4 bytes. Empty without xattrs.
fn xattr_body(tree: &Tree, id: NodeId) -> Result<Vec<u8>, ErofsError> {
    let node = tree.node(id);
    if node.xattrs.is_empty() {
        return Ok(Vec::new());
    }
    let mut entries = Vec::new();
    for (name, value) in &node.xattrs {
        let (index, suffix) = xattr_index(name)
            .filter(|(_, s)| s.len() <= usize::from(u8::MAX))
            .ok_or_else(|| ErofsError::XattrName {
                inode: id,
                name: name.to_string(),
            })?;
        let value_size = u16::try_from(value.len()).map_err(|_| ErofsError::XattrsTooLarge {
            inode: id,
            bytes: value.len(),
        })?;
        entries.push((index, suffix, value_size, value));
    }
    // Deterministic, and by index as erofs-utils orders them.
    entries.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    let mut body = vec![0u8; XATTR_HEADER_SIZE];
    for (index, suffix, value_size, value) in entries {
        body.push(suffix.len() as u8);
        body.push(index);
        body.extend_from_slice(&value_size.to_le_bytes());
        body.extend_from_slice(suffix.as_bytes());
        body.extend_from_slice(value);
        body.resize(body.len().next_multiple_of(XATTR_ENTRY_HEADER_SIZE), 0);
    }
    if (body.len() - XATTR_HEADER_SIZE) / 4 + 1 > usize::from(u16::MAX) {
        return Err(ErofsError::XattrsTooLarge {
            inode: id,
            bytes: body.len(),
        });
    }
    Ok(body)
}

/// Writes `len` bytes of an inode's data from byte `from`, zero-padded to a whole block when
/// that is where the data ends in the data area.
fn write_data(
    tree: &Tree,
    inode: &Inode<'_>,
    nids: &[u64],
    from: u64,
    len: u64,
    out: &mut Positioned<impl Write>,
) -> Result<(), ErofsError> {
    match &tree.node(inode.node).kind {
        NodeKind::File { offset, .. } => tree.copy_content(offset + from, len, out)?,
        NodeKind::Symlink(target) => {
            out.write_all(&target[from as usize..(from + len) as usize])?;
        }
        NodeKind::Dir(_) => {
            let bytes = dir_bytes(&inode.dirents, nids);
            out.write_all(&bytes[from as usize..(from + len) as usize])?;
        }
        _ => {}
    }
    Ok(())
}

/// A directory's data: its blocks, whole but the last, which stops at its last name.
fn dir_bytes(dirents: &[Dirent<'_>], nids: &[u64]) -> Vec<u8> {
    let mut bytes = Vec::new();
    let blocks = dir_blocks(dirents);
    let count = blocks.len();
    for (i, block) in blocks.into_iter().enumerate() {
        let start = bytes.len();
        let entries = &dirents[block];
        let mut nameoff = entries.len() * DIRENT_SIZE;
        for d in entries {
            bytes.extend_from_slice(&nids[d.node].to_le_bytes());
            bytes.extend_from_slice(&(nameoff as u16).to_le_bytes());
            bytes.push(d.file_type);
            bytes.push(0);
            nameoff += d.name.len();
        }
        for d in entries {
            bytes.extend_from_slice(d.name);
        }
        if i + 1 < count {
            bytes.resize(start + BLOCK_SIZE as usize, 0);
        }
    }
    bytes
}

/// The image writer, knowing its position so that every part lands at the offset the layout
/// gave it.
struct Positioned<W: Write> {
    inner: W,
    pos: u64,
}

impl<W: Write> Positioned<W> {
    fn pad_to(&mut self, pos: u64) -> io::Result<()> {
        assert!(
            pos >= self.pos,
            "layout overlap: at {} asked for {pos}",
            self.pos
        );
        const ZEROS: [u8; 4096] = [0; 4096];
        while self.pos < pos {
            let n = (pos - self.pos).min(ZEROS.len() as u64) as usize;
            self.write_all(&ZEROS[..n])?;
        }
        Ok(())
    }
}

impl<W: Write> Write for Positioned<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.pos += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::fs;
    use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
    use std::path::{Path, PathBuf};
    use std::process::Command;

    use tar::EntryType;

    use super::*;
    use crate::flatten::fixture::{Member, layer};
    use crate::flatten::{EntryInfo, EntryKind};

    /// A 20-byte `security.capability` (VFS_CAP_REVISION_2) granting cap_net_raw.
    const CAP_NET_RAW: [u8; 20] = [
        0, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    /// A root with what trips erofs writers up: every size around the block, hundreds of small
    /// files packed into the metadata area, directories of several dirent blocks, 255-byte
    /// names, names sorting before `.`, deep paths, hard links, devices, xattrs large and small.
    fn rich_tree(spool: &Path) -> Tree {
        let mut base = vec![
            Member::dir("etc"),
            Member::dir("tmp").mode(0o1777),
            Member::file("etc/hostname", b"node\n"),
            Member::file("etc/empty", b""),
            Member::file("usr/bin/ping", b"\x7fELF ping")
                .mode(0o4755)
                .xattr("security.capability", &CAP_NET_RAW),
            Member::file("usr/bin/perl5.36", &pattern(9000, 3)).mode(0o755),
            Member::hardlink("usr/bin/perl", "usr/bin/perl5.36"),
            Member::hardlink("usr/bin/perl-again", "usr/bin/perl5.36"),
            Member::file("home/u/notes", b"mine")
                .owner(1000, 1000)
                .mode(0o600)
                .xattr("user.mime", b"text/plain")
                .xattr("trusted.t", &[0, 1, 2, 255]),
            Member::file("home/big-uid", b"x").owner(100_000, 200_000),
            // Xattrs that leave no room for the tail in the inode's block: plain layout.
            Member::file("xattr/heavy", &pattern(2000, 9)).xattr("user.big", &pattern(3000, 1)),
            Member::file("xattr/only", b"")
                .xattr("user.a", b"1")
                .xattr("user.bb", b"22")
                .xattr("security.selinux", b"system_u:object_r:bin_t:s0\0"),
            Member::symlink("bin", "usr/bin"),
            Member::symlink("abs", "/etc/hostname"),
            Member::symlink("long3000", &"a/".repeat(1500)),
            Member::symlink("long4095", &format!("{}b", "a/".repeat(2047))),
            Member::device(EntryType::Char, "dev/null", 1, 3),
            Member::device(EntryType::Block, "dev/sda", 8, 0),
            Member::device(EntryType::Char, "dev/wide", 300, 70_000),
            Member::fifo("run/initctl"),
            Member::file("sort/!bang", b"1"),
            Member::file("sort/-dash", b"2"),
            Member::file("sort/+plus", b"3"),
            Member::file("sort/.hidden", b"4"),
            Member::file("sort/\u{e9}t\u{e9}", b"5"),
            Member::file("sort/Z", b"6"),
        ];
        for (i, size) in [
            0usize,
            1,
            100,
            4031,
            4032,
            4095,
            4096,
            4097,
            8191,
            8192,
            5 * 4096 + 123,
            100_000,
        ]
        .into_iter()
        .enumerate()
        {
            base.push(Member::file(
                &format!("sizes/{size}"),
                &pattern(size, i as u8),
            ));
        }
        for i in 0..600 {
            // 600 dirents of about 30 bytes: five dirent blocks.
            base.push(Member::file(
                &format!("many/entry-{i:05}-of-the-big-dir"),
                &pattern(i * 7 % 5000, i as u8),
            ));
        }
        for i in 0..20u8 {
            let name: String = std::iter::repeat_n(char::from(b'a' + i), 255).collect();
            base.push(Member::file(&format!("long/{name}"), &[i; 10]));
        }
        base.push(Member::file(
            "opq/before-opaque",
            b"hidden by the upper layer",
        ));
        let deep: Vec<String> = (0..40).map(|i| format!("d{i}")).collect();
        base.push(Member::file(&format!("{}/bottom", deep.join("/")), b"deep"));

        let upper = [
            Member::whiteout("etc", "empty"),
            Member::file("etc/hostname", b"node-2\n"),
            Member::opaque("opq"),
            Member::file("opq/after-opaque", b"only me"),
        ];
        let mut more: Vec<Member> = (0..300)
            .map(|i| Member::file(&format!("many/new-{i:04}"), &pattern(i * 13, 7)))
            .collect();
        more.extend(upper);

        let mut tree = Tree::new(spool).expect("tree");
        tree.apply_layer("base", &layer(&base)[..])
            .expect("base layer");
        tree.apply_layer("upper", &layer(&more)[..])
            .expect("upper layer");
        tree
    }

    fn image_of(tree: &Tree) -> Vec<u8> {
        let mut img = Vec::new();
        let len = write_erofs(tree, &mut img).expect("image");
        assert_eq!(len, img.len() as u64);
        img
    }

    fn in_ci() -> bool {
        std::env::var("CI").is_ok_and(|v| v == "true")
    }

    /// Outside CI a missing tool or a refused mount skips the check; in CI it fails.
    fn unavailable(what: &str) {
        assert!(!in_ci(), "CI=true and {what}");
        eprintln!("skipped: {what}");
    }

    #[test]
    fn superblock_and_layout_are_as_the_kernel_reads_them() {
        let spool = tempfile::tempdir().expect("spool");
        let tree = rich_tree(spool.path());
        let img = image_of(&tree);
        assert_eq!(img.len() % BLOCK_SIZE as usize, 0);
        let sb = &img[1024..1152];
        assert_eq!(&sb[0..4], &MAGIC.to_le_bytes());
        assert_eq!(sb[12], 12, "4 KiB blocks");
        assert_eq!(
            u16::from_le_bytes([sb[14], sb[15]]),
            36,
            "the root right after the superblock"
        );
        let blocks = u32::from_le_bytes(sb[36..40].try_into().expect("4 bytes"));
        assert_eq!(u64::from(blocks) * BLOCK_SIZE, img.len() as u64);
        assert_eq!(&sb[4..12], &[0; 8], "no checksum, no compat features");
        assert_eq!(&sb[80..84], &[0; 4], "no incompat features");
        // The root inode: extended, a directory, mode 0755.
        let root = &img[36 * 32..36 * 32 + 64];
        assert_eq!(root[0] & 1, 1);
        assert_eq!(u16::from_le_bytes([root[4], root[5]]), 0o040755);
    }

    #[test]
    fn same_tree_same_bytes() {
        let spool = tempfile::tempdir().expect("spool");
        let a = image_of(&rich_tree(spool.path()));
        let b = image_of(&rich_tree(spool.path()));
        assert!(a == b, "two images of one tree differ");
    }

    #[test]
    fn devices_encode_as_linux_new_encode_dev() {
        // makedev(8, 0) and makedev(300, 70000) in the kernel's 32-bit new encoding.
        assert_eq!(encode_dev(8, 0), 0x0800);
        assert_eq!(encode_dev(300, 70_000), 0x70 | 300 << 8 | 0x11100 << 12);
    }

    #[test]
    fn directory_blocks_hold_whole_dirents() {
        let names: Vec<Vec<u8>> = (0..40).map(|i| vec![b'a' + (i % 26) as u8; 200]).collect();
        let dirents: Vec<Dirent<'_>> = names
            .iter()
            .map(|n| Dirent {
                name: n,
                node: 0,
                file_type: file_type::REG_FILE,
            })
            .collect();
        let blocks = dir_blocks(&dirents);
        // 212 bytes a dirent: 19 in a block.
        assert_eq!(blocks, vec![0..19, 19..38, 38..40]);
        assert_eq!(dir_size(&dirents), 2 * BLOCK_SIZE + 2 * 212);
        let bytes = dir_bytes(&dirents, &[7]);
        assert_eq!(bytes.len() as u64, dir_size(&dirents));
        // The second block's first dirent: nid 7, names after its 19 dirents.
        let b1 = &bytes[4096..];
        assert_eq!(u64::from_le_bytes(b1[0..8].try_into().expect("8")), 7);
        assert_eq!(u16::from_le_bytes([b1[8], b1[9]]), 19 * 12);
    }

    #[test]
    fn fsck_erofs_checks_and_extracts_the_image() {
        let spool = tempfile::tempdir().expect("spool");
        let tree = rich_tree(spool.path());
        let work = tempfile::tempdir().expect("work dir");
        let image = work.path().join("root.erofs");
        fs::write(&image, image_of(&tree)).expect("write image");
        let out = match Command::new("fsck.erofs").arg(&image).output() {
            Ok(out) => out,
            Err(e) => return unavailable(&format!("fsck.erofs cannot run: {e}")),
        };
        assert!(
            out.status.success(),
            "fsck.erofs: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let extracted = work.path().join("x");
        let out = Command::new("fsck.erofs")
            .arg(format!("--extract={}", extracted.display()))
            .arg(&image)
            .output()
            .expect("fsck.erofs ran a moment ago");
        assert!(
            out.status.success(),
            "fsck.erofs --extract: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // Extraction is a second, independent reader: contents, kinds and symlink targets.
        // (It does not restore xattrs, and it writes hard links as copies.)
        compare(&tree, &extracted, Strictness::Extracted);
    }

    #[test]
    fn the_kernel_mounts_the_image_as_the_tree() {
        let spool = tempfile::tempdir().expect("spool");
        let tree = rich_tree(spool.path());
        let work = tempfile::tempdir().expect("work dir");
        let image = work.path().join("root.erofs");
        fs::write(&image, image_of(&tree)).expect("write image");
        let mounted = match Mounted::new(&image) {
            Ok(m) => m,
            Err(e) => return unavailable(&e),
        };
        compare(&tree, &mounted.dir, Strictness::Mounted);
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Strictness {
        /// Everything, as the kernel serves it.
        Mounted,
        /// What `fsck.erofs --extract` restores.
        Extracted,
    }

    /// Compares the tree with a directory on disk, entry by entry, both ways.
    fn compare(tree: &Tree, root: &Path, how: Strictness) {
        let mut inodes: HashMap<u64, u64> = HashMap::new();
        let mut with_xattrs: Vec<(PathBuf, EntryInfo)> = Vec::new();
        let mut checked = 0;
        let mut stack = vec![String::new()];
        while let Some(dir) = stack.pop() {
            let mut on_disk: Vec<Vec<u8>> = fs::read_dir(root.join(&dir))
                .unwrap_or_else(|e| panic!("read_dir {dir:?}: {e}"))
                .map(|e| {
                    use std::os::unix::ffi::OsStrExt as _;
                    e.expect("dirent").file_name().as_bytes().to_vec()
                })
                .collect();
            on_disk.sort();
            let in_tree = tree.list_dir(&dir).expect("a directory of the tree");
            let in_tree_bytes: Vec<Vec<u8>> =
                in_tree.iter().map(|n| n.as_bytes().to_vec()).collect();
            assert_eq!(on_disk, in_tree_bytes, "names in /{dir}");
            for name in in_tree {
                let path = if dir.is_empty() {
                    name
                } else {
                    format!("{dir}/{name}")
                };
                let entry = tree.entry(&path).expect("listed");
                let disk = root.join(&path);
                let meta = fs::symlink_metadata(&disk).unwrap_or_else(|e| panic!("{path}: {e}"));
                let ft = meta.file_type();
                checked += 1;
                match &entry.kind {
                    EntryKind::File => {
                        assert!(ft.is_file(), "{path}: {ft:?}");
                        let want = tree.read_file(&path).expect("file").expect("spool");
                        let got = fs::read(&disk).unwrap_or_else(|e| panic!("{path}: {e}"));
                        assert!(
                            got == want,
                            "{path}: content differs ({} bytes on disk, {} in the tree)",
                            got.len(),
                            want.len()
                        );
                    }
                    EntryKind::Dir => {
                        assert!(ft.is_dir(), "{path}: {ft:?}");
                        stack.push(path.clone());
                    }
                    EntryKind::Symlink { target } => {
                        assert!(ft.is_symlink(), "{path}: {ft:?}");
                        let got = fs::read_link(&disk).expect("readlink");
                        assert_eq!(got.to_str(), Some(target.as_str()), "{path}");
                    }
                    EntryKind::CharDevice { major, minor }
                    | EntryKind::BlockDevice { major, minor } => {
                        let want_char = matches!(entry.kind, EntryKind::CharDevice { .. });
                        assert_eq!(
                            (ft.is_char_device(), ft.is_block_device()),
                            (want_char, !want_char),
                            "{path}"
                        );
                        assert_eq!(
                            dev_major_minor(meta.rdev()),
                            (*major, *minor),
                            "{path}: rdev"
                        );
                    }
                    EntryKind::Fifo => assert!(ft.is_fifo(), "{path}: {ft:?}"),
                }
                // fsck.erofs writes symlinks with the process's own permissions, and chowns
                // after chmod, which clears setuid and setgid.
                let mode_bits = if how == Strictness::Mounted {
                    0o7777
                } else {
                    0o1777
                };
                if how == Strictness::Mounted || !ft.is_symlink() {
                    assert_eq!(
                        meta.mode() & mode_bits,
                        entry.mode & mode_bits,
                        "{path}: mode {:o}",
                        meta.mode()
                    );
                    assert_eq!(
                        (meta.uid(), meta.gid()),
                        (entry.uid, entry.gid),
                        "{path}: owner"
                    );
                }
                if how == Strictness::Mounted {
                    assert_eq!(meta.mtime(), entry.mtime, "{path}: mtime");
                    assert_eq!(meta.nlink(), u64::from(entry.nlink), "{path}: nlink");
                    if !ft.is_dir() {
                        assert_eq!(meta.size(), entry.size, "{path}: size");
                    }
                    // One inode on disk per inode of the tree, and the other way round.
                    let seen = *inodes.entry(entry.inode).or_insert(meta.ino());
                    assert_eq!(seen, meta.ino(), "{path}: hard link split");
                    with_xattrs.push((disk, entry));
                }
            }
        }
        assert!(checked > 1000, "only {checked} entries compared");
        if how == Strictness::Mounted {
            let distinct: std::collections::HashSet<u64> = inodes.values().copied().collect();
            assert_eq!(
                distinct.len(),
                inodes.len(),
                "two inodes of the tree share one on disk"
            );
            let listed = xattrs_on_disk(with_xattrs.iter().map(|(p, _)| p.as_path()));
            for ((path, entry), got) in with_xattrs.iter().zip(listed) {
                let want: Vec<(String, Vec<u8>)> = entry.xattrs.clone();
                assert_eq!(got, want, "{}: xattrs", path.display());
            }
        }
    }

    fn dev_major_minor(rdev: u64) -> (u32, u32) {
        // glibc's gnu_dev_major / gnu_dev_minor.
        let major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff);
        let minor = (rdev & 0xff) | ((rdev >> 12) & !0xff);
        (major as u32, minor as u32)
    }

    /// Every xattr of every path (not following symlinks), sorted by name. One python3 process
    /// for all of them: no xattr syscall is reachable from this crate without `unsafe` or a
    /// new dependency, and Debian's `attr` tools are not installed.
    fn xattrs_on_disk<'p>(paths: impl Iterator<Item = &'p Path>) -> Vec<Vec<(String, Vec<u8>)>> {
        use std::io::Write as _;
        let script = r#"
import os, sys
for line in sys.stdin.buffer.read().split(b"\0"):
    if not line:
        continue
    names = sorted(os.listxattr(line, follow_symlinks=False))
    print(" ".join(n + "=" + os.getxattr(line, n, follow_symlinks=False).hex() for n in names))
"#;
        let mut child = Command::new("python3")
            .args(["-c", script])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 (installed by xtask setup)");
        let mut input = Vec::new();
        for p in paths {
            use std::os::unix::ffi::OsStrExt as _;
            input.extend_from_slice(p.as_os_str().as_bytes());
            input.push(0);
        }
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(&input)
            .expect("write paths");
        let out = child.wait_with_output().expect("python3");
        assert!(out.status.success(), "python3 listing xattrs failed");
        String::from_utf8(out.stdout)
            .expect("ascii")
            .lines()
            .map(|line| {
                line.split_whitespace()
                    .map(|pair| {
                        let (name, value) = pair.split_once('=').expect("name=hex");
                        (name.to_owned(), hex::decode(value).expect("hex"))
                    })
                    .collect()
            })
            .collect()
    }

    /// An image mounted read-only on a fresh directory, unmounted on drop.
    struct Mounted {
        dir: PathBuf,
        _holder: tempfile::TempDir,
    }

    impl Mounted {
        /// File-backed first (Linux 6.12 and later mount an image file directly), then through
        /// a loop device (Debian 12's 6.1).
        fn new(image: &Path) -> Result<Mounted, String> {
            let holder = tempfile::tempdir().map_err(|e| e.to_string())?;
            let dir = holder.path().join("mnt");
            fs::create_dir(&dir).map_err(|e| e.to_string())?;
            let mut errors = Vec::new();
            for options in ["ro", "ro,loop"] {
                match Command::new("mount")
                    .args(["-t", "erofs", "-o", options])
                    .arg(image)
                    .arg(&dir)
                    .output()
                {
                    Ok(out) if out.status.success() => {
                        return Ok(Mounted {
                            dir,
                            _holder: holder,
                        });
                    }
                    Ok(out) => errors.push(format!(
                        "mount -o {options}: {}",
                        String::from_utf8_lossy(&out.stderr).trim()
                    )),
                    Err(e) => errors.push(format!("mount: {e}")),
                }
            }
            Err(format!("the image does not mount: {}", errors.join("; ")))
        }
    }

    impl Drop for Mounted {
        fn drop(&mut self) {
            let ok = Command::new("umount")
                .arg(&self.dir)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                // Busy (a failed assertion mid-walk leaves nothing open, but be sure the
                // mount does not outlive the test).
                let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
            }
        }
    }
}
