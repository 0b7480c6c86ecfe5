//! The HTTP/JSON API under `/api/v1`, plus `/metrics`.
//!
//! Every route is declared once, in [`router`], with the least role it needs; the same table
//! feeds authorization and the OpenAPI completeness test. Handlers that touch the disk run on
//! tokio's blocking pool (a redb commit fsyncs). What a failed request answers, and the
//! extractors that answer the same way, are in `error`; the Server-Sent Events of
//! `/api/v1/events` in `events`.
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, on};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api_types::{ImportRequest, IssuedToken, NewToken, OUTCOME_HEADER, PutOutcome, listed};
use crate::auth::{Caller, Role};
use crate::model::{
    BootProfile, EntrySource, FleetEntry, ImageSpec, LabelSelector, MacAddr, Machine, MachineSpec,
    ProfileSpec,
};
use crate::sessions::SessionTimeline;
use crate::state::{ControlError, ControlState};
use crate::timestamp::timed_value;
use crate::tls::ApiTls;

mod error;
mod events;

pub use error::ApiError;
use error::{Body, PathArg, QueryArg, parse_mac};
use events::Stopping;

/// Where the API listens, as written in the appliance's configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfigWire {
    /// `host:port`; default `127.0.0.1:7070`.
    #[serde(default)]
    pub listen: Option<String>,
}

/// Validated API configuration.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Loopback by default: without a certificate the API is plain HTTP, and bearer tokens
    /// must not cross a network in clear. 7070 is free on a typical boot appliance (no HTTP
    /// boot on it; that is on 80).
    pub listen: SocketAddr,
    /// HTTPS with this identity; `None`: plain HTTP.
    pub tls: Option<ApiTls>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            tls: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid API listen address {0:?}: expected host:port, e.g. 127.0.0.1:7070")]
pub struct ApiConfigError(String);

impl TryFrom<ApiConfigWire> for ApiConfig {
    type Error = ApiConfigError;

    fn try_from(wire: ApiConfigWire) -> Result<Self, Self::Error> {
        match wire.listen {
            None => Ok(Self::default()),
            Some(s) => s
                .parse()
                .map(|listen| Self { listen, tls: None })
                .map_err(|_| ApiConfigError(s)),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("API server failed: {0}")]
    Serve(#[source] std::io::Error),
}

/// Serves the API on `config.listen` until `shutdown` completes, then drains open requests.
pub async fn serve(
    config: ApiConfig,
    state: ControlState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: config.listen,
            source,
        })?;
    match config.tls {
        Some(tls) => {
            let listener = tls.listener(listener).map_err(ServeError::Serve)?;
            tracing::info!(addr = %config.listen, "control API listening (https)");
            serve_any(listener, state, shutdown).await
        }
        None => serve_on(listener, state, shutdown).await,
    }
}

/// [`serve`] on a listener the caller bound (tests bind port 0 and read the port first).
pub async fn serve_on(
    listener: TcpListener,
    state: ControlState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "control API listening");
    }
    serve_any(listener, state, shutdown).await
}

async fn serve_any<L>(
    listener: L,
    state: ControlState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    let (app, _) = router(state);
    // Event streams never end on their own; graceful shutdown would wait for them forever.
    let (stopping, stop) = watch::channel(false);
    let app = app.layer(Extension(Stopping(stop)));
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            let _ = stopping.send(true);
        })
        .await
        .map_err(ServeError::Serve)
}

/// One served route: what OpenAPI must describe and who may call it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    pub method: Method,
    /// axum path syntax, which for these routes is also OpenAPI's (`{param}`).
    pub path: &'static str,
    /// `None`: no token needed.
    pub role: Option<Role>,
}

struct Routes {
    router: Router<ControlState>,
    specs: Vec<RouteSpec>,
    state: ControlState,
}

