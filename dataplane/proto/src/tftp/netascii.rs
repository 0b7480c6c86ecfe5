//! Netascii (RFC 1350 §1, RFC 764 NVT ASCII), converted on the fly.
//!
//! Served files are stored as they are; in netascii mode each LF goes out as CR LF and each CR as
//! CR NUL (tftpd-hpa does exactly this, see `fixtures/tftp/tftpd-hpa-netascii-stream.bin`). An
//! expansion can straddle two blocks, so the encoder state is a [`Cursor`]: a position in the
//! file plus the second byte of an expansion still owed. Blocks are consecutive `blksize` slices
//! of the *encoded* stream, so the block math is the same as in octet mode.
//!
//! The client side decodes with [`Decoder`] (CR LF → LF, CR NUL → CR, a CR followed by anything
//! else is kept as is).

/// Where the encoder stands in the source file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cursor {
    /// Next source byte to encode.
    pub pos: usize,
    /// Second byte of an expansion not yet written (`\n` after CR for LF, `\0` after CR for CR).
    pub pending: Option<u8>,
}

/// Length of the encoded form of `src`.
pub fn encoded_len(src: &[u8]) -> u64 {
    src.len() as u64 + src.iter().filter(|&&b| b == b'\n' || b == b'\r').count() as u64
}

/// Encodes from `cursor` into `out` until `out` is full or the source ends; returns the number of
/// bytes written (less than `out.len()` only at the end of the file).
pub fn fill(src: &[u8], cursor: &mut Cursor, out: &mut [u8]) -> usize {
    let mut written = 0;
    while written < out.len() {
        if let Some(byte) = cursor.pending.take() {
            out[written] = byte;
            written += 1;
            continue;
        }
        let Some(&byte) = src.get(cursor.pos) else {
            break;
        };
        cursor.pos += 1;
        let (first, second) = match byte {
            b'\n' => (b'\r', Some(b'\n')),
            b'\r' => (b'\r', Some(0)),
            other => (other, None),
        };
        out[written] = first;
        written += 1;
        cursor.pending = second;
    }
    written
}

/// Advances `cursor` by `n` encoded bytes without writing them (to seek to a block when a window
/// slides or is resent). Returns how many were skipped (less than `n` only at the end).
pub fn skip(src: &[u8], cursor: &mut Cursor, n: u64) -> u64 {
    let mut skipped = 0;
    while skipped < n {
        if cursor.pending.take().is_some() {
            skipped += 1;
            continue;
        }
        let Some(&byte) = src.get(cursor.pos) else {
            break;
        };
        cursor.pos += 1;
        skipped += 1;
        if byte == b'\n' || byte == b'\r' {
            cursor.pending = Some(if byte == b'\n' { b'\n' } else { 0 });
        }
    }
    skipped
}

/// Netascii to local bytes, across block boundaries.
#[derive(Debug, Clone, Copy, Default)]
pub struct Decoder {
    /// The previous block ended in CR.
    cr: bool,
}

impl Decoder {
    /// Decodes `input`, handing decoded runs to `sink` (borrowed from `input` where possible).
    pub fn decode(&mut self, input: &[u8], mut sink: impl FnMut(&[u8])) {
        let mut start = 0;
        for (i, &byte) in input.iter().enumerate() {
            if std::mem::take(&mut self.cr) {
                match byte {
                    b'\n' => {
                        sink(b"\n");
                        start = i + 1;
                        continue;
                    }
                    0 => {
                        sink(b"\r");
                        start = i + 1;
                        continue;
                    }
                    // Not netascii; keep the CR rather than lose data, then treat `byte` as usual.
                    _ => {
                        sink(b"\r");
                        start = i;
                    }
                }
            }
            if byte == b'\r' {
                sink(&input[start..i]);
                self.cr = true;
                start = i + 1;
            }
        }
        sink(&input[start..]);
    }

    /// End of the stream: a lone trailing CR is kept.
    pub fn finish(&mut self, mut sink: impl FnMut(&[u8])) {
        if std::mem::take(&mut self.cr) {
            sink(b"\r");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOURCE: &[u8] = include_bytes!("../../fixtures/tftp/netascii-source.txt");
    const HPA_STREAM: &[u8] = include_bytes!("../../fixtures/tftp/tftpd-hpa-netascii-stream.bin");

    fn encode_in_blocks(src: &[u8], blksize: usize) -> Vec<Vec<u8>> {
        let mut cursor = Cursor::default();
        let mut blocks = Vec::new();
        loop {
            let mut block = vec![0u8; blksize];
            let n = fill(src, &mut cursor, &mut block);
            block.truncate(n);
            blocks.push(block);
            if n < blksize {
                return blocks;
            }
        }
    }

    #[test]
    fn matches_tftpd_hpa_byte_for_byte() {
        let blocks = encode_in_blocks(SOURCE, 512);
        let lens: Vec<_> = blocks.iter().map(Vec::len).collect();
        assert_eq!(
            lens,
            [512, 512, 512, 184],
            "tftpd-hpa sent these block sizes"
        );
        assert_eq!(blocks.concat(), HPA_STREAM, "same bytes as tftpd-hpa");
        assert_eq!(encoded_len(SOURCE), HPA_STREAM.len() as u64);
    }

    #[test]
    fn expansions_straddle_blocks_and_skip_agrees_with_fill() {
        let src = b"a\nb\r\r\n\n";
        for blksize in 1..12 {
            let joined = encode_in_blocks(src, blksize).concat();
            assert_eq!(joined, b"a\r\nb\r\0\r\0\r\n\r\n", "blksize {blksize}");
            for at in 0..=joined.len() as u64 {
                let mut cursor = Cursor::default();
                assert_eq!(skip(src, &mut cursor, at), at);
                let mut rest = vec![0u8; joined.len()];
                let n = fill(src, &mut cursor, &mut rest);
                assert_eq!(&rest[..n], &joined[at as usize..], "seek to {at}");
            }
        }
    }

    #[test]
    fn decoder_inverts_encoder_across_any_split() {
        for split in 1..40 {
            let mut decoder = Decoder::default();
            let mut out = Vec::new();
            for chunk in HPA_STREAM.chunks(split) {
                decoder.decode(chunk, |run| out.extend_from_slice(run));
            }
            decoder.finish(|run| out.extend_from_slice(run));
            assert_eq!(out, SOURCE, "split {split}");
        }
        let mut decoder = Decoder::default();
        let mut out = Vec::new();
        decoder.decode(b"x\ry\r\r\0", |run| out.extend_from_slice(run));
        decoder.finish(|run| out.extend_from_slice(run));
        assert_eq!(out, b"x\ry\r\r", "stray CRs are kept");
    }
}
