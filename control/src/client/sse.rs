//! `/api/v1/events` read as Server-Sent Events.
use super::error::ClientError;

/// One message of a Server-Sent Events stream (WHATWG HTML §9.2.6), as far as the API uses it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseMessage {
    /// `event:`; `message` when absent.
    pub event: String,
    /// `data:` lines joined with `\n`.
    pub data: String,
}

/// A response body read as Server-Sent Events.
#[derive(Debug)]
pub struct EventStream {
    url: String,
    response: reqwest::Response,
    buf: Vec<u8>,
}

impl EventStream {
    /// Reads `response` (from `url`, for errors) from its start.
    pub(super) fn new(url: String, response: reqwest::Response) -> Self {
        Self {
            url,
            response,
            buf: Vec::new(),
        }
    }

    /// The next message with data, or `None` when the server ends the stream. Keep-alive
    /// comments are skipped.
    pub async fn next(&mut self) -> Result<Option<SseMessage>, ClientError> {
        loop {
            if let Some(message) = take_sse_message(&mut self.buf) {
                if message.data.is_empty() {
                    continue;
                }
                return Ok(Some(message));
            }
            let chunk = self
                .response
                .chunk()
                .await
                .map_err(|source| ClientError::Http {
                    url: self.url.clone(),
                    source,
                })?;
            match chunk {
                Some(bytes) => self.buf.extend_from_slice(&bytes),
                None => return Ok(None),
            }
        }
    }
}

/// Removes the first complete message (ended by a blank line) from `buf`.
fn take_sse_message(buf: &mut Vec<u8>) -> Option<SseMessage> {
    // Lines end in \n, \r\n or \r; axum sends \n, so normalize CRs before looking for a blank line.
    if buf.contains(&b'\r') {
        let text = String::from_utf8_lossy(buf)
            .replace("\r\n", "\n")
            .replace('\r', "\n");
        *buf = text.into_bytes();
    }
    let end = buf.windows(2).position(|w| w == b"\n\n")?;
    let block: Vec<u8> = buf.drain(..end + 2).collect();
    let text = String::from_utf8_lossy(&block);
    let mut message = SseMessage {
        event: "message".to_owned(),
        data: String::new(),
    };
    let mut data: Vec<&str> = Vec::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with(':') {
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => message.event = value.to_owned(),
            "data" => data.push(value),
            _ => {}
        }
    }
    message.data = data.join("\n");
    Some(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_end_at_a_blank_line_whatever_the_line_ends() {
        let mut buf = b"event: lagged\r\ndata: 3\r\n\r\n: keep-alive\n\ndata: a\ndata:b\n".to_vec();
        assert_eq!(
            take_sse_message(&mut buf),
            Some(SseMessage {
                event: "lagged".into(),
                data: "3".into()
            })
        );
        // A comment alone is a message without data (EventStream::next skips it).
        assert_eq!(
            take_sse_message(&mut buf),
            Some(SseMessage {
                event: "message".into(),
                data: String::new()
            })
        );
        // Not yet ended: stays in the buffer until the blank line arrives.
        assert_eq!(take_sse_message(&mut buf), None);
        buf.extend_from_slice(b"\n");
        assert_eq!(
            take_sse_message(&mut buf),
            Some(SseMessage {
                event: "message".into(),
                data: "a\nb".into()
            })
        );
        assert!(buf.is_empty());
    }
}