impl Routes {
    fn add<H, T>(mut self, method: Method, path: &'static str, role: Option<Role>, h: H) -> Self
    where
        H: axum::handler::Handler<T, ControlState>,
        T: 'static,
    {
        let filter = MethodFilter::try_from(method.clone()).expect("routes use standard methods");
        let mut endpoint = on(filter, h);
        if let Some(role) = role {
            let guard = RouteGuard {
                state: self.state.clone(),
                role,
            };
            endpoint = endpoint.route_layer(middleware::from_fn_with_state(guard, require_role));
        }
        self.router = self.router.route(path, endpoint);
        self.specs.push(RouteSpec { method, path, role });
        self
    }
}

/// The API's router and the table of its routes.
pub fn router(state: ControlState) -> (Router, Vec<RouteSpec>) {
    use Method as M;
    use Role::{Admin, Operator, Read};
    let routes = Routes {
        router: Router::new(),
        specs: Vec::new(),
        state: state.clone(),
    }
    .add(M::GET, "/api/v1/health", None, health)
    .add(M::GET, "/api/v1/openapi.json", None, openapi)
    .add(M::GET, "/metrics", Some(Read), metrics)
    .add(M::GET, "/api/v1/machines", Some(Read), list_machines)
    .add(M::POST, "/api/v1/machines", Some(Operator), create_machine)
    .add(M::GET, "/api/v1/machines/{mac}", Some(Read), get_machine)
    .add(
        M::PUT,
        "/api/v1/machines/{mac}",
        Some(Operator),
        put_machine,
    )
    .add(
        M::DELETE,
        "/api/v1/machines/{mac}",
        Some(Operator),
        delete_machine,
    )
    .add(M::GET, "/api/v1/profiles", Some(Read), list_profiles)
    .add(M::POST, "/api/v1/profiles", Some(Operator), create_profile)
    .add(M::GET, "/api/v1/profiles/{name}", Some(Read), get_profile)
    .add(
        M::PUT,
        "/api/v1/profiles/{name}",
        Some(Operator),
        put_profile,
    )
    .add(
        M::DELETE,
        "/api/v1/profiles/{name}",
        Some(Operator),
        delete_profile,
    )
    .add(M::GET, "/api/v1/images", Some(Read), list_images)
    .add(M::POST, "/api/v1/images", Some(Operator), register_image)
    .add(M::GET, "/api/v1/images/imports", Some(Read), list_imports)
    .add(
        M::POST,
        "/api/v1/images/imports",
        Some(Operator),
        start_import,
    )
    .add(
        M::GET,
        "/api/v1/images/imports/{id}",
        Some(Read),
        get_import,
    )
    .add(M::GET, "/api/v1/images/{sha256}", Some(Read), get_image)
    .add(
        M::DELETE,
        "/api/v1/images/{sha256}",
        Some(Operator),
        delete_image,
    )
    .add(M::GET, "/api/v1/leases", Some(Read), list_leases)
    .add(M::GET, "/api/v1/sessions", Some(Read), list_sessions)
    .add(M::GET, "/api/v1/sessions/{mac}", Some(Read), get_session)
    .add(M::GET, "/api/v1/events", Some(Read), events::boot_events)
    .add(M::GET, "/api/v1/audit", Some(Read), list_audit)
    .add(M::GET, "/api/v1/audit/verify", Some(Read), verify_audit)
    .add(M::GET, "/api/v1/backup", Some(Admin), backup)
    .add(M::GET, "/api/v1/tokens", Some(Admin), list_tokens)
    .add(M::POST, "/api/v1/tokens", Some(Admin), create_token)
    .add(
        M::DELETE,
        "/api/v1/tokens/{name}",
        Some(Admin),
        revoke_token,
    );
    let router = routes
        .router
        .layer(middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
        .with_state(state);
    (router, routes.specs)
}

#[derive(Clone)]
struct RouteGuard {
    state: ControlState,
    role: Role,
}

async fn require_role(
    State(guard): State<RouteGuard>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let token = bearer_token(req.headers()).ok_or(ApiError::Unauthenticated)?;
    let caller = guard
        .state
        .authenticate(token)?
        .ok_or(ApiError::Unauthenticated)?;
    if caller.role < guard.role {
        return Err(ApiError::Forbidden {
            need: guard.role,
            have: caller.role,
        });
    }
    req.extensions_mut().insert(caller);
    Ok(next.run(req).await)
}

fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    // RFC 7235 §2.1: the scheme is case-insensitive.
    (scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty()).then(|| token.trim())
}

async fn count_requests(State(state): State<ControlState>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    // The matched route, not the raw path, so label values stay bounded.
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(req).await;
    if let Ok(c) = state.metrics().counter(
        "stampede_api_requests_total",
        "API requests by route, method and status",
        &[
            ("route", &route),
            ("method", method.as_str()),
            ("status", response.status().as_str()),
        ],
    ) {
        c.inc();
    }
    response
}

/// Runs blocking state work on tokio's blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ControlError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(ApiError::from)
}

