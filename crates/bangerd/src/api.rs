//! The daemon's HTTP/JSON API: one route table, thin handlers, one error mapping.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use banger_api::{
    DaemonInfo, ErrorBody, ErrorKind, ImageBuildRequest, ImageImportRequest, StopRequest, VmName,
    VmSpec, validate_image_name,
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

impl From<PathRejection> for ApiError {
    fn from(e: PathRejection) -> Self {
        Self::new(
            ErrorKind::BadRequest,
            format!("malformed request path: {}", e.body_text()),
        )
    }
}

impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> Self {
        Self::new(
            ErrorKind::BadRequest,
            format!("malformed query: {}", e.body_text()),
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

/// The `{name}` of a VM route, refused before any lookup when no VM could have it
/// (`..%2F`, 65 characters, `é`): the caller learns which rule, not "no VM named".
struct VmPath(VmName);

impl<S: Send + Sync> FromRequestParts<S> for VmPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(name) = Path::<String>::from_request_parts(parts, state).await?;
        Ok(Self(VmName::new(name).map_err(ServiceError::from)?))
    }
}

/// The `{name}` of an image route, held to the image name rule as [`VmPath`] is.
struct ImagePath(String);

impl<S: Send + Sync> FromRequestParts<S> for ImagePath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(name) = Path::<String>::from_request_parts(parts, state).await?;
        validate_image_name(&name).map_err(ServiceError::from)?;
        Ok(Self(name))
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
    VmPath(name): VmPath,
) -> AppResult<impl IntoResponse> {
    let name = name.as_str();
    s.service.authorize(name, identity(peer))?;
    Ok(Json(s.service.get(name).await?))
}

#[derive(Debug, Deserialize)]
struct RemoveQuery {
    #[serde(default)]
    force: bool,
}

