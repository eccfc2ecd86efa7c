//! The daemon's HTTP/JSON API: one route table, thin handlers, one error mapping.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use banger_api::{
    DaemonInfo, ErrorBody, ErrorKind, ImageBuildRequest, ImageImportRequest, StopRequest, VmSpec,
};
use banger_helper::Identity;
use serde::Deserialize;

use crate::serve::Peer;
use crate::service::{DEFAULT_STOP_TIMEOUT, Service, ServiceError, chain};

pub struct AppState {
    pub service: Service,
    pub vmm: String,
    pub socket: std::path::PathBuf,
}

type AppResult<T> = Result<T, ApiError>;

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/daemon", get(daemon_info))
        .route("/v1/vms", get(list_vms).post(create_vm))
        .route("/v1/vms/{name}", get(show_vm).delete(remove_vm))
        .route("/v1/vms/{name}/start", post(start_vm))
        .route("/v1/vms/{name}/stop", post(stop_vm))
        .route("/v1/vms/{name}/kill", post(kill_vm))
        .route("/v1/vms/{name}/logs", get(vm_logs))
        .route("/v1/images", get(list_images))
        .route("/v1/images/build", post(build_image))
        .route("/v1/images/import", post(import_image))
        .route("/v1/images/{name}", get(show_image).delete(remove_image))
        .route("/v1/images/{name}/progress", get(image_progress))
        .fallback(|| async {
            ApiError::new(
                ErrorKind::NotFound,
                "no such API route; this daemon serves /v1".into(),
            )
        })
        .layer(axum::middleware::from_fn(crate::serve::bounded_body))
        .with_state(state)
}

/// An error response: a kind (which fixes the status) and a message.
pub struct ApiError(ErrorBody);

impl ApiError {
    fn new(kind: ErrorKind, message: String) -> Self {
        Self(ErrorBody { kind, message })
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        Self::new(e.kind(), chain(&e))
    }
}

impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> Self {
        Self::new(
            ErrorKind::BadRequest,
            format!("malformed request body: {}", e.body_text()),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match self.0.kind {
            ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
            ErrorKind::Forbidden => StatusCode::FORBIDDEN,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::Conflict => StatusCode::CONFLICT,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (status, Json(self.0)).into_response()
    }
}

async fn daemon_info(State(s): State<Arc<AppState>>) -> AppResult<Json<DaemonInfo>> {
    let (vms, running) = s.service.counts()?;
    Ok(Json(DaemonInfo {
        version: banger_api::VERSION.into(),
        pid: std::process::id(),
        state_dir: s.service.dirs().state.clone(),
        run_dir: s.service.dirs().run.clone(),
        socket: s.socket.clone(),
        vmm: s.vmm.clone(),
        schema_version: crate::store::schema_version(),
        vms,
        running,
    }))
}

async fn list_vms(State(s): State<Arc<AppState>>) -> AppResult<impl IntoResponse> {
    Ok(Json(s.service.list().await?))
}

/// The caller's identity (SO_PEERCRED), set by the accept loop on every request.
fn identity(p: Peer) -> Identity {
    Identity {
        uid: p.uid,
        gid: p.gid,
    }
}

async fn create_vm(
    State(s): State<Arc<AppState>>,
    Extension(peer): Extension<Peer>,
    body: Result<Json<VmSpec>, JsonRejection>,
) -> AppResult<impl IntoResponse> {
    let Json(spec) = body?;
    Ok((
        StatusCode::CREATED,
        Json(s.service.create(spec, identity(peer)).await?),
    ))
}

async fn show_vm(
    State(s): State<Arc<AppState>>,
    Extension(peer): Extension<Peer>,
    Path(name): Path<String>,
) -> AppResult<impl IntoResponse> {
    s.service.authorize(&name, identity(peer))?;
    Ok(Json(s.service.get(&name).await?))
}

#[derive(Debug, Deserialize)]
struct RemoveQuery {
    #[serde(default)]
    force: bool,
}

async fn remove_vm(
    State(s): State<Arc<AppState>>,
    Extension(peer): Extension<Peer>,
    Path(name): Path<String>,
    Query(q): Query<RemoveQuery>,
) -> AppResult<impl IntoResponse> {
    s.service.authorize(&name, identity(peer))?;
    s.service.remove(&name, q.force).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn start_vm(
    State(s): State<Arc<AppState>>,
    Extension(peer): Extension<Peer>,
    Path(name): Path<String>,
) -> AppResult<impl IntoResponse> {
    s.service.authorize(&name, identity(peer))?;
    Ok(Json(s.service.start(&name).await?))
}

async fn stop_vm(
    State(s): State<Arc<AppState>>,
    Extension(peer): Extension<Peer>,
    Path(name): Path<String>,
    body: Result<Json<StopRequest>, JsonRejection>,
) -> AppResult<impl IntoResponse> {
    s.service.authorize(&name, identity(peer))?;
    let req = match body {
        Ok(Json(r)) => r,
        // An empty body means the defaults.
        Err(JsonRejection::MissingJsonContentType(_)) => StopRequest::default(),
        Err(e) => return Err(e.into()),
    };
    req.validate().map_err(crate::service::ServiceError::from)?;
    let timeout = req
        .timeout_secs
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_STOP_TIMEOUT);
    Ok(Json(s.service.stop(&name, timeout).await?))
}

async fn kill_vm(
    State(s): State<Arc<AppState>>,
    Extension(peer): Extension<Peer>,
    Path(name): Path<String>,
) -> AppResult<impl IntoResponse> {
    s.service.authorize(&name, identity(peer))?;
    Ok(Json(s.service.kill(&name).await?))
}

#[derive(Debug, Deserialize)]
struct LogsQuery {
    #[serde(default)]
    offset: u64,
}

async fn vm_logs(
    State(s): State<Arc<AppState>>,
    Extension(peer): Extension<Peer>,
    Path(name): Path<String>,
    Query(q): Query<LogsQuery>,
) -> AppResult<impl IntoResponse> {
    s.service.authorize(&name, identity(peer))?;
    let (bytes, next) = s.service.console(&name, q.offset).await?;
    let mut headers = HeaderMap::new();
    headers.insert(
        "content-type",
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert("x-banger-next-offset", HeaderValue::from(next));
    Ok((headers, bytes))
}

async fn list_images(State(s): State<Arc<AppState>>) -> AppResult<impl IntoResponse> {
    Ok(Json(s.service.images()?))
}

async fn show_image(
    State(s): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> AppResult<impl IntoResponse> {
    Ok(Json(s.service.image(&name)?))
}

async fn remove_image(
    State(s): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> AppResult<impl IntoResponse> {
    s.service.remove_image(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn build_image(
    State(s): State<Arc<AppState>>,
    body: Result<Json<ImageBuildRequest>, JsonRejection>,
) -> AppResult<impl IntoResponse> {
    let Json(req) = body?;
    Ok((StatusCode::CREATED, Json(s.service.build_image(req).await?)))
}

async fn import_image(
    State(s): State<Arc<AppState>>,
    Extension(peer): Extension<Peer>,
    body: Result<Json<ImageImportRequest>, JsonRejection>,
) -> AppResult<impl IntoResponse> {
    let Json(req) = body?;
    Ok((
        StatusCode::CREATED,
        Json(s.service.import_image(req, identity(peer)).await?),
    ))
}

/// `{"building": bool, "step": "..."}` for a build in flight.
async fn image_progress(
    State(s): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> impl IntoResponse {
    let step = s.service.build_progress(&name);
    Json(serde_json::json!({ "building": step.is_some(), "step": step }))
}
