//! An API server over real HTTP on 127.0.0.1 (ephemeral port), on a fresh state file, and the
//! requests and `stampede ctl` commands tests send it.
#![allow(dead_code, reason = "each test binary uses a different subset")]

use reqwest::StatusCode;
use serde_json::{Value, json};
use stampede_control::api;
use stampede_control::ctl::{CtlArgs, CtlCommand};
use stampede_control::{ControlState, Metrics, Role, SessionLimits};
use tokio::sync::oneshot;

pub struct Server {
    pub url: String,
    pub admin: String,
    pub state: ControlState,
    pub http: reqwest::Client,
    pub dir: tempfile::TempDir,
    pub stop: Option<oneshot::Sender<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub async fn start() -> Server {
    start_with(SessionLimits::default()).await
}

pub async fn start_with(limits: SessionLimits) -> Server {
    let dir = tempfile::tempdir().expect("temporary directory");
    let state =
        ControlState::open_with_sessions(dir.path().join("state.redb"), Metrics::new(), limits)
            .expect("open state file");
    let admin = state
        .ensure_admin_token(None)
        .expect("bootstrap admin")
        .expect("a fresh store generates the first admin token");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind an ephemeral port");
    let url = format!("http://{}", listener.local_addr().expect("local addr"));
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(api::serve_on(listener, state.clone(), async {
        let _ = stopped.await;
    }));
    Server {
        url,
        admin,
        state,
        http: stampede_control::client::http_client(None).expect("HTTP client"),
        dir,
        stop: Some(stop),
    }
}

impl Server {
    pub async fn token(&self, name: &str, role: Role) -> String {
        let r = self
            .call(
                "POST",
                "/api/v1/tokens",
                Some(&self.admin),
                Some(json!({ "name": name, "role": role })),
            )
            .await;
        assert_eq!(r.0, StatusCode::CREATED, "admin issues a token: {}", r.1);
        r.1["token"].as_str().expect("token in answer").to_owned()
    }

    /// One request; returns status and JSON body (Null if none).
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let method: reqwest::Method = method.parse().expect("method");
        let mut req = self.http.request(method, format!("{}{path}", self.url));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("server answers");
        let status = resp.status();
        let text = resp.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub fn ctl(&self, token: &str, json: bool, command: CtlCommand) -> CtlArgs {
        CtlArgs {
            url: self.url.clone(),
            token: Some(token.to_owned()),
            cacert: None,
            json,
            command,
        }
    }
}