fn with_outcome<T: Serialize>(outcome: PutOutcome, body: T) -> Response {
    let status = if outcome == PutOutcome::Created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let mut response = (status, Json(body)).into_response();
    response
        .headers_mut()
        .insert(OUTCOME_HEADER, HeaderValue::from_static(outcome.as_str()));
    response
}

/// `/api/v1/health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// `ok`, or `degraded` while the last reload was refused or entries are quarantined.
    pub status: String,
    pub machines: usize,
    pub profiles: usize,
    pub generation: u64,
    /// Why the last reload of the boot plan was refused (the previous plan still serves).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reload_error: Option<String>,
    /// Stored machines and profiles left out of the boot plan (listed with why).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub quarantined: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

async fn health(State(state): State<ControlState>) -> Json<Health> {
    let snap = state.snapshot();
    let reload_error = state.reload_error();
    let quarantined = snap.quarantine.len();
    Json(Health {
        status: if reload_error.is_none() && quarantined == 0 {
            "ok".into()
        } else {
            "degraded".into()
        },
        machines: snap.machines.len(),
        profiles: snap.profiles.len(),
        generation: snap.generation,
        reload_error,
        quarantined,
    })
}

async fn openapi() -> Json<serde_json::Value> {
    Json(crate::openapi::document())
}

async fn metrics(State(state): State<ControlState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        state.metrics().render(),
    )
        .into_response()
}

/// Query of `GET /api/v1/machines`.
#[derive(Debug, Clone, Deserialize)]
struct MachinesQuery {
    /// Only machines whose labels match ([`LabelSelector`]: `rack=r1,role!=db`).
    selector: Option<String>,
}

async fn list_machines(
    State(state): State<ControlState>,
    QueryArg(q): QueryArg<MachinesQuery>,
) -> Result<Json<Vec<serde_json::Value>>, ApiError> {
    let selector: LabelSelector = match q.selector.as_deref() {
        Some(s) => s.parse().map_err(|e: crate::model::ValidationError| {
            ApiError::BadRequest(format!("selector {s:?}: {e}"))
        })?,
        None => LabelSelector::default(),
    };
    let snap = state.snapshot();
    let file = blocking(move || Ok(state.file_fleet())).await?;
    // By MAC; an API machine replaces the file's with the same MAC, as in the boot plan.
    let mut machines: BTreeMap<MacAddr, serde_json::Value> = file
        .machines
        .values()
        .filter(|m| selector.matches(&m.labels))
        .map(|m| (m.mac, listed(m, None, EntrySource::File)))
        .collect();
    machines.extend(
        snap.machines
            .values()
            .filter(|m| selector.matches(&m.labels))
            .map(|m| {
                let why = snap.quarantined(&FleetEntry::Machine(m.mac));
                (m.mac, listed(m, why, EntrySource::Api))
            }),
    );
    Ok(Json(machines.into_values().collect()))
}

async fn get_machine(
    State(state): State<ControlState>,
    PathArg(mac): PathArg<String>,
) -> Result<Json<Machine>, ApiError> {
    let mac = parse_mac(&mac)?;
    match state.machine(mac) {
        Err(ControlError::NotFound { .. }) => {
            let file = blocking(move || Ok(state.file_fleet())).await?;
            file.machines.get(&mac).cloned().map(Json).ok_or_else(|| {
                ApiError::Control(ControlError::NotFound {
                    kind: "machine",
                    key: mac.to_string(),
                })
            })
        }
        found => Ok(Json(found?)),
    }
}

async fn create_machine(
    State(state): State<ControlState>,
    Extension(caller): Extension<Caller>,
    Body(spec): Body<MachineSpec>,
) -> Result<Response, ApiError> {
    let machine = Machine::try_from(spec).map_err(ControlError::from)?;
    let body = machine.clone();
    let outcome = blocking(move || state.put_machine(&caller, machine, true)).await?;
    Ok(with_outcome(outcome, body))
}

async fn put_machine(
    State(state): State<ControlState>,
    Extension(caller): Extension<Caller>,
    PathArg(mac): PathArg<String>,
    Body(spec): Body<MachineSpec>,
) -> Result<Response, ApiError> {
    let machine = Machine::try_from(spec).map_err(ControlError::from)?;
    if machine.mac != parse_mac(&mac)? {
        return Err(ApiError::BadRequest(format!(
            "the body's MAC {} is not the path's {mac}",
            machine.mac
        )));
    }
    let body = machine.clone();
    let outcome = blocking(move || state.put_machine(&caller, machine, false)).await?;
    Ok(with_outcome(outcome, body))
}

