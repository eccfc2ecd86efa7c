//! The HTTP side of the API, shaped as Firecracker's micro_http answers: the body
//! limit, the request and result log lines, the response's status line and headers.
//! Each request is parsed ([`crate::request`]), applied to the state
//! ([`crate::vmm`]) under a short lock, and any QEMU work runs after that lock is
//! released, so `GET /` answers while a guest starts.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use banger_fc::models::LogLevel;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HeaderName, HeaderValue, SERVER};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};

use crate::action::VmmAction;
use crate::log::Logger;
use crate::request::{self, RequestError};
use crate::vmm::{ActionError, Applied, Vmm};

/// The API's shared state: the VMM's configuration behind a lock held only while an
/// action is applied, and a second lock that orders pause, resume and Ctrl-Alt-Del.
pub struct Api {
    pub vmm: Mutex<Vmm>,
    pub control: tokio::sync::Mutex<()>,
    pub max_payload: usize,
    pub log: Logger,
}

impl Api {
    fn vmm(&self) -> std::sync::MutexGuard<'_, Vmm> {
        self.vmm.lock().unwrap_or_else(|p| p.into_inner())
    }
}

const DEPRECATION: HeaderName = HeaderName::from_static("deprecation");

pub async fn serve(
    api: Arc<Api>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let max = api.max_payload;
    if !matches!(
        method,
        Method::GET | Method::PUT | Method::PATCH | Method::DELETE
    ) {
        return Ok(micro_http_error(
            "Invalid HTTP Method: Unsupported HTTP method.",
        ));
    }
    // micro_http refuses on the declared length, before reading the body.
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if let Some(size) = declared
        && size > max
    {
        return Ok(too_large(size, max));
    }
    let body = match Limited::new(req.into_body(), max).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Ok(too_large(max + 1, max)),
    };
    let body = (!body.is_empty()).then_some(body);
    api.log.api(
        LogLevel::Info,
        &format!(
            "The API server received a {}.",
            describe(&method, &path, body.as_deref())
        ),
    );
    let parsed = match request::parse(&method, &path, body.as_deref()) {
        Ok(p) => p,
        Err(e) => {
            api.log.api(LogLevel::Error, &debug_text(&e));
            return Ok(respond(
                StatusCode::BAD_REQUEST,
                Some(fault(&e.to_string())),
                false,
            ));
        }
    };
    let result = execute(&api, parsed.action).await;
    let deprecated = parsed.deprecation.is_some();
    let resp = match result {
        Ok(None) => {
            api.log.api(
                LogLevel::Info,
                "The request was executed successfully. Status code: 204 No Content.",
            );
            respond(StatusCode::NO_CONTENT, None, deprecated)
        }
        Ok(Some(v)) => {
            api.log.api(
                LogLevel::Info,
                "The request was executed successfully. Status code: 200 OK.",
            );
            respond(StatusCode::OK, Some(v), deprecated)
        }
        Err(e) => {
            let (status, words) = match e.status() {
                413 => (StatusCode::PAYLOAD_TOO_LARGE, "413 Payload too large"),
                _ => (StatusCode::BAD_REQUEST, "400 Bad Request"),
            };
            api.log.api(
                LogLevel::Error,
                &format!("Received Error. Status code: {words}. Message: {e}"),
            );
            respond(status, Some(fault(&e.to_string())), deprecated)
        }
    };
    // Firecracker logs the notice once the VMM has answered, whatever it answered.
    if let Some(notice) = parsed.deprecation {
        api.log.api(LogLevel::Warning, notice);
    }
    Ok(resp)
}

/// Applies the action; QEMU work (start, QMP) runs after the state's lock is released.
async fn execute(api: &Arc<Api>, action: VmmAction) -> Result<Option<Value>, ActionError> {
    // Pause, resume and Ctrl-Alt-Del are decided and carried out in order.
    let _control = match action {
        VmmAction::PatchVm(_) | VmmAction::SendCtrlAltDel => Some(api.control.lock().await),
        _ => None,
    };
    let applied = api.vmm().apply(action)?;
    match applied {
        Applied::Done => Ok(None),
        Applied::Body(v) => Ok(Some(v)),
        Applied::Start(plan) => {
            // The start runs to its end on its own task: a client that hangs up
            // mid-start (its request future dropped) must not leave QEMU half
            // started and the VMM stuck in its starting phase.
            let owner = api.clone();
            let r = tokio::spawn(async move {
                let r = crate::start::instance_start(&plan).await;
                owner.vmm().started(r.is_ok());
                r
            })
            .await
            .unwrap_or_else(|e| {
                // A start that panicked ends the phase as a failed start would.
                api.vmm().started(false);
                Err(crate::vmm::StartMicrovmError::Panicked(e.to_string()))
            });
            r.map(|()| None).map_err(ActionError::StartMicrovm)
        }
        Applied::Qmp(call) => {
            crate::qemu::qmp(&call.socket, call.command, call.arguments.clone())
                .await
                .map_err(|e| ActionError::Internal(format!("Failed to {}: {e}", call.what)))?;
            api.vmm().qmp_done(&call);
            Ok(None)
        }
    }
}

