//! Layer blobs: an OCI layer is a tar stream, gzip- or zstd-compressed or plain
//! (`application/vnd.oci.image.layer.v1.tar{,+gzip,+zstd}`).
//!
//! The compression is told by the blob's first bytes rather than by the media type, because
//! registries and hand-written manifests mislabel layers (Docker's own `tar.gzip` media type for
//! a plain tar is a known case), while the magic numbers cannot lie: gzip is `1f 8b` (RFC 1952
//! §2.3.1), a zstd frame `28 b5 2f fd` (RFC 8878 §3.1.1), and a tar stream starts with a header
//! whose first byte is a file name, never `0x1f` or `0x28` in practice.
use std::io::{self, BufRead, BufReader, Cursor, Read};

use flate2::read::MultiGzDecoder;
use ruzstd::decoding::FrameDecoder;
use ruzstd::decoding::errors::FrameDecoderError;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// The compression a layer blob was found to have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// Returns the uncompressed tar stream of a layer blob, whatever its compression.
///
/// The magic bytes are peeked and then given back to the decoder (or to the caller, for a plain
/// tar), so nothing is lost. A truncated compressed stream reads as an error of kind
/// `UnexpectedEof` (gzip) or `Other` (zstd), never as a clean short end.
pub fn decompressed<'a>(reader: impl Read + 'a) -> io::Result<Box<dyn Read + 'a>> {
    decompressed_with_kind(reader).map(|(_, r)| r)
}

/// [`decompressed`], also telling which compression was found (for the import's log).
pub fn decompressed_with_kind<'a>(
    mut reader: impl Read + 'a,
) -> io::Result<(Compression, Box<dyn Read + 'a>)> {
    let mut magic = [0u8; 4];
    let got = read_up_to(&mut reader, &mut magic)?;
    let head = &magic[..got];
    // The peeked bytes go back in front of the rest of the stream.
    let whole = Cursor::new(magic).take(got as u64).chain(reader);
    if head.starts_with(&GZIP_MAGIC) {
        // Multi-member: pigz and some registries' re-compressors write several gzip members,
        // which RFC 1952 §2.2 says are one file concatenated.
        return Ok((Compression::Gzip, Box::new(MultiGzDecoder::new(whole))));
    }
    if head == ZSTD_MAGIC {
        return Ok((Compression::Zstd, Box::new(ZstdFrames::new(whole))));
    }
    Ok((Compression::None, Box::new(whole)))
}

/// Reads until `buf` is full or the stream ends; a short stream is not an error here (an empty
/// or tiny blob is judged by the tar reader).
fn read_up_to(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match reader.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// A zstd stream of one or more frames (RFC 8878 §3.1: "a Zstandard compressed data is made of
/// one or more frames"; `zstd --rsyncable`, pzstd and seekable writers emit several).
/// ruzstd's `StreamingDecoder` stops after the first frame, so this starts the next one itself.
struct ZstdFrames<R: Read> {
    source: BufReader<R>,
    decoder: FrameDecoder,
    started: bool,
}

impl<R: Read> ZstdFrames<R> {
    fn new(source: R) -> Self {
        Self {
            source: BufReader::new(source),
            decoder: FrameDecoder::new(),
            started: false,
        }
    }

    /// Starts the next frame; `false` at the clean end of the stream (between frames).
    fn next_frame(&mut self) -> io::Result<bool> {
        if self.source.fill_buf()?.is_empty() {
            return Ok(false);
        }
        self.decoder.init(&mut self.source).map_err(frame_error)?;
        self.started = true;
        Ok(true)
    }
}

fn frame_error(e: FrameDecoderError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("zstd: {e}"))
}

impl<R: Read> Read for ZstdFrames<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if !self.started && !self.next_frame()? {
                return Ok(0);
            }
            while self.decoder.can_collect() < buf.len() && !self.decoder.is_finished() {
                let want = buf.len() - self.decoder.can_collect();
                self.decoder
                    .decode_blocks(
                        &mut self.source,
                        ruzstd::decoding::BlockDecodingStrategy::UptoBytes(want),
                    )
                    // A stream cut inside a frame surfaces here; it is data missing, so it
                    // reads as a truncation.
                    .map_err(|e| {
                        io::Error::new(io::ErrorKind::UnexpectedEof, format!("zstd: {e}"))
                    })?;
            }
            let n = self.decoder.read(buf)?;
            if n > 0 {
                return Ok(n);
            }
            if self.decoder.is_finished() {
                self.started = false;
                continue;
            }
            return Ok(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use flate2::Compression as GzLevel;
    use flate2::write::GzEncoder;
    use ruzstd::encoding::{CompressionLevel, compress_to_vec};

    use super::*;

    fn sample() -> Vec<u8> {
        // Not a tar: the function does not care, and bytes that start like neither magic
        // show that a plain stream passes untouched.
        (0..100_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect()
    }

    fn read_all(r: &mut dyn Read) -> io::Result<Vec<u8>> {
        let mut v = Vec::new();
        r.read_to_end(&mut v)?;
        Ok(v)
    }

    #[test]
    fn plain_passes_through_with_its_first_bytes() {
        let data = sample();
        let (kind, mut r) = decompressed_with_kind(&data[..]).expect("plain");
        assert_eq!(kind, Compression::None);
        assert_eq!(read_all(&mut r).expect("read"), data);
    }

    #[test]
    fn tiny_and_empty_streams_pass_through() {
        for data in [&b""[..], b"\x1f", b"\x28\xb5\x2f"] {
            let (kind, mut r) = decompressed_with_kind(data).expect("tiny");
            assert_eq!(kind, Compression::None);
            assert_eq!(read_all(&mut r).expect("read"), data);
        }
    }

    #[test]
    fn gzip_including_several_members() {
        let data = sample();
        let mut blob = Vec::new();
        for half in [&data[..5000], &data[5000..]] {
            let mut enc = GzEncoder::new(Vec::new(), GzLevel::fast());
            enc.write_all(half).expect("gz");
            blob.extend(enc.finish().expect("gz"));
        }
        let (kind, mut r) = decompressed_with_kind(&blob[..]).expect("gzip");
        assert_eq!(kind, Compression::Gzip);
        assert_eq!(read_all(&mut r).expect("read"), data);
    }

    #[test]
    fn zstd_including_several_frames() {
        let data = sample();
        let mut blob = compress_to_vec(&data[..7000], CompressionLevel::Fastest);
        blob.extend(compress_to_vec(&data[7000..], CompressionLevel::Fastest));
        let (kind, mut r) = decompressed_with_kind(&blob[..]).expect("zstd");
        assert_eq!(kind, Compression::Zstd);
        assert_eq!(read_all(&mut r).expect("read"), data);
    }

    #[test]
    fn truncated_compressed_streams_are_errors() {
        let data = sample();
        let mut enc = GzEncoder::new(Vec::new(), GzLevel::fast());
        enc.write_all(&data).expect("gz");
        let gz = enc.finish().expect("gz");
        let zst = compress_to_vec(&data[..], CompressionLevel::Fastest);
        for blob in [&gz[..gz.len() / 2], &zst[..zst.len() / 2]] {
            let mut r = decompressed(blob).expect("header is whole");
            let err = read_all(&mut r).expect_err("a cut stream must not read as complete");
            assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
        }
    }
}
