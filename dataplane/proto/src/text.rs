//! Text a peer chose (a TFTP file name, an HTTP target), made safe to report: in a log line, a
//! boot event or an API answer it must not be able to start a line of its own, move a terminal's
//! cursor or retitle it (issue 19: a file name with a newline forged a log line), nor fill the
//! log.

/// Most characters of peer text reported; longer text is cut and ends with `…`.
pub const PEER_TEXT_MAX_CHARS: usize = 256;

/// `bytes` as printable text: control characters and the Unicode format characters that reorder
/// or hide text (bidirectional overrides, zero-width joiners) escaped as Rust's `Debug` does
/// (`\n`, `\r`, `\t`, `\u{1b}`), a backslash doubled so an escape cannot be faked, bytes that are
/// not UTF-8 as `\xNN`; at most [`PEER_TEXT_MAX_CHARS`] characters of it.
pub fn peer_text(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().min(PEER_TEXT_MAX_CHARS) + 8);
    let mut chars = 0usize;
    let mut push = |piece: &str, out: &mut String| -> bool {
        if chars >= PEER_TEXT_MAX_CHARS {
            return false;
        }
        chars += 1;
        out.push_str(piece);
        true
    };
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            let fits = match c {
                '\\' => push("\\\\", &mut out),
                c if c.is_control() || is_format(c) => {
                    push(&c.escape_debug().to_string(), &mut out)
                }
                c => push(c.encode_utf8(&mut [0; 4]), &mut out),
            };
            if !fits {
                out.push('…');
                return out;
            }
        }
        for b in chunk.invalid() {
            if !push(&format!("\\x{b:02x}"), &mut out) {
                out.push('…');
                return out;
            }
        }
    }
    out
}

/// Unicode format characters (category Cf) that change how the text around them is shown.
fn is_format(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{061C}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{FEFF}'
            | '\u{FFF9}'..='\u{FFFB}'
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_and_format_characters_are_escaped() {
        assert_eq!(peer_text(b"undionly.kpxe"), "undionly.kpxe");
        assert_eq!(
            peer_text(b"a\nFORGED\r\t\x1b[2J\x07"),
            "a\\nFORGED\\r\\t\\u{1b}[2J\\u{7}"
        );
        assert_eq!(
            peer_text("x\u{202E}gpj.exe".as_bytes()),
            "x\\u{202e}gpj.exe"
        );
        assert_eq!(peer_text("\u{85}".as_bytes()), "\\u{85}", "C1 NEL");
        assert_eq!(
            peer_text(b"a\\nb"),
            "a\\\\nb",
            "a literal backslash-n stays apart"
        );
        assert_eq!(peer_text(b"\xff\xfeok"), "\\xff\\xfeok");
        assert_eq!(peer_text("grüße".as_bytes()), "grüße");
        assert!(!peer_text(b"\n\r\x1b\x00").chars().any(char::is_control));
    }

    #[test]
    fn long_text_is_cut() {
        let long = peer_text(&[b'a'; 10_000]);
        assert_eq!(long.chars().count(), PEER_TEXT_MAX_CHARS + 1);
        assert!(long.ends_with('…'));
        let exact = peer_text(&[b'a'; PEER_TEXT_MAX_CHARS]);
        assert_eq!(exact.len(), PEER_TEXT_MAX_CHARS, "no ellipsis when it fits");
        let escapes = peer_text(&[b'\n'; 1000]);
        assert_eq!(escapes, format!("{}…", "\\n".repeat(PEER_TEXT_MAX_CHARS)));
    }
}