fn fault(message: &str) -> Value {
    json!({ "fault_message": message })
}

/// Firecracker's `describe`: the body is logged except for `/mmds` (which may hold
/// secrets) and requests without one.
fn describe(method: &Method, path: &str, body: Option<&[u8]>) -> String {
    let m = titlecase(method);
    match body {
        Some(b) if !is_mmds(path) => format!(
            "{m} request on {path:?} with body {:?}",
            std::str::from_utf8(b).unwrap_or("inconvertible to UTF-8")
        ),
        _ => format!("{m} request on {path:?}"),
    }
}

/// Whether a path is the MMDS data store's as the router reads it (empty segments
/// taken away: `//mmds` and `/mmds/` too): its body may hold secrets.
fn is_mmds(path: &str) -> bool {
    let mut segments = path.split('/').filter(|s| !s.is_empty());
    segments.next() == Some("mmds") && segments.next().is_none()
}

/// How Firecracker's `{:?}` shows a parse error in its log.
fn debug_text(e: &RequestError) -> String {
    match e {
        RequestError::EmptyId => "EmptyID".into(),
        RequestError::InvalidId => "InvalidID".into(),
        RequestError::InvalidPathMethod(m, p) => {
            format!("InvalidPathMethod({p:?}, {})", titlecase(m))
        }
        RequestError::SerdeJson(s) => format!("SerdeJson(Error({s:?}))"),
        other => format!("Generic(BadRequest, {:?})", other.to_string()),
    }
}

fn titlecase(m: &Method) -> String {
    let s = m.as_str();
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_string() + &c.as_str().to_lowercase(),
        None => String::new(),
    }
}

/// micro_http's answer to a body over the limit: not a `fault_message`, and with a
/// raw newline inside the string, byte for byte as Firecracker sends it.
fn too_large(size: usize, max: usize) -> Response<Full<Bytes>> {
    micro_http_error(&format!(
        "Request payload with size {size} is larger than the limit of {max} allowed by server."
    ))
}

/// How micro_http answers a request it could not take (byte for byte).
fn micro_http_error(text: &str) -> Response<Full<Bytes>> {
    let body =
        format!("{{ \"error\": \"{text}\nAll previous unanswered requests will be dropped.\" }}");
    shaped(StatusCode::BAD_REQUEST, Some(Bytes::from(body)), false)
}

fn respond(status: StatusCode, body: Option<Value>, deprecated: bool) -> Response<Full<Bytes>> {
    let bytes = body.map(|b| Bytes::from(serde_json::to_vec(&b).expect("JSON values serialize")));
    shaped(status, bytes, deprecated)
}

/// Firecracker's (micro_http's) response shape: no reason phrase, `Server`,
/// `Connection`, `Deprecation` when earned, then the JSON content type when there is
/// a body; nothing of that on 204.
fn shaped(status: StatusCode, body: Option<Bytes>, deprecated: bool) -> Response<Full<Bytes>> {
    let has_body = body.is_some();
    let mut resp = Response::new(Full::new(body.unwrap_or_default()));
    *resp.status_mut() = status;
    resp.extensions_mut()
        .insert(hyper::ext::ReasonPhrase::from_static(b""));
    let h = resp.headers_mut();
    h.insert(SERVER, HeaderValue::from_static("Firecracker API"));
    h.insert(CONNECTION, HeaderValue::from_static("keep-alive"));
    if deprecated {
        h.insert(DEPRECATION, HeaderValue::from_static("true"));
    }
    if has_body {
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_described_as_firecracker_logs_them() {
        assert_eq!(describe(&Method::GET, "/", None), r#"Get request on "/""#);
        assert_eq!(
            describe(&Method::PATCH, "/machine-config", Some(br#"{"smt":true}"#)),
            r#"Patch request on "/machine-config" with body "{\"smt\":true}""#
        );
        assert_eq!(
            describe(&Method::PUT, "/mmds", Some(b"{}")),
            r#"Put request on "/mmds""#
        );
        for path in ["//mmds", "/mmds/", "/mmds//"] {
            assert_eq!(
                describe(&Method::PUT, path, Some(b"{\"key\":\"secret\"}")),
                format!("Put request on {path:?}"),
            );
        }
        assert_eq!(
            describe(&Method::PUT, "/mmds/config", Some(b"{}")),
            r#"Put request on "/mmds/config" with body "{}""#
        );
        assert_eq!(
            debug_text(&RequestError::EmptyBody(Method::PUT)),
            r#"Generic(BadRequest, "Empty PUT request.")"#
        );
        assert_eq!(
            debug_text(&RequestError::InvalidPathMethod(Method::GET, "foo".into())),
            r#"InvalidPathMethod("foo", Get)"#
        );
    }

    #[test]
    fn responses_have_micro_http_s_shape() {
        let r = respond(StatusCode::NO_CONTENT, None, true);
        let names: Vec<&str> = r.headers().keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["server", "connection", "deprecation"]);
        let r = too_large(51201, 51200);
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert_eq!(r.headers()[CONTENT_TYPE], "application/json");
    }
}