async fn delete_machine(
    State(state): State<ControlState>,
    Extension(caller): Extension<Caller>,
    PathArg(mac): PathArg<String>,
) -> Result<StatusCode, ApiError> {
    let mac = parse_mac(&mac)?;
    blocking(move || state.delete_machine(&caller, mac)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_profiles(
    State(state): State<ControlState>,
) -> Result<Json<Vec<serde_json::Value>>, ApiError> {
    let snap = state.snapshot();
    let file = blocking(move || Ok(state.file_fleet())).await?;
    // By name; an API profile replaces the file's with the same name.
    let mut profiles: BTreeMap<String, serde_json::Value> = file
        .profiles
        .iter()
        .map(|(name, p)| (name.clone(), listed(p, None, EntrySource::File)))
        .collect();
    profiles.extend(snap.profiles.iter().map(|(name, p)| {
        let why = snap.quarantined(&FleetEntry::Profile(name.clone()));
        (name.clone(), listed(p, why, EntrySource::Api))
    }));
    Ok(Json(profiles.into_values().collect()))
}

async fn get_profile(
    State(state): State<ControlState>,
    PathArg(name): PathArg<String>,
) -> Result<Json<BootProfile>, ApiError> {
    match state.profile(&name) {
        Err(ControlError::NotFound { .. }) => {
            let file = blocking(move || Ok(state.file_fleet())).await?;
            file.profiles.get(&name).cloned().map(Json).ok_or_else(|| {
                ApiError::Control(ControlError::NotFound {
                    kind: "profile",
                    key: name,
                })
            })
        }
        found => Ok(Json(found?)),
    }
}

async fn create_profile(
    State(state): State<ControlState>,
    Extension(caller): Extension<Caller>,
    Body(spec): Body<ProfileSpec>,
) -> Result<Response, ApiError> {
    let profile = BootProfile::try_from(spec).map_err(ControlError::from)?;
    let body = profile.clone();
    let outcome = blocking(move || state.put_profile(&caller, profile, true)).await?;
    Ok(with_outcome(outcome, body))
}

async fn put_profile(
    State(state): State<ControlState>,
    Extension(caller): Extension<Caller>,
    PathArg(name): PathArg<String>,
    Body(spec): Body<ProfileSpec>,
) -> Result<Response, ApiError> {
    if spec.name != name {
        return Err(ApiError::BadRequest(format!(
            "the body's name {:?} is not the path's {name:?}",
            spec.name
        )));
    }
    let profile = BootProfile::try_from(spec).map_err(ControlError::from)?;
    let body = profile.clone();
    let outcome = blocking(move || state.put_profile(&caller, profile, false)).await?;
    Ok(with_outcome(outcome, body))
}

async fn delete_profile(
    State(state): State<ControlState>,
    Extension(caller): Extension<Caller>,
    PathArg(name): PathArg<String>,
) -> Result<StatusCode, ApiError> {
    blocking(move || state.delete_profile(&caller, &name)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_images(State(state): State<ControlState>) -> Result<Response, ApiError> {
    Ok(timed(&blocking(move || state.images()).await?))
}

async fn get_image(
    State(state): State<ControlState>,
    PathArg(sha256): PathArg<String>,
) -> Result<Response, ApiError> {
    Ok(timed(&blocking(move || state.image(&sha256)).await?))
}

async fn register_image(
    State(state): State<ControlState>,
    Extension(caller): Extension<Caller>,
    Body(spec): Body<ImageSpec>,
) -> Result<Response, ApiError> {
    let (image, outcome) = blocking(move || state.register_image(&caller, spec)).await?;
    Ok(with_outcome(outcome, timed_value(&image)))
}

async fn list_imports(State(state): State<ControlState>) -> Response {
    timed(&state.imports().list())
}

async fn get_import(
    State(state): State<ControlState>,
    PathArg(id): PathArg<String>,
) -> Result<Response, ApiError> {
    let not_found = || {
        ApiError::Control(ControlError::NotFound {
            kind: "import",
            key: id.clone(),
        })
    };
    // Any id that is not a number names no job.
    let n: u64 = id.parse().map_err(|_| not_found())?;
    state
        .imports()
        .get(n)
        .map(|job| timed(&job))
        .ok_or_else(not_found)
}

/// `POST /api/v1/images/imports`: 202 with the running job; its URL in `Location`.
async fn start_import(
    State(state): State<ControlState>,
    Extension(caller): Extension<Caller>,
    Body(req): Body<ImportRequest>,
) -> Result<Response, ApiError> {
    let job = state.start_import(&caller, req).await?;
    let location = format!("/api/v1/images/imports/{}", job.id);
    let mut response = (StatusCode::ACCEPTED, Json(timed_value(&job))).into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    Ok(response)
}

async fn delete_image(
    State(state): State<ControlState>,
    Extension(caller): Extension<Caller>,
    PathArg(sha256): PathArg<String>,
) -> Result<StatusCode, ApiError> {
    blocking(move || {
        state.delete_image(&caller, &sha256)?;
        // The root's files go too, unless another name or the quick-mode root still uses them.
        state.collect_root_garbage();
        Ok::<_, ControlError>(())
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A response of [`timed_value`].
fn timed(body: &impl Serialize) -> Response {
    Json(timed_value(body)).into_response()
}

async fn list_leases(State(state): State<ControlState>) -> Result<Response, ApiError> {
    Ok(timed(&blocking(move || state.leases()).await?))
}

async fn list_sessions(State(state): State<ControlState>) -> Response {
    timed(&state.sessions().list())
}

async fn get_session(
    State(state): State<ControlState>,
    PathArg(mac): PathArg<String>,
) -> Result<Response, ApiError> {
    let mac = parse_mac(&mac)?;
    let timeline: SessionTimeline = state.sessions().timeline(mac).ok_or_else(|| {
        ApiError::Control(ControlError::NotFound {
            kind: "boot session",
            key: mac.to_string(),
        })
    })?;
    Ok(timed(&timeline))
}

/// Query of `GET /api/v1/audit`.
#[derive(Debug, Clone, Copy, Deserialize)]
struct AuditQuery {
    #[serde(default)]
    after: u64,
    /// Default and cap 1000: one page stays a few hundred kilobytes.
    #[serde(default = "default_audit_limit")]
    limit: usize,
}

fn default_audit_limit() -> usize {
    1000
}

async fn list_audit(
    State(state): State<ControlState>,
    QueryArg(q): QueryArg<AuditQuery>,
) -> Result<Response, ApiError> {
    let limit = q.limit.min(1000);
    Ok(timed(
        &blocking(move || state.audit_entries(q.after, limit)).await?,
    ))
}

async fn verify_audit(State(state): State<ControlState>) -> Result<Response, ApiError> {
    Ok(Json(blocking(move || state.verify_audit()).await?).into_response())
}

async fn list_tokens(State(state): State<ControlState>) -> Result<Response, ApiError> {
    Ok(timed(&blocking(move || state.tokens()).await?))
}

/// `GET /api/v1/backup`: the state file as of one read transaction, itself a redb state file
/// (`application/octet-stream`; [`crate::backup`]), built in memory. Admin only: it holds every
/// token's hash and the whole audit log.
async fn backup(
    State(state): State<ControlState>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    let (summary, bytes) = blocking(move || state.backup(&caller)).await?;
    let mut response = (StatusCode::OK, bytes).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Ok(v) = HeaderValue::from_str(&serde_json::to_string(&summary).unwrap_or_default()) {
        headers.insert(BACKUP_SUMMARY_HEADER, v);
    }
    Ok(response)
}

/// Header of `GET /api/v1/backup`: what the copy holds, as JSON ([`crate::backup::BackupSummary`]).
pub const BACKUP_SUMMARY_HEADER: &str = "stampede-backup-summary";

async fn create_token(
    State(state): State<ControlState>,
    Extension(caller): Extension<Caller>,
    Body(req): Body<NewToken>,
) -> Result<Response, ApiError> {
    let NewToken {
        name,
        role,
        expires_in_s,
    } = req;
    let n = name.clone();
    let expires_in = expires_in_s.map(std::time::Duration::from_secs);
    let token =
        blocking(move || state.create_token_expiring(&caller, &n, role, expires_in)).await?;
    Ok((StatusCode::CREATED, Json(IssuedToken { name, role, token })).into_response())
}

async fn revoke_token(
    State(state): State<ControlState>,
    Extension(caller): Extension<Caller>,
    PathArg(name): PathArg<String>,
) -> Result<StatusCode, ApiError> {
    blocking(move || state.revoke_token(&caller, &name)).await?;
    Ok(StatusCode::NO_CONTENT)
}
