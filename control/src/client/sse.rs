//! `/api/v1/events` read as Server-Sent Events, parsed by the sse-stream crate (WHATWG HTML
//! §9.2.6 field parsing and line endings) over the response's chunks.
use std::pin::Pin;

use futures_util::{Stream, StreamExt as _, stream};
use sse_stream::{Sse, SseByteStream};

use super::error::ClientError;

/// One message of a Server-Sent Events stream, as far as the API uses it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseMessage {
    /// `event:`; `message` when absent.
    pub event: String,
    /// `data:` lines joined with `\n`.
    pub data: String,
}

impl SseMessage {
    /// The message of a block with data; `None` for a keep-alive comment, or a block that
    /// carries only an id or a retry delay.
    fn from_block(block: Sse) -> Option<Self> {
        let data = block.data.filter(|d| !d.is_empty())?;
        Some(Self {
            event: block.event.unwrap_or_else(|| "message".to_owned()),
            data,
        })
    }
}

type Messages = Pin<Box<dyn Stream<Item = Result<Sse, sse_stream::Error>> + Send>>;

/// A response body read as Server-Sent Events.
pub struct EventStream {
    url: String,
    messages: Messages,
}

impl std::fmt::Debug for EventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStream")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl EventStream {
    /// Reads `response` (from `url`, for errors) from its start.
    pub(super) fn new(url: String, response: reqwest::Response) -> Self {
        // The body's chunks as a stream, without reqwest's `stream` feature.
        let chunks = stream::try_unfold(response, |mut response| async move {
            Ok::<_, reqwest::Error>(response.chunk().await?.map(|bytes| (bytes, response)))
        });
        Self::from_chunks(url, chunks)
    }

    fn from_chunks<S>(url: String, chunks: S) -> Self
    where
        S: Stream<Item = Result<bytes::Bytes, reqwest::Error>> + Send + 'static,
    {
        Self {
            url,
            messages: Box::pin(SseByteStream::new(chunks)),
        }
    }

    /// The next message with data, or `None` when the server ends the stream. Keep-alive
    /// comments are skipped.
    pub async fn next(&mut self) -> Result<Option<SseMessage>, ClientError> {
        while let Some(block) = self.messages.next().await {
            let block = block.map_err(|e| match e {
                sse_stream::Error::Body(body) => match body.downcast::<reqwest::Error>() {
                    Ok(source) => ClientError::Http {
                        url: self.url.clone(),
                        source: *source,
                    },
                    Err(other) => ClientError::BadAnswer {
                        path: self.url.clone(),
                        problem: other.to_string(),
                    },
                },
                other => ClientError::BadAnswer {
                    path: self.url.clone(),
                    problem: format!("not a Server-Sent Events stream: {other}"),
                },
            })?;
            if let Some(message) = SseMessage::from_block(block) {
                return Ok(Some(message));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn messages_end_at_a_blank_line_whatever_the_line_ends_and_may_span_chunks() {
        let chunks: Vec<Result<bytes::Bytes, reqwest::Error>> = [
            &b"event: lagged\r\ndata: 3\r\n\r\n: keep-alive\n\ndata: a\nda"[..],
            b"ta:b\n",
            b"\n",
            b"id: 7\n\n",
            b"data: unended",
        ]
        .into_iter()
        .map(|c| Ok(bytes::Bytes::from_static(c)))
        .collect();
        let mut events = EventStream::from_chunks("test".into(), stream::iter(chunks));
        let mut next = async || events.next().await.expect("parses");
        assert_eq!(
            next().await,
            Some(SseMessage {
                event: "lagged".into(),
                data: "3".into()
            })
        );
        // The keep-alive comment is skipped; data lines join with a newline.
        assert_eq!(
            next().await,
            Some(SseMessage {
                event: "message".into(),
                data: "a\nb".into()
            })
        );
        // A block without data is skipped, and one the stream ends inside is dropped.
        assert_eq!(next().await, None);
    }
}
