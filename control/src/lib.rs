//! Stampede's control plane: an HTTP/JSON API over the fleet (machines, boot profiles, images,
//! leases), kept in one embedded redb file, with bearer-token roles, a hash-chained audit log and
//! a Prometheus metrics registry.
//!
//! # How the data plane uses it
//! - Fleet: [`ControlState::snapshot`] gives the current [`FleetSnapshot`] (an `Arc`, replaced
//!   whole on every change); [`ControlState::subscribe`] gives a `watch` receiver that sees each
//!   new one. Workers read the `Arc` they hold; no lock is taken on the boot path.
//! - Leases: [`DurableLeaseStore`] is the DHCP server's `LeaseStore`, backed by the same file,
//!   with group commit; [`DurableLeaseStore::subscribe_durable`] says when held ACKs may go.
//! - Metrics: the data plane registers counters and gauges in [`Metrics`]; `/metrics` renders
//!   them.
//! - Boot events: [`ControlState::sessions`] is the data plane's
//!   [`EventSink`](stampede_proto::events::EventSink); it keeps per-machine boot timelines for
//!   `/api/v1/sessions` and streams every event to `/api/v1/events`.
//!
//! - Images: [`ControlState::attach_image_store`] gives imports (`/api/v1/images/imports`,
//!   [`imports`]) the content store to copy into; each import runs on a thread of its own.
//!
//! # Running the API
//! [`api::serve`] with an [`api::ApiConfig`] (default `127.0.0.1:7070`, plain HTTP; HTTPS with
//! a [`tls::ApiTls`]); the API runs on the tokio runtime it is given, which is meant to live on
//! cores the data plane does not use.
pub mod api;
pub mod api_types;
pub mod audit;
pub mod auth;
pub mod backup;
pub mod ca;
pub mod client;
pub mod ctl;
pub mod imports;
pub mod leases;
pub mod metrics;
pub mod model;
pub mod openapi;
mod session_store;
pub mod sessions;
pub mod stage_timing;
pub mod state;
mod store;
pub mod timestamp;
pub mod tls;
pub mod validation;

pub use api_types::PutOutcome;
pub use audit::{AuditEntry, AuditProblem, AuditReport};
pub use auth::{Caller, Role};
pub use leases::{DurableLeaseStore, GroupCommitConfig, LeaseRecord};
pub use metrics::{Counter, Gauge, Histogram, Metrics};
pub use model::{BootProfile, FleetSnapshot, MacAddr, Machine, MachineSpec, ProfileSpec};
pub use session_store::SessionSaver;
pub use sessions::{BootSessions, SessionLimits};
pub use state::{ADMIN_TOKEN_ENV, ControlError, ControlState};
pub use store::StoreError;

/// An error and its sources, `: `-separated (what a log line or an API answer shows).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        // An error whose message already ends with its source's would say it twice.
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
