//! BEP 3 peer wire: the handshake, length-prefixed messages and a framer that never holds more
//! than one message.
//!
//! Guarantees: [`Handshake::parse`] and [`Message::parse`] never panic on any input;
//! [`FrameDecoder`] refuses a length prefix over its limit before buffering a byte of that
//! message, so a hostile peer makes it hold at most `4 + limit` bytes (one block and its header
//! with [`MAX_FRAME`]).
use thiserror::Error;

/// BEP 3: `pstrlen` = 19, then this string.
pub const PROTOCOL: &[u8; 19] = b"BitTorrent protocol";
/// 1 + 19 + 8 reserved + 20 info hash + 20 peer id.
pub const HANDSHAKE_LEN: usize = 68;
/// The block size every client requests (and the most BEP 3 clients serve): 16 KiB.
pub const BLOCK_LEN: u32 = 16 * 1024;
/// `piece`'s header after the length prefix: id, index, begin.
pub const PIECE_HEADER: usize = 9;
/// The longest message body taken: a `piece` of one block. A bitfield is longer only for a
/// torrent of more than 131,000 pieces (128 GiB at 1 MiB pieces), far past any root.
pub const MAX_FRAME: usize = PIECE_HEADER + BLOCK_LEN as usize;

/// Message ids (BEP 3).
mod id {
    pub const CHOKE: u8 = 0;
    pub const UNCHOKE: u8 = 1;
    pub const INTERESTED: u8 = 2;
    pub const NOT_INTERESTED: u8 = 3;
    pub const HAVE: u8 = 4;
    pub const BITFIELD: u8 = 5;
    pub const REQUEST: u8 = 6;
    pub const PIECE: u8 = 7;
    pub const CANCEL: u8 = 8;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum WireError {
    #[error("not a BitTorrent handshake")]
    NotBitTorrent,
    #[error("a message of {len} bytes, over the {limit}-byte limit")]
    TooLong { len: usize, limit: usize },
    #[error("message id {id} with a {len}-byte body")]
    BadLength { id: u8, len: usize },
    #[error("an empty message body")]
    Empty,
}

/// BEP 3 handshake. The swarm is private (BEP 27): no DHT (reserved bit 0x01 of byte 7), no
/// extension protocol (BEP 10, 0x10 of byte 5), no fast extension (BEP 6, 0x04 of byte 7), and
/// the info hash is the v1 one, so no v2 upgrade bit (BEP 52): all reserved bits are zero.
/// The peer's bits are kept, not acted on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handshake {
    pub reserved: [u8; 8],
    pub info_hash: [u8; 20],
    pub peer_id: [u8; 20],
}

impl Handshake {
    pub fn new(info_hash: [u8; 20], peer_id: [u8; 20]) -> Self {
        Self {
            reserved: [0; 8],
            info_hash,
            peer_id,
        }
    }

    /// Parses the first [`HANDSHAKE_LEN`] bytes of `bytes`.
    pub fn parse(bytes: &[u8]) -> Result<Self, WireError> {
        let bytes = bytes.get(..HANDSHAKE_LEN).ok_or(WireError::NotBitTorrent)?;
        if bytes[0] != 19 || &bytes[1..20] != PROTOCOL {
            return Err(WireError::NotBitTorrent);
        }
        let mut hs = Self::new([0; 20], [0; 20]);
        hs.reserved.copy_from_slice(&bytes[20..28]);
        hs.info_hash.copy_from_slice(&bytes[28..48]);
        hs.peer_id.copy_from_slice(&bytes[48..68]);
        Ok(hs)
    }

    pub fn emit(&self, out: &mut Vec<u8>) {
        out.push(19);
        out.extend_from_slice(PROTOCOL);
        out.extend_from_slice(&self.reserved);
        out.extend_from_slice(&self.info_hash);
        out.extend_from_slice(&self.peer_id);
    }
}

/// One 16 KiB (or shorter, at a piece's end) block of a piece.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockRef {
    pub piece: u32,
    pub begin: u32,
    pub len: u32,
}

