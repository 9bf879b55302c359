//! The HTTP routes of the cluster side, for the gateway to serve:
//!
//! | route | where | what |
//! |---|---|---|
//! | `GET /cluster/hello` | API port, no credentials | [`super::join::Hello`] |
//! | `POST /cluster/join` | board port (TLS) | the join handshake ([`super::answer`]) |
//! | `GET /system/cluster` | API, credentials | [`super::status::ClusterStatus`] |
//! | `GET /system/cluster/token` | API, credentials | `{"cluster","token","join"}`: the join command again |
//! | `POST /system/cluster/leave` | API, credentials | `{"force": bool}` → [`super::leave::Left`]; the node restarts after |
//! | `POST /system/cluster/remove` | API, credentials | `{"board": NAME}`: forgets a dead board |
//! | `POST /system/cluster/init`, `/join` | API, credentials | 409: the board is in a cluster already |
//!
//! Errors are `text/plain` with the status of the refusal, like the rest of the API.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use super::join::{HELLO_PATH, Hello, JOIN_PATH, JoinRequest};
use super::{ClusterNode, Refusal};

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let status = http::StatusCode::from_u16(self.status)
            .unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
        (status, format!("{}\n", self.message)).into_response()
    }
}

type Node = State<Arc<ClusterNode>>;

/// `GET /cluster/hello`.
pub fn public_router(node: Arc<ClusterNode>) -> Router {
    Router::new().route(HELLO_PATH, get(hello)).with_state(node)
}

/// `POST /cluster/join` (serve on the board listener).
pub fn board_router(node: Arc<ClusterNode>) -> Router {
    Router::new().route(JOIN_PATH, post(join)).with_state(node)
}

/// The `/system/cluster` routes (serve behind the API's credentials).
pub fn admin_router(node: Arc<ClusterNode>) -> Router {
    Router::new()
        .route("/system/cluster", get(status))
        .route("/system/cluster/token", get(token))
        .route("/system/cluster/leave", post(leave))
        .route("/system/cluster/remove", post(remove))
        .route("/system/cluster/init", post(already))
        .route("/system/cluster/join", post(already))
        .with_state(node)
}

async fn hello(State(node): Node) -> Json<Hello> {
    let files = node.files();
    Json(Hello {
        cluster: files.cluster.cluster,
        board: files.node.board,
        ca_pem: files.cluster.ca.cert_pem,
        board_port: files.node.board_port,
    })
}

async fn join(
    State(node): Node,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Json(request): Json<JoinRequest>,
) -> Response {
    match super::answer::answer(&node, request, peer.ip()).await {
        Ok(grant) => Json(grant).into_response(),
        Err(refusal) => {
            tracing::info!(%peer, reason = %refusal.message, "join refused");
            refusal.into_response()
        }
    }
}

async fn status(State(node): Node) -> Response {
    Json(super::status::status(&node).await).into_response()
}

async fn token(State(node): Node) -> Response {
    let files = node.files();
    match files.cluster.join_token() {
        Ok(token) => Json(serde_json::json!({
            "cluster": files.cluster.cluster,
            "token": token.to_string(),
            "join": super::init::join_command(&token, files.node.address, files.node.api_port),
        }))
        .into_response(),
        Err(e) => Refusal::new(500, bramble_base::error_chain(&e)).into_response(),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct LeaveBody {
    #[serde(default)]
    force: bool,
}

async fn leave(State(node): Node, body: Option<Json<LeaveBody>>) -> Response {
    let force = body.map(|b| b.0.force).unwrap_or_default();
    match super::leave::leave(&node, force).await {
        Ok(left) => Json(left).into_response(),
        Err(refusal) => refusal.into_response(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoveBody {
    board: String,
}

async fn remove(State(node): Node, Json(body): Json<RemoveBody>) -> Response {
    match super::leave::remove(&node, &body.board).await {
        Ok(promoted) => {
            Json(serde_json::json!({ "removed": body.board, "promoted": promoted })).into_response()
        }
        Err(refusal) => refusal.into_response(),
    }
}

async fn already(State(node): Node) -> Response {
    Refusal::new(
        409,
        format!(
            "this board is already in cluster {} (as {}): leave it first with `bramble cluster leave`",
            node.cluster(),
            node.board()
        ),
    )
    .into_response()
}
