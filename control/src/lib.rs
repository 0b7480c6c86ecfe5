//! Stampede's control plane (HTTP/JSON API, durable state, authentication, audit log, metrics).
//!
//! Not built yet: see the control-plane issue. The crate exists so the workspace layout is the
//! final one from the start.