/// A message, borrowing its payload from the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    KeepAlive,
    Choke,
    Unchoke,
    Interested,
    NotInterested,
    Have(u32),
    Bitfield(&'a [u8]),
    Request(BlockRef),
    Piece {
        piece: u32,
        begin: u32,
        data: &'a [u8],
    },
    Cancel(BlockRef),
    /// Any other id (`port` of BEP 5, BEP 6's, BEP 10's): ignored, as BEP 3 allows.
    Unknown(u8),
}

fn be32(bytes: &[u8]) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[..4]);
    u32::from_be_bytes(b)
}

impl<'a> Message<'a> {
    /// Parses a frame's body (without its length prefix; empty is a keep-alive).
    pub fn parse(body: &'a [u8]) -> Result<Self, WireError> {
        let Some((&id, rest)) = body.split_first() else {
            return Ok(Self::KeepAlive);
        };
        let exact = |len: usize| {
            if rest.len() == len {
                Ok(())
            } else {
                Err(WireError::BadLength {
                    id,
                    len: rest.len(),
                })
            }
        };
        let block = |rest: &[u8]| BlockRef {
            piece: be32(&rest[0..4]),
            begin: be32(&rest[4..8]),
            len: be32(&rest[8..12]),
        };
        Ok(match id {
            id::CHOKE => exact(0).map(|()| Self::Choke)?,
            id::UNCHOKE => exact(0).map(|()| Self::Unchoke)?,
            id::INTERESTED => exact(0).map(|()| Self::Interested)?,
            id::NOT_INTERESTED => exact(0).map(|()| Self::NotInterested)?,
            id::HAVE => exact(4).map(|()| Self::Have(be32(rest)))?,
            id::BITFIELD => Self::Bitfield(rest),
            id::REQUEST => exact(12).map(|()| Self::Request(block(rest)))?,
            id::CANCEL => exact(12).map(|()| Self::Cancel(block(rest)))?,
            id::PIECE => {
                if rest.len() < 8 {
                    return Err(WireError::BadLength {
                        id,
                        len: rest.len(),
                    });
                }
                Self::Piece {
                    piece: be32(&rest[0..4]),
                    begin: be32(&rest[4..8]),
                    data: &rest[8..],
                }
            }
            other => Self::Unknown(other),
        })
    }

    /// Bytes [`Self::emit`] writes, length prefix included.
    pub fn wire_len(&self) -> usize {
        4 + match self {
            Self::KeepAlive => 0,
            Self::Choke | Self::Unchoke | Self::Interested | Self::NotInterested => 1,
            Self::Unknown(_) => 1,
            Self::Have(_) => 5,
            Self::Bitfield(bits) => 1 + bits.len(),
            Self::Request(_) | Self::Cancel(_) => 13,
            Self::Piece { data, .. } => PIECE_HEADER + data.len(),
        }
    }

    /// Appends the message, length prefix first.
    pub fn emit(&self, out: &mut Vec<u8>) {
        let len = u32::try_from(self.wire_len() - 4).unwrap_or(u32::MAX);
        out.extend_from_slice(&len.to_be_bytes());
        let block = |out: &mut Vec<u8>, id: u8, b: &BlockRef| {
            out.push(id);
            out.extend_from_slice(&b.piece.to_be_bytes());
            out.extend_from_slice(&b.begin.to_be_bytes());
            out.extend_from_slice(&b.len.to_be_bytes());
        };
        match self {
            Self::KeepAlive => {}
            Self::Choke => out.push(id::CHOKE),
            Self::Unchoke => out.push(id::UNCHOKE),
            Self::Interested => out.push(id::INTERESTED),
            Self::NotInterested => out.push(id::NOT_INTERESTED),
            Self::Unknown(other) => out.push(*other),
            Self::Have(piece) => {
                out.push(id::HAVE);
                out.extend_from_slice(&piece.to_be_bytes());
            }
            Self::Bitfield(bits) => {
                out.push(id::BITFIELD);
                out.extend_from_slice(bits);
            }
            Self::Request(b) => block(out, id::REQUEST, b),
            Self::Cancel(b) => block(out, id::CANCEL, b),
            Self::Piece { piece, begin, data } => {
                out.push(id::PIECE);
                out.extend_from_slice(&piece.to_be_bytes());
                out.extend_from_slice(&begin.to_be_bytes());
                out.extend_from_slice(data);
            }
        }
    }
}

