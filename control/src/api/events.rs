//! `GET /api/v1/events`: boot events and image import progress as Server-Sent Events, from now
//! until the client or the server goes.
use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use stampede_proto::events::BootEvent;
use tokio::sync::{broadcast, watch};

use super::error::{ApiError, QueryArg, parse_mac};
use crate::api_types::ImportJob;
use crate::model::MacAddr;
use crate::sessions::{BootSessions, EventView};
use crate::state::ControlState;
use crate::timestamp::{timed_value, with_rfc3339};

/// Tells long-lived responses (`/api/v1/events`) that the server is shutting down.
#[derive(Debug, Clone)]
pub(super) struct Stopping(pub(super) watch::Receiver<bool>);

/// Query of `GET /api/v1/events`.
#[derive(Debug, Clone, Deserialize)]
pub(super) struct EventsQuery {
    /// Only this machine's events.
    mac: Option<String>,
}

/// What the event stream waits on between events.
struct EventFeed {
    live: broadcast::Receiver<Arc<BootEvent>>,
    /// Image import progress; `None` when the stream is one machine's.
    imports: Option<broadcast::Receiver<Arc<ImportJob>>>,
    sessions: Arc<BootSessions>,
    mac: Option<MacAddr>,
    stop: Option<watch::Receiver<bool>>,
}

impl EventFeed {
    /// The next SSE event, or `None` when the server stops.
    async fn next(&mut self) -> Option<Event> {
        loop {
            let stopped = async {
                match &mut self.stop {
                    Some(stop) => drop(stop.wait_for(|stopping| *stopping).await),
                    None => std::future::pending().await,
                }
            };
            let import = async {
                match &mut self.imports {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            };
            let received = tokio::select! {
                r = self.live.recv() => r,
                r = import => match r {
                    Ok(job) => {
                        return Some(sse_json(
                            Event::default().event("image_import"),
                            &timed_value(&*job),
                        ));
                    }
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        return Some(sse_json(
                            Event::default().event("lagged"),
                            &serde_json::json!({ "missed": missed }),
                        ));
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        self.imports = None;
                        continue;
                    }
                },
                () = stopped => return None,
            };
            match received {
                Ok(event) => {
                    if self.mac.is_some_and(|m| event.mac != Some(m.0)) {
                        continue;
                    }
                    let view = EventView::from(&*event);
                    let data = serde_json::to_value(&view).map(with_rfc3339);
                    return Some(sse_json(
                        Event::default().event(view.kind.name()),
                        &data.unwrap_or_default(),
                    ));
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    // The data plane never waits for a reader; tell this one what it lost.
                    self.sessions.note_missed(missed);
                    return Some(sse_json(
                        Event::default().event("lagged"),
                        &serde_json::json!({ "missed": missed }),
                    ));
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

fn sse_json(event: Event, data: &impl Serialize) -> Event {
    // Serializing these plain structs cannot fail; an empty data line beats ending the stream.
    let json = serde_json::to_string(data).unwrap_or_default();
    event.data(json)
}

/// `GET /api/v1/events`: every boot event from now on, as Server-Sent Events.
pub(super) async fn boot_events(
    State(state): State<ControlState>,
    stopping: Option<Extension<Stopping>>,
    QueryArg(q): QueryArg<EventsQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, std::convert::Infallible>>>, ApiError> {
    let mac = q.mac.as_deref().map(parse_mac).transpose()?;
    let sessions = state.sessions().clone();
    let feed = EventFeed {
        live: sessions.subscribe(),
        imports: mac.is_none().then(|| state.imports().subscribe()),
        sessions,
        mac,
        stop: stopping.map(|Extension(Stopping(rx))| rx),
    };
    let stream = futures_util::stream::unfold(feed, |mut feed| async move {
        let event = feed.next().await?;
        Some((Ok(event), feed))
    });
    // Comments every 15 s keep proxies and NAT from closing an idle stream.
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