async fn remove_vm(
    State(s): State<Arc<AppState>>,
    Extension(peer): Extension<Peer>,
    VmPath(name): VmPath,
    q: Result<Query<RemoveQuery>, QueryRejection>,
) -> AppResult<impl IntoResponse> {
    let Query(q) = q?;
    let name = name.as_str();
    s.service.authorize(name, identity(peer))?;
    s.service.remove(name, q.force).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn start_vm(
    State(s): State<Arc<AppState>>,
    Extension(peer): Extension<Peer>,
    VmPath(name): VmPath,
) -> AppResult<impl IntoResponse> {
    let name = name.as_str();
    s.service.authorize(name, identity(peer))?;
    Ok(Json(s.service.start(name).await?))
}

async fn stop_vm(
    State(s): State<Arc<AppState>>,
    Extension(peer): Extension<Peer>,
    VmPath(name): VmPath,
    body: Result<Json<StopRequest>, JsonRejection>,
) -> AppResult<impl IntoResponse> {
    let name = name.as_str();
    s.service.authorize(name, identity(peer))?;
    let timeout = stop_timeout(body)?;
    Ok(Json(s.service.stop(name, timeout).await?))
}

/// How long a stop waits for the guest: the body's `timeout_secs`, or
/// [`DEFAULT_STOP_TIMEOUT`] for a body without one or for no body at all (no JSON
/// content type).
fn stop_timeout(body: Result<Json<StopRequest>, JsonRejection>) -> AppResult<Duration> {
    let req = match body {
        Ok(Json(r)) => r,
        Err(JsonRejection::MissingJsonContentType(_)) => StopRequest::default(),
        Err(e) => return Err(e.into()),
    };
    req.validate().map_err(ServiceError::from)?;
    Ok(req
        .timeout_secs
        .map_or(DEFAULT_STOP_TIMEOUT, Duration::from_secs))
}

async fn kill_vm(
    State(s): State<Arc<AppState>>,
    Extension(peer): Extension<Peer>,
    VmPath(name): VmPath,
) -> AppResult<impl IntoResponse> {
    let name = name.as_str();
    s.service.authorize(name, identity(peer))?;
    Ok(Json(s.service.kill(name).await?))
}

#[derive(Debug, Deserialize)]
struct LogsQuery {
    #[serde(default)]
    offset: u64,
}

async fn vm_logs(
    State(s): State<Arc<AppState>>,
    Extension(peer): Extension<Peer>,
    VmPath(name): VmPath,
    q: Result<Query<LogsQuery>, QueryRejection>,
) -> AppResult<impl IntoResponse> {
    let Query(q) = q?;
    let name = name.as_str();
    s.service.authorize(name, identity(peer))?;
    let (bytes, next) = s.service.console(name, q.offset).await?;
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
    ImagePath(name): ImagePath,
) -> AppResult<impl IntoResponse> {
    Ok(Json(s.service.image(&name)?))
}

async fn remove_image(
    State(s): State<Arc<AppState>>,
    ImagePath(name): ImagePath,
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
    ImagePath(name): ImagePath,
) -> AppResult<impl IntoResponse> {
    let step = s.service.build_progress(&name);
    Ok(Json(
        serde_json::json!({ "building": step.is_some(), "step": step }),
    ))
}

#[cfg(test)]
mod tests {
    //! The route table, the handlers and the error mapping, driven through the
    //! router as `serve` drives it (the caller's [`Peer`] as a request extension),
    //! over a real [`Service`] whose helper is the recording fake: no root, no socket.

    use super::*;
    use crate::service::fake::{self, running_in, spec};
    use axum::body::Body;
    use axum::http::{Method, Request};
    use banger_helper::{ClientError, Reply, Request as HelperRequest};
    use std::sync::Mutex;
    use tower::ServiceExt;

    /// A router over a fresh service that has pinged its (fake) helper.
    struct Api {
        state: Arc<AppState>,
        seen: Arc<Mutex<Vec<HelperRequest>>>,
        _dir: tempfile::TempDir,
    }

    /// What a request got back.
    struct Answer {
        status: StatusCode,
        headers: HeaderMap,
        body: axum::body::Bytes,
    }

    impl Answer {
        /// The body as the API's [`ErrorBody`] (and so sent as JSON).
        #[track_caller]
        fn error(&self) -> ErrorBody {
            assert_eq!(
                self.headers.get("content-type").map(|v| v.as_bytes()),
                Some(&b"application/json"[..]),
                "an error is JSON: {:?}",
                self.body
            );
            serde_json::from_slice(&self.body).expect("an ErrorBody")
        }
        fn json(&self) -> serde_json::Value {
            serde_json::from_slice(&self.body).expect("a JSON body")
        }
        /// Asserts the status and the error body's kind, and that its message says `what`.
        #[track_caller]
        fn refused(&self, status: StatusCode, kind: ErrorKind, what: &str) {
            assert_eq!(self.status, status, "{:?}", self.body);
            let e = self.error();
            assert_eq!(e.kind, kind, "{}", e.message);
            assert!(e.message.contains(what), "{:?} lacks {what:?}", e.message);
        }
    }

    /// The caller this test process is, as `serve` would see it.
    fn me() -> Peer {
        Peer {
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
        }
    }

    /// Users who are neither root nor the daemon's (this process's) user.
    const ALICE: Peer = Peer {
        uid: 4_000_001,
        gid: 4_000_001,
    };
    const BOB: Peer = Peer {
        uid: 4_000_002,
        gid: 4_000_001,
    };

    impl Api {
        async fn new(
            answer: impl Fn(&HelperRequest) -> Result<Reply, ClientError> + Send + Sync + 'static,
        ) -> Self {
            let t = fake::service(move |r| match r {
                HelperRequest::Ping(_) => fake::pong(r),
                r => answer(r),
            });
            t.svc.helper_ping().await.unwrap();
            t.seen.lock().unwrap().clear();
            let fake::T { svc, seen, _dir } = t;
            let state = Arc::new(AppState {
                service: svc,
                vmm: "banger-vmm-qemu v1".into(),
                socket: "/run/banger/bangerd.sock".into(),
            });
            Self { state, seen, _dir }
        }

        fn svc(&self) -> &Service {
            &self.state.service
        }

        /// Helper requests made since the service was set up, by their wire `op`.
        fn ops(&self) -> Vec<String> {
            self.seen
                .lock()
                .unwrap()
                .iter()
                .map(|r| {
                    serde_json::to_value(r).unwrap()["op"]
                        .as_str()
                        .unwrap()
                        .into()
                })
                .collect()
        }

        async fn send(&self, req: Request<Body>) -> Answer {
            let resp = router(self.state.clone()).oneshot(req).await.unwrap();
            let status = resp.status();
            let headers = resp.headers().clone();
            let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
                .await
                .unwrap();
            Answer {
                status,
                headers,
                body,
            }
        }

        /// `method uri` from `peer`, with a JSON body when one is given.
        async fn call(&self, peer: Peer, method: Method, uri: &str, json: Option<&str>) -> Answer {
            let mut b = Request::builder().method(method).uri(uri);
            if json.is_some() {
                b = b.header("content-type", "application/json");
            }
            let mut req = b
                .body(Body::from(json.unwrap_or_default().to_string()))
                .unwrap();
            req.extensions_mut().insert(peer);
            self.send(req).await
        }

        async fn get(&self, uri: &str) -> Answer {
            self.call(me(), Method::GET, uri, None).await
        }

        /// A VM in state `created`, owned by `owner`.
        fn created(&self, name: &str, id: &str, owner: Peer) {
            self.svc()
                .store
                .insert(id, &spec(name), (owner.uid, owner.gid))
                .unwrap();
        }
    }

    /// Every route, each reaching its own handler: for an unknown name each VM verb
    /// answers the service's "no VM named", not the fallback's "no such route".
    #[tokio::test]
    async fn every_route_reaches_its_handler_on_its_method() {
        let api = Api::new(fake::done).await;
        let no_vm = "no VM named \"ghost\"";
        for (method, uri) in [
            (Method::GET, "/v1/vms/ghost"),
            (Method::DELETE, "/v1/vms/ghost"),
            (Method::POST, "/v1/vms/ghost/start"),
            (Method::POST, "/v1/vms/ghost/stop"),
            (Method::POST, "/v1/vms/ghost/kill"),
            (Method::GET, "/v1/vms/ghost/logs"),
        ] {
            let a = api.call(me(), method.clone(), uri, None).await;
            a.refused(StatusCode::NOT_FOUND, ErrorKind::NotFound, no_vm);
        }
        let no_image = "no image named \"ghost\"";
        for method in [Method::GET, Method::DELETE] {
            let a = api.call(me(), method, "/v1/images/ghost", None).await;
            a.refused(StatusCode::NOT_FOUND, ErrorKind::NotFound, no_image);
        }
        let a = api.get("/v1/images/ghost/progress").await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(
            a.json(),
            serde_json::json!({"building": false, "step": null})
        );
        for uri in ["/v1/vms", "/v1/images"] {
            let a = api.get(uri).await;
            assert_eq!(
                (a.status, a.json()),
                (StatusCode::OK, serde_json::json!([]))
            );
        }
        // The POSTs with a body reach their handler: it is theirs that reads it.
        for uri in ["/v1/vms", "/v1/images/build", "/v1/images/import"] {
            let a = api.call(me(), Method::POST, uri, Some("{}")).await;
            a.refused(
                StatusCode::BAD_REQUEST,
                ErrorKind::BadRequest,
                "missing field `name`",
            );
        }
        assert_eq!(
            api.ops(),
            Vec::<String>::new(),
            "nothing reached the helper"
        );
    }

    #[tokio::test]
    async fn a_route_on_another_method_is_405_and_an_unknown_route_404() {
        let api = Api::new(fake::done).await;
        api.created("vm", "00000000000a", me());
        for (method, uri, allowed) in [
            (Method::POST, "/v1/daemon", "GET,HEAD"),
            (Method::PUT, "/v1/vms", "GET,HEAD,POST"),
            (Method::POST, "/v1/vms/vm", "GET,HEAD,DELETE"),
            (Method::GET, "/v1/vms/vm/start", "POST"),
            (Method::DELETE, "/v1/vms/vm/stop", "POST"),
            (Method::GET, "/v1/vms/vm/kill", "POST"),
            (Method::POST, "/v1/vms/vm/logs", "GET,HEAD"),
            (Method::DELETE, "/v1/images", "GET,HEAD"),
            (Method::GET, "/v1/images/build", "POST"),
            (Method::PUT, "/v1/images/import", "POST"),
            (Method::POST, "/v1/images/img", "GET,HEAD,DELETE"),
            (Method::DELETE, "/v1/images/img/progress", "GET,HEAD"),
        ] {
            let a = api.call(me(), method.clone(), uri, None).await;
            assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {uri}");
            let mut got: Vec<_> = a.headers["allow"].to_str().unwrap().split(',').collect();
            let mut want: Vec<_> = allowed.split(',').collect();
            got.sort();
            want.sort();
            assert_eq!(got, want, "{method} {uri}");
        }
        for uri in [
            "/",
            "/v1",
            "/v2/vms",
            "/v1/vm",
            "/v1/vms/vm/pause",
            "/v1/vms/vm/start/now",
            // No name at all is no route (there is nothing to look up).
            "/v1/vms/",
            "/v1/images/",
        ] {
            let a = api.call(me(), Method::GET, uri, None).await;
            assert_eq!(a.status, StatusCode::NOT_FOUND, "{uri}");
            a.refused(
                StatusCode::NOT_FOUND,
                ErrorKind::NotFound,
                "no such API route; this daemon serves /v1",
            );
        }
        assert_eq!(api.ops(), Vec::<String>::new());
        assert_eq!(api.svc().counts().unwrap(), (1, 0), "the VM is as it was");
    }

    #[tokio::test]
    async fn malformed_bodies_and_wrong_content_types_are_bad_requests_that_change_nothing() {
        let api = Api::new(fake::done).await;
        api.created("vm", "00000000000a", me());
        let send = |uri: &'static str, ct: Option<&'static str>, body: &'static str| {
            let mut b = Request::builder().method(Method::POST).uri(uri);
            if let Some(ct) = ct {
                b = b.header("content-type", ct);
            }
            let mut req = b.body(Body::from(body)).unwrap();
            req.extensions_mut().insert(me());
            api.send(req)
        };
        let json = Some("application/json");
        let no_json = "Expected request with `Content-Type: application/json`";
        for uri in ["/v1/vms", "/v1/images/build", "/v1/images/import"] {
            for (ct, body, want) in [
                (
                    json,
                    "{",
                    "malformed request body: Failed to parse the request body as JSON",
                ),
                (json, "[]", "malformed request body"),
                (json, "", "malformed request body"),
                (
                    json,
                    r#"{"name":"x","colour":"red"}"#,
                    "unknown field `colour`",
                ),
                (Some("text/plain"), r#"{"name":"x"}"#, no_json),
                (None, r#"{"name":"x"}"#, no_json),
            ] {
                let a = send(uri, ct, body).await;
                assert_eq!(a.status, StatusCode::BAD_REQUEST, "{uri} {ct:?} {body}");
                let e = a.error();
                assert_eq!(e.kind, ErrorKind::BadRequest);
                assert!(
                    e.message.starts_with("malformed request body: ") && e.message.contains(want),
                    "{uri} {ct:?} {body}: {}",
                    e.message
                );
            }
        }
        // A stop's body is optional: none (no JSON content type) means the defaults,
        // but a JSON body must be a good one.
        for (body, want) in [
            ("{", "malformed request body"),
            (r#"{"timeout_secs":-1}"#, "malformed request body"),
            (r#"{"timeout_secs":"5"}"#, "malformed request body"),
            (r#"{"grace":5}"#, "unknown field `grace`"),
            (
                r#"{"timeout_secs":3601}"#,
                "stop timeout of 3601 s is too long",
            ),
        ] {
            send("/v1/vms/vm/stop", json, body).await.refused(
                StatusCode::BAD_REQUEST,
                ErrorKind::BadRequest,
                want,
            );
        }
        let a = send("/v1/vms/vm/stop", None, "").await;
        assert_eq!(
            (a.status, &a.json()["state"]),
            (StatusCode::OK, &"created".into())
        );
        let a = send("/v1/vms/vm/stop", json, r#"{"timeout_secs":3600}"#).await;
        assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
        assert_eq!(api.svc().counts().unwrap(), (1, 0), "nothing was created");
        assert!(api.svc().images().unwrap().is_empty());
        assert_eq!(api.ops(), Vec::<String>::new());
    }

    #[tokio::test]
    async fn the_stop_timeout_is_the_body_s_or_the_default_and_at_most_an_hour() {
        use axum::extract::FromRequest;
        async fn parse(ct: Option<&str>, body: &'static str) -> AppResult<Duration> {
            let mut b = Request::builder().method(Method::POST).uri("/");
            if let Some(ct) = ct {
                b = b.header("content-type", ct);
            }
            let req = b.body(Body::from(body)).unwrap();
            stop_timeout(Json::<StopRequest>::from_request(req, &()).await)
        }
        let json = Some("application/json");
        let secs = |s| Ok::<_, ()>(Duration::from_secs(s));
        for (ct, body, want) in [
            (None, "", Ok(DEFAULT_STOP_TIMEOUT)),
            (None, r#"{"timeout_secs":5}"#, Ok(DEFAULT_STOP_TIMEOUT)),
            (json, "{}", Ok(DEFAULT_STOP_TIMEOUT)),
            (json, r#"{"timeout_secs":null}"#, Ok(DEFAULT_STOP_TIMEOUT)),
            (json, r#"{"timeout_secs":0}"#, secs(0)),
            (json, r#"{"timeout_secs":7}"#, secs(7)),
            (json, r#"{"timeout_secs":3600}"#, secs(3600)),
            (json, r#"{"timeout_secs":3601}"#, Err(())),
            (json, "", Err(())),
        ] {
            let got = parse(ct, body).await.map_err(|e| {
                assert_eq!(e.0.kind, ErrorKind::BadRequest, "{}", e.0.message);
            });
            assert_eq!(got, want, "{ct:?} {body}");
        }
        assert_eq!(DEFAULT_STOP_TIMEOUT, Duration::from_secs(30));
    }

    /// A name no VM could have is refused as such, before any lookup or ownership
    /// check: the caller (a stranger here, who would otherwise hear "no VM") learns
    /// the rule. Names are percent-decoded first, so `..%2F` is `../`.
    #[tokio::test]
    async fn hostile_names_in_the_path_are_refused_before_any_lookup() {
        let api = Api::new(fake::done).await;
        let long = "a".repeat(65);
        let hostile = [
            "..",
            "..%2F..%2Fetc%2Fpasswd",
            "a%2Fb",
            "%2E%2E",
            long.as_str(),
            "%C3%A9",
            "Dev",
            "a_b",
            "x-",
            "-x",
            "%00",
            "a%20b",
        ];
        let vm_routes: [(Method, &str); 6] = [
            (Method::GET, ""),
            (Method::DELETE, ""),
            (Method::POST, "/start"),
            (Method::POST, "/stop"),
            (Method::POST, "/kill"),
            (Method::GET, "/logs"),
        ];
        for name in hostile {
            for (method, verb) in &vm_routes {
                let uri = format!("/v1/vms/{name}{verb}");
                api.call(BOB, method.clone(), &uri, None).await.refused(
                    StatusCode::BAD_REQUEST,
                    ErrorKind::BadRequest,
                    "invalid VM name",
                );
            }
            for (method, verb) in [
                (Method::GET, ""),
                (Method::DELETE, ""),
                (Method::GET, "/progress"),
            ] {
                let uri = format!("/v1/images/{name}{verb}");
                api.call(BOB, method, &uri, None).await.refused(
                    StatusCode::BAD_REQUEST,
                    ErrorKind::BadRequest,
                    "invalid image name",
                );
            }
        }
        // An empty name matches where more path follows, and is refused as a name.
        for (method, uri) in [
            (Method::POST, "/v1/vms//start"),
            (Method::POST, "/v1/vms//stop"),
            (Method::POST, "/v1/vms//kill"),
            (Method::GET, "/v1/vms//logs"),
        ] {
            api.call(BOB, method, uri, None).await.refused(
                StatusCode::BAD_REQUEST,
                ErrorKind::BadRequest,
                r#"invalid VM name """#,
            );
        }
        api.get("/v1/images//progress").await.refused(
            StatusCode::BAD_REQUEST,
            ErrorKind::BadRequest,
            r#"invalid image name """#,
        );
        // The message names what was refused, decoded.
        let a = api.get("/v1/vms/..%2Fetc").await;
        assert!(a.error().message.contains(r#""../etc""#), "{:?}", a.body);
        // Bytes that are no UTF-8 at all never become a name.
        for uri in ["/v1/vms/%FF", "/v1/images/%FF"] {
            api.get(uri).await.refused(
                StatusCode::BAD_REQUEST,
                ErrorKind::BadRequest,
                "malformed request path",
            );
        }
        // The longest name is one.
        let longest = "a".repeat(64);
        api.get(&format!("/v1/vms/{longest}")).await.refused(
            StatusCode::NOT_FOUND,
            ErrorKind::NotFound,
            "no VM named",
        );
        assert_eq!(api.ops(), Vec::<String>::new());
    }

    /// Each [`ServiceError`] has its kind, and each kind its status; the message is
    /// the whole chain of causes.
    #[test]
    fn every_service_error_maps_to_its_status_and_kind() {
        use crate::store::StoreError;
        use banger_api::{ValidationError, VmState};
        let io = || std::io::Error::other("boom");
        let cases: Vec<(ServiceError, StatusCode, ErrorKind)> = vec![
            (
                ValidationError::Cpus(0).into(),
                StatusCode::BAD_REQUEST,
                ErrorKind::BadRequest,
            ),
            (
                banger_helper::ArgError::Release("sid".into()).into(),
                StatusCode::BAD_REQUEST,
                ErrorKind::BadRequest,
            ),
            (
                ServiceError::ImportRefused {
                    path: "/k".into(),
                    reason: "r".into(),
                },
                StatusCode::BAD_REQUEST,
                ErrorKind::BadRequest,
            ),
            (
                ServiceError::FileRefused {
                    path: "/k".into(),
                    uid: 1,
                    reason: "r".into(),
                },
                StatusCode::BAD_REQUEST,
                ErrorKind::BadRequest,
            ),
            (
                ServiceError::NotOwner {
                    name: "vm".into(),
                    owner: 1,
                },
                StatusCode::FORBIDDEN,
                ErrorKind::Forbidden,
            ),
            (
                ServiceError::NotFound("vm".into()),
                StatusCode::NOT_FOUND,
                ErrorKind::NotFound,
            ),
            (
                ServiceError::ImageNotFound("img".into()),
                StatusCode::NOT_FOUND,
                ErrorKind::NotFound,
            ),
            (
                ServiceError::NameTaken("vm".into()),
                StatusCode::CONFLICT,
                ErrorKind::Conflict,
            ),
            (
                ServiceError::ImageNameTaken("img".into()),
                StatusCode::CONFLICT,
                ErrorKind::Conflict,
            ),
            (
                ServiceError::ImageBuilding("img".into()),
                StatusCode::CONFLICT,
                ErrorKind::Conflict,
            ),
            (
                ServiceError::PoolExhausted("10.0.0.0/24".into()),
                StatusCode::CONFLICT,
                ErrorKind::Conflict,
            ),
            (
                ServiceError::InvalidState {
                    name: "vm".into(),
                    state: VmState::Running,
                    action: "start",
                    hint: "",
                },
                StatusCode::CONFLICT,
                ErrorKind::Conflict,
            ),
            (
                ServiceError::ImageInUse {
                    name: "img".into(),
                    users: "vm".into(),
                },
                StatusCode::CONFLICT,
                ErrorKind::Conflict,
            ),
            (
                ServiceError::StartFailed {
                    name: "vm".into(),
                    reason: "r".into(),
                },
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorKind::Internal,
            ),
            (
                ServiceError::BuildFailed("r".into()),
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorKind::Internal,
            ),
            (
                ServiceError::Disk {
                    name: "vm".into(),
                    reason: "r".into(),
                },
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorKind::Internal,
            ),
            (
                ClientError::Io(io()).into(),
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorKind::Internal,
            ),
            (
                ServiceError::Store(StoreError::Corrupt {
                    id: "00000000000a".into(),
                    what: "spec",
                    detail: "d".into(),
                }),
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorKind::Internal,
            ),
            (
                ServiceError::Console {
                    name: "vm".into(),
                    source: io(),
                },
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorKind::Internal,
            ),
        ];
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        for (e, status, kind) in cases {
            let text = format!("{e:?}");
            let message = chain(&e);
            let resp = ApiError::from(e).into_response();
            assert_eq!(resp.status(), status, "{text}");
            let body = rt
                .block_on(axum::body::to_bytes(resp.into_body(), usize::MAX))
                .unwrap();
            let body: ErrorBody = serde_json::from_slice(&body).unwrap();
            assert_eq!((body.kind, body.message), (kind, message), "{text}");
        }
        // The message is the chain, causes included, not only the outermost text.
        assert_eq!(
            chain(&ServiceError::from(ClientError::Io(io()))),
            "the root helper failed: lost the connection to the root helper: boom"
        );
    }

    #[tokio::test]
    async fn the_caller_s_identity_creates_the_vm_and_decides_who_may_act_on_it() {
        let api = Api::new(fake::done).await;
        // The creator is the caller, uid and gid as SO_PEERCRED gave them.
        let caller = Peer {
            gid: 4_000_042,
            ..me()
        };
        let a = api
            .call(
                caller,
                Method::POST,
                "/v1/vms",
                Some(r#"{"name":"mine","kernel":"/k"}"#),
            )
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.body);
        assert_eq!(a.json()["name"], "mine");
        assert_eq!(a.json()["ip"], "10.0.0.2");
        let rec = api.svc().store.get_by_name("mine").unwrap().unwrap();
        assert_eq!(rec.owner, Some((caller.uid, caller.gid)));

        // Alice's VM: Bob sees it listed and nothing more.
        api.created("alices", "00000000000a", ALICE);
        for (method, verb) in [
            (Method::GET, ""),
            (Method::DELETE, "?force=true"),
            (Method::POST, "/start"),
            (Method::POST, "/stop"),
            (Method::POST, "/kill"),
            (Method::GET, "/logs"),
        ] {
            let uri = format!("/v1/vms/alices{verb}");
            api.call(BOB, method, &uri, None).await.refused(
                StatusCode::FORBIDDEN,
                ErrorKind::Forbidden,
                "VM alices belongs to uid 4000001",
            );
        }
        let list = api.call(BOB, Method::GET, "/v1/vms", None).await.json();
        let names: Vec<_> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|v| &v["name"])
            .collect();
        assert_eq!(names, ["alices", "mine"]);
        // Alice herself may.
        let a = api.call(ALICE, Method::GET, "/v1/vms/alices", None).await;
        assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
        assert_eq!(a.json()["state"], "created");
        assert!(api.svc().store.get_by_name("alices").unwrap().is_some());
        assert_eq!(
            api.ops(),
            Vec::<String>::new(),
            "a VM with its own kernel is made without the helper; refusals ask nothing"
        );
    }

    /// `serve` sets the caller on every request; a request without one is an error,
    /// never served as someone.
    #[tokio::test]
    async fn a_request_without_a_caller_is_refused() {
        let api = Api::new(fake::done).await;
        let req = Request::builder()
            .method(Method::POST)
            .uri("/v1/vms")
            .header("content-type", "application/json")
            .body(Body::from(r#"{"name":"x","kernel":"/k"}"#))
            .unwrap();
        let a = api.send(req).await;
        assert_eq!(a.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(api.svc().counts().unwrap(), (0, 0));
    }

    #[tokio::test]
    async fn daemon_info_reports_this_daemon_and_its_counts() {
        let api = Api::new(fake::done).await;
        api.created("a", "00000000000a", me());
        let me_pid = std::process::id() as i32;
        let st = banger_fc::pid::start_time(me_pid).unwrap();
        running_in(api.svc(), "b", "00000000000b", me_pid, st);
        let a = api.get("/v1/daemon").await;
        assert_eq!(a.status, StatusCode::OK);
        let v = a.json();
        assert_eq!(v["version"], banger_api::VERSION);
        assert_eq!(v["pid"], std::process::id());
        assert_eq!(v["vmm"], "banger-vmm-qemu v1");
        assert_eq!(v["socket"], "/run/banger/bangerd.sock");
        assert_eq!(v["state_dir"], api.svc().dirs().state.display().to_string());
        assert_eq!(v["run_dir"], api.svc().dirs().run.display().to_string());
        assert_eq!(v["schema_version"], crate::store::schema_version());
        assert_eq!(
            (v["vms"].clone(), v["running"].clone()),
            (2.into(), 1.into())
        );
    }

    /// A stand-in VMM (`sleep`) and a fake helper whose `signal_vmm` ends it, as the
    /// real helper ends the recorded (pid, start time).
    fn killable_vmm() -> (
        i32,
        u64,
        impl Fn(&HelperRequest) -> Result<Reply, ClientError> + Send + Sync + 'static,
    ) {
        let child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let st = banger_fc::pid::start_time(pid).unwrap();
        let child = Mutex::new(child);
        let answer = move |r: &HelperRequest| {
            if let HelperRequest::SignalVmm(s) = r {
                assert_eq!((s.pid, s.start_time), (pid, st));
                let mut c = child.lock().unwrap();
                c.kill().unwrap();
                c.wait().unwrap();
            }
            fake::done(r)
        };
        (pid, st, answer)
    }

    #[tokio::test]
    async fn remove_takes_force_from_the_query() {
        let (pid, st, answer) = killable_vmm();
        let api = Api::new(answer).await;
        running_in(api.svc(), "vm", "00000000000a", pid, st);
        let rm = |q: &'static str| api.call(me(), Method::DELETE, q, None);
        rm("/v1/vms/vm").await.refused(
            StatusCode::CONFLICT,
            ErrorKind::Conflict,
            "VM vm is running; cannot remove it; stop it first or use --force",
        );
        rm("/v1/vms/vm?force=false").await.refused(
            StatusCode::CONFLICT,
            ErrorKind::Conflict,
            "cannot remove it",
        );
        for q in ["/v1/vms/vm?force=maybe", "/v1/vms/vm?force=1"] {
            rm(q).await.refused(
                StatusCode::BAD_REQUEST,
                ErrorKind::BadRequest,
                "malformed query",
            );
        }
        assert_eq!(api.ops(), Vec::<String>::new(), "nothing done yet");
        let a = rm("/v1/vms/vm?force=true").await;
        assert_eq!(a.status, StatusCode::NO_CONTENT, "{:?}", a.body);
        assert!(a.body.is_empty());
        assert!(api.svc().store.get_by_name("vm").unwrap().is_none());
        assert_eq!(api.ops()[0], "signal_vmm");
        assert_eq!(banger_fc::pid::start_time(pid), None, "the VMM is gone");
        // A VM without a VMM goes without force.
        api.created("idle", "00000000000b", me());
        assert_eq!(rm("/v1/vms/idle").await.status, StatusCode::NO_CONTENT);
        assert_eq!(api.svc().counts().unwrap(), (0, 0));
    }

    #[tokio::test]
    async fn kill_and_start_reach_their_verbs() {
        let (pid, st, answer) = killable_vmm();
        let api = Api::new(answer).await;
        running_in(api.svc(), "vm", "00000000000a", pid, st);
        let a = api.call(me(), Method::POST, "/v1/vms/vm/kill", None).await;
        assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
        assert_eq!(a.json()["state"], "stopped");
        assert_eq!(api.ops(), ["signal_vmm", "delete_tap", "remove_vm_runtime"]);
        // Start: this fake answers the launch with the wrong kind of reply, and the
        // start fails as the service says, an internal error.
        api.seen.lock().unwrap().clear();
        let a = api.call(me(), Method::POST, "/v1/vms/vm/start", None).await;
        a.refused(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorKind::Internal,
            "VM vm failed to start",
        );
        assert!(
            api.ops().contains(&"launch_vmm".to_string()),
            "{:?}",
            api.ops()
        );
        assert_eq!(api.get("/v1/vms/vm").await.json()["state"], "failed");
        // A running VM may not start, which the service's InvalidState says with 409.
        let me_pid = std::process::id() as i32;
        let me_st = banger_fc::pid::start_time(me_pid).unwrap();
        running_in(api.svc(), "live", "00000000000b", me_pid, me_st);
        api.call(me(), Method::POST, "/v1/vms/live/start", None)
            .await
            .refused(
                StatusCode::CONFLICT,
                ErrorKind::Conflict,
                "VM live is running; cannot start it",
            );
    }

    #[tokio::test]
    async fn logs_are_the_console_from_the_query_s_offset() {
        let api = Api::new(fake::done).await;
        api.created("vm", "00000000000a", me());
        let logs = async |q: &str| api.get(&format!("/v1/vms/vm/logs{q}")).await;
        // No console yet: nothing, from 0.
        let a = logs("").await;
        assert_eq!((a.status, a.body.len()), (StatusCode::OK, 0));
        assert_eq!(a.headers["x-banger-next-offset"], "0");
        let rec = api.svc().store.get_by_name("vm").unwrap().unwrap();
        let console = api.svc().dirs().console_log(&rec.id);
        std::fs::create_dir_all(console.parent().unwrap()).unwrap();
        std::fs::write(&console, "hello\nworld\n").unwrap();
        for (q, body, next) in [
            ("", "hello\nworld\n", "12"),
            ("?offset=0", "hello\nworld\n", "12"),
            ("?offset=6", "world\n", "12"),
            ("?offset=12", "", "12"),
            ("?offset=99", "", "12"),
        ] {
            let a = logs(q).await;
            assert_eq!(a.status, StatusCode::OK, "{q}");
            assert_eq!(a.headers["content-type"], "application/octet-stream");
            assert_eq!(
                (
                    &a.body[..],
                    a.headers["x-banger-next-offset"].to_str().unwrap()
                ),
                (body.as_bytes(), next),
                "{q}"
            );
        }
        for q in ["?offset=-1", "?offset=abc", "?offset=18446744073709551616"] {
            logs(q).await.refused(
                StatusCode::BAD_REQUEST,
                ErrorKind::BadRequest,
                "malformed query",
            );
        }
    }

    #[tokio::test]
    async fn image_routes_show_list_refuse_and_remove() {
        use banger_helper::{Failure, FailureKind};
        let api = Api::new(|r| match r {
            HelperRequest::BuildImage(_) => Err(ClientError::Refused(Failure {
                kind: FailureKind::Failed,
                message: "debootstrap failed: no network".into(),
            })),
            r => fake::done(r),
        })
        .await;
        let digest = "ab".repeat(32);
        let dir = api.svc().dirs().images().join(&digest);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("vmlinuz"), "k").unwrap();
        std::fs::write(dir.join("rootfs.ext4"), "root").unwrap();
        api.svc()
            .store
            .insert_image("deb", &digest, "import")
            .unwrap();
        let used =
            serde_json::from_value(serde_json::json!({"name": "user", "image": "deb"})).unwrap();
        api.svc()
            .store
            .insert("00000000000a", &used, (0, 0))
            .unwrap();

        let list = api.get("/v1/images").await;
        assert_eq!(list.status, StatusCode::OK);
        assert_eq!(list.json()[0]["name"], "deb");
        let one = api.get("/v1/images/deb").await;
        assert_eq!(one.status, StatusCode::OK);
        let v = one.json();
        assert_eq!(
            (&v["digest"], &v["rootfs_bytes"]),
            (&digest.clone().into(), &4.into())
        );
        assert_eq!(v["used_by"], serde_json::json!(["user"]));

        api.call(me(), Method::DELETE, "/v1/images/deb", None)
            .await
            .refused(
                StatusCode::CONFLICT,
                ErrorKind::Conflict,
                "image deb is used by user; remove those VMs first",
            );
        let post =
            |uri: &'static str, body: &'static str| api.call(me(), Method::POST, uri, Some(body));
        for (body, status, kind, want) in [
            (
                r#"{"name":"deb"}"#,
                StatusCode::CONFLICT,
                ErrorKind::Conflict,
                "an image named deb already exists",
            ),
            (
                r#"{"name":"New"}"#,
                StatusCode::BAD_REQUEST,
                ErrorKind::BadRequest,
                "invalid image name",
            ),
            (
                r#"{"name":"new","release":"sid"}"#,
                StatusCode::BAD_REQUEST,
                ErrorKind::BadRequest,
                "unknown release \"sid\"",
            ),
            (
                r#"{"name":"new","packages":["curl; rm -rf /"]}"#,
                StatusCode::BAD_REQUEST,
                ErrorKind::BadRequest,
                "invalid package name",
            ),
            (
                r#"{"name":"new"}"#,
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorKind::Internal,
                "image build failed: debootstrap failed: no network",
            ),
        ] {
            post("/v1/images/build", body)
                .await
                .refused(status, kind, want);
        }
        post(
            "/v1/images/import",
            r#"{"name":"imp","kernel":"vmlinuz","rootfs":"/r"}"#,
        )
        .await
        .refused(
            StatusCode::BAD_REQUEST,
            ErrorKind::BadRequest,
            "cannot import vmlinuz: the path must be absolute",
        );

        // A build in flight shows its last step.
        let build = api.svc().dirs().images().join(".build-00000000000f");
        std::fs::create_dir_all(&build).unwrap();
        std::fs::write(build.join("progress"), "debootstrap\ninstalling packages\n").unwrap();
        api.svc()
            .builds
            .lock()
            .unwrap()
            .insert("next".into(), build);
        let p = api.get("/v1/images/next/progress").await;
        assert_eq!(
            (p.status, p.json()),
            (
                StatusCode::OK,
                serde_json::json!({"building": true, "step": "installing packages"})
            )
        );

        api.svc().remove("user", false).await.unwrap();
        let a = api.call(me(), Method::DELETE, "/v1/images/deb", None).await;
        assert_eq!(a.status, StatusCode::NO_CONTENT, "{:?}", a.body);
        assert!(!dir.exists(), "its files went with it");
        assert_eq!(api.get("/v1/images").await.json(), serde_json::json!([]));
    }
}