/// Splits a byte stream into the handshake and then message bodies. Holds at most one
/// message: [`Self::push`] takes only the bytes the current frame still needs, so the caller
/// feeds the rest again after taking the frame.
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    limit: usize,
    buf: Vec<u8>,
    handshake_done: bool,
}

/// What [`FrameDecoder::push`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// Not a whole frame yet.
    Partial,
    Handshake,
    Message,
}

impl FrameDecoder {
    /// A decoder for a connection; `limit` is the longest message body taken.
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            buf: Vec::new(),
            handshake_done: false,
        }
    }

    /// Takes bytes from `input` for the current frame; returns how many it took and whether a
    /// frame is now complete (read it with [`Self::frame`], then [`Self::consume`]).
    pub fn push(&mut self, input: &[u8]) -> Result<(usize, Frame), WireError> {
        let want = |have: usize, need: usize| need.saturating_sub(have);
        let mut taken = 0;
        loop {
            let need = if !self.handshake_done {
                HANDSHAKE_LEN
            } else if self.buf.len() < 4 {
                4
            } else {
                let len = be32(&self.buf) as usize;
                if len > self.limit {
                    return Err(WireError::TooLong {
                        len,
                        limit: self.limit,
                    });
                }
                4 + len
            };
            if self.buf.len() == need && (need != 4 || !self.handshake_done) {
                return Ok((
                    taken,
                    if self.handshake_done {
                        Frame::Message
                    } else {
                        Frame::Handshake
                    },
                ));
            }
            if self.buf.len() == 4 && need == 4 {
                // A length prefix of 0: a keep-alive, whole already.
                if be32(&self.buf) == 0 {
                    return Ok((taken, Frame::Message));
                }
                continue;
            }
            let n = want(self.buf.len(), need).min(input.len() - taken);
            if n == 0 {
                return Ok((taken, Frame::Partial));
            }
            // Exactly what this frame still needs, never a doubling: the buffer stays within
            // one frame (`need` is at most 4 + limit, or the handshake's 68).
            self.buf.reserve_exact(need - self.buf.len());
            self.buf.extend_from_slice(&input[taken..taken + n]);
            taken += n;
        }
    }

    /// The complete frame: the handshake's 68 bytes, or a message body without its prefix.
    pub fn frame(&self) -> &[u8] {
        if self.handshake_done {
            self.buf.get(4..).unwrap_or(&[])
        } else {
            &self.buf
        }
    }

    /// Drops the frame just read.
    pub fn consume(&mut self) {
        self.handshake_done = true;
        self.buf.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_handshake_round_trips_and_needs_the_protocol_string() {
        let hs = Handshake::new([7; 20], *b"-SP0001-abcdefghijkl");
        let mut out = Vec::new();
        hs.emit(&mut out);
        assert_eq!(out.len(), HANDSHAKE_LEN);
        assert_eq!(&out[..20], b"\x13BitTorrent protocol");
        assert_eq!(Handshake::parse(&out), Ok(hs));
        out[5] = b'X';
        assert_eq!(Handshake::parse(&out), Err(WireError::NotBitTorrent));
        assert_eq!(Handshake::parse(&out[..67]), Err(WireError::NotBitTorrent));
    }

    #[test]
    fn messages_parse_from_fixtures_and_emit_back() {
        let fixtures: &[(&[u8], Message<'_>)] = &[
            (b"\0\0\0\0", Message::KeepAlive),
            (b"\0\0\0\x01\x00", Message::Choke),
            (b"\0\0\0\x01\x01", Message::Unchoke),
            (b"\0\0\0\x01\x02", Message::Interested),
            (b"\0\0\0\x01\x03", Message::NotInterested),
            (b"\0\0\0\x05\x04\0\0\x01\x02", Message::Have(258)),
            (b"\0\0\0\x03\x05\xff\x80", Message::Bitfield(b"\xff\x80")),
            (
                b"\0\0\0\x0d\x06\0\0\0\x01\0\0\x40\0\0\0\x40\0",
                Message::Request(BlockRef {
                    piece: 1,
                    begin: 16384,
                    len: 16384,
                }),
            ),
            (
                b"\0\0\0\x0d\x08\0\0\0\x01\0\0\0\0\0\0\x40\0",
                Message::Cancel(BlockRef {
                    piece: 1,
                    begin: 0,
                    len: 16384,
                }),
            ),
            (
                b"\0\0\0\x0b\x07\0\0\0\x02\0\0\0\x10ab",
                Message::Piece {
                    piece: 2,
                    begin: 16,
                    data: b"ab",
                },
            ),
            (b"\0\0\0\x03\x09\x1a\xe1", Message::Unknown(9)),
        ];
        for (bytes, message) in fixtures {
            assert_eq!(Message::parse(&bytes[4..]), Ok(*message), "{bytes:?}");
            if !matches!(message, Message::Unknown(_)) {
                let mut out = Vec::new();
                message.emit(&mut out);
                assert_eq!(&out, bytes, "{message:?}");
                assert_eq!(message.wire_len(), bytes.len());
            }
        }
        for bad in [
            &b"\x00\x00"[..],
            b"\x04\0\0\0",
            b"\x06\0\0\0\0",
            b"\x07\0\0\0\0\0\0\0",
        ] {
            assert!(
                matches!(Message::parse(bad), Err(WireError::BadLength { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_decoder_splits_a_stream_fed_byte_by_byte_and_refuses_long_frames() {
        let mut stream = Vec::new();
        Handshake::new([1; 20], [2; 20]).emit(&mut stream);
        Message::KeepAlive.emit(&mut stream);
        Message::Have(5).emit(&mut stream);
        Message::Piece {
            piece: 0,
            begin: 0,
            data: &[9; 100],
        }
        .emit(&mut stream);
        let mut decoder = FrameDecoder::new(MAX_FRAME);
        let mut frames = Vec::new();
        for byte in &stream {
            let mut input = std::slice::from_ref(byte);
            while !input.is_empty() || decoder.frame() == [0u8; 0] {
                let (taken, frame) = decoder.push(input).expect("valid stream");
                input = &input[taken..];
                if frame == Frame::Partial {
                    break;
                }
                frames.push((frame, decoder.frame().to_vec()));
                decoder.consume();
            }
        }
        assert_eq!(frames.len(), 4, "{frames:?}");
        assert_eq!(frames[0].0, Frame::Handshake);
        assert_eq!(frames[1].1, b"");
        assert_eq!(frames[2].1, b"\x04\0\0\0\x05");
        assert_eq!(frames[3].1.len(), PIECE_HEADER + 100);

        let mut decoder = FrameDecoder::new(MAX_FRAME);
        let mut hs = Vec::new();
        Handshake::new([1; 20], [2; 20]).emit(&mut hs);
        assert_eq!(decoder.push(&hs), Ok((68, Frame::Handshake)));
        decoder.consume();
        let huge = (MAX_FRAME as u32 + 1).to_be_bytes();
        assert!(matches!(
            decoder.push(&huge),
            Err(WireError::TooLong { .. })
        ));
        assert!(decoder.buf.capacity() <= 4 + MAX_FRAME);

        // A whole block fed a byte at a time grows the buffer to the frame, not past it.
        let mut decoder = FrameDecoder::new(MAX_FRAME);
        assert_eq!(decoder.push(&hs), Ok((68, Frame::Handshake)));
        decoder.consume();
        let mut block = Vec::new();
        Message::Piece {
            piece: 0,
            begin: 0,
            data: &[1; BLOCK_LEN as usize],
        }
        .emit(&mut block);
        for (i, byte) in block.iter().enumerate() {
            let (_, frame) = decoder.push(std::slice::from_ref(byte)).expect("valid");
            assert_eq!(frame == Frame::Message, i == block.len() - 1);
        }
        assert_eq!(decoder.frame().len(), MAX_FRAME);
        assert!(
            decoder.buf.capacity() <= 4 + MAX_FRAME,
            "{}",
            decoder.buf.capacity()
        );
    }
}
