//! A serial console transcript with the time each line appeared, for boot-time breakdowns.
//!
//! QEMU writes the guest's serial output to a file ([`crate::qemu::MachineSpec::serial_log`]).
//! [`ConsoleStamper`] follows that file from a background thread every 10 ms and records each new
//! chunk with its time since the machine started; [`StampedLine`]s are rebuilt from the chunks, so a
//! line that grows over seconds (iPXE's `Configuring (net0 ..)...... ok`) shows when it began and
//! when it ended. Firmware's terminal escape sequences are stripped.
use std::{
    fs,
    io::{Read as _, Seek as _, SeekFrom},
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

/// How often the transcript is read: the resolution of the stamps.
pub const POLL: Duration = Duration::from_millis(10);

/// One console line and when its first and its last byte appeared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StampedLine {
    pub first: Duration,
    pub last: Duration,
    pub text: String,
}

/// Bytes as they were read, with the time since the machine started.
type Chunks = Arc<Mutex<Vec<(Duration, Vec<u8>)>>>;

/// Follows a serial transcript until dropped.
#[derive(Debug)]
pub struct ConsoleStamper {
    chunks: Chunks,
    stop: Arc<AtomicBool>,
    reader: Option<thread::JoinHandle<()>>,
}

impl ConsoleStamper {
    /// Follows `path` (which may not exist yet); stamps count from `started`.
    pub fn follow(path: PathBuf, started: Instant) -> Self {
        let chunks: Chunks = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let chunks = Arc::clone(&chunks);
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                let mut offset = 0u64;
                let mut buf = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(mut file) = fs::File::open(&path)
                        && file.seek(SeekFrom::Start(offset)).is_ok()
                    {
                        buf.clear();
                        if file.read_to_end(&mut buf).is_ok() && !buf.is_empty() {
                            offset += buf.len() as u64;
                            chunks
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                                .push((started.elapsed(), buf.clone()));
                        }
                    }
                    thread::sleep(POLL);
                }
            })
        };
        Self {
            chunks,
            stop,
            reader: Some(reader),
        }
    }

    /// The non-empty lines so far, in order.
    pub fn lines(&self) -> Vec<StampedLine> {
        let chunks = self
            .chunks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        stamped_lines(&chunks)
    }
}

impl Drop for ConsoleStamper {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

/// Rebuilds lines from stamped chunks: `\n` and `\r` end a line, escape sequences are dropped.
pub fn stamped_lines(chunks: &[(Duration, Vec<u8>)]) -> Vec<StampedLine> {
    let mut lines = Vec::new();
    let mut current: Vec<u8> = Vec::new();
    let mut first = None;
    let mut last = Duration::ZERO;
    let mut escape = Escape::None;
    let mut finish = |current: &mut Vec<u8>, first: &mut Option<Duration>, last: Duration| {
        let text = String::from_utf8_lossy(current).trim().to_owned();
        if let (false, Some(first)) = (text.is_empty(), *first) {
            lines.push(StampedLine { first, last, text });
        }
        current.clear();
        *first = None;
    };
    for (at, bytes) in chunks {
        for &b in bytes {
            let skip;
            (escape, skip) = match (escape, b) {
                (Escape::None, 0x1b) => (Escape::Start, true),
                (Escape::None, _) => (Escape::None, false),
                (Escape::Start, b'[') => (Escape::Csi, true),
                (Escape::Start, _) => (Escape::None, true),
                // CSI: parameters until a final byte in 0x40..=0x7e (ECMA-48 §5.4).
                (Escape::Csi, 0x40..=0x7e) => (Escape::None, true),
                (Escape::Csi, _) => (Escape::Csi, true),
            };
            if skip {
                continue;
            }
            match b {
                b'\n' | b'\r' => finish(&mut current, &mut first, last),
                b if b.is_ascii_graphic() || b == b' ' => {
                    first.get_or_insert(*at);
                    last = *at;
                    current.push(b);
                }
                _ => {}
            }
        }
        // Bytes after the line's last printable one (dots, `ok`) still stamp its end.
        if first.is_some() {
            last = *at;
        }
    }
    finish(&mut current, &mut first, last);
    lines
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Escape {
    None,
    Start,
    Csi,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn lines_keep_their_first_and_last_stamp_without_escapes() {
        let chunks = vec![
            (ms(10), b"\x1b[2J\x1b[01;01HiPXE 1.0\r\n".to_vec()),
            (ms(20), b"Configuring (net0)".to_vec()),
            (ms(900), b"...".to_vec()),
            (ms(1500), b" ok\r\nnext".to_vec()),
            (ms(1600), b" line\n\n".to_vec()),
        ];
        let lines = stamped_lines(&chunks);
        let got: Vec<_> = lines
            .iter()
            .map(|l| (l.first, l.last, l.text.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (ms(10), ms(10), "iPXE 1.0"),
                (ms(20), ms(1500), "Configuring (net0)... ok"),
                (ms(1500), ms(1600), "next line"),
            ]
        );
    }

    #[test]
    fn follows_a_growing_file() {
        let dir = std::env::temp_dir().join(format!("console-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("serial.log");
        fs::write(&path, b"one\n").expect("write");
        let stamper = ConsoleStamper::follow(path.clone(), Instant::now());
        let seen = crate::wait_for(Duration::from_secs(5), || {
            (stamper.lines().len() == 1).then_some(())
        });
        assert!(seen.is_some(), "first line seen");
        let mut file = fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("open");
        std::io::Write::write_all(&mut file, b"two\n").expect("append");
        let lines = crate::wait_for(Duration::from_secs(5), || {
            let lines = stamper.lines();
            (lines.len() == 2).then_some(lines)
        })
        .expect("second line seen");
        assert_eq!(lines[1].text, "two");
        assert!(lines[1].first >= lines[0].first);
        drop(stamper);
        let _ = fs::remove_dir_all(dir);
    }
}
