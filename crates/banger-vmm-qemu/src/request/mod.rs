//! Parsing: an HTTP request becomes one [`VmmAction`] or a [`RequestError`], with
//! nothing applied yet. Routing is one match on (method, first path segment), as in
//! Firecracker's `api_server/parsed_request.rs`; each resource has its own small
//! parser beside this file, as Firecracker's `api_server/request/*.rs` do.

mod actions;
mod boot_source;
mod drive;
mod logger;
mod machine_config;
mod metrics;
mod mmds;
mod net;
mod vm;

use hyper::Method;
use serde::de::DeserializeOwned;

use crate::action::VmmAction;

/// A request turned into what it asks for, plus the deprecation notice it earned
/// (Firecracker answers such requests with a `Deprecation` header and logs the notice).
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedRequest {
    pub action: VmmAction,
    pub deprecation: Option<&'static str>,
}

impl ParsedRequest {
    fn new(action: VmmAction) -> Self {
        Self {
            action,
            deprecation: None,
        }
    }

    fn deprecated(mut self, notice: &'static str) -> Self {
        self.deprecation = Some(notice);
        self
    }
}

/// Why a request was refused before it reached the VMM (400), with Firecracker's texts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("The ID cannot be empty.")]
    EmptyId,
    #[error("API Resource IDs can only contain alphanumeric characters and underscores.")]
    InvalidId,
    #[error("Invalid request method and/or path: {0} {1}.")]
    InvalidPathMethod(Method, String),
    #[error("An error occurred when deserializing the json body of a request: {0}.")]
    SerdeJson(String),
    #[error("Empty {0} request.")]
    EmptyBody(Method),
    #[error("GET request cannot have a body.")]
    GetWithBody,
    #[error("{0}")]
    Generic(String),
}

/// Parses one request. `body` is `None` when the request had none.
pub fn parse(
    method: &Method,
    path: &str,
    body: Option<&[u8]>,
) -> Result<ParsedRequest, RequestError> {
    let tokens: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let first = tokens[0];
    let second = tokens.get(1).copied();
    let new = |a| Ok(ParsedRequest::new(a));
    match (method.clone(), first, body) {
        (Method::GET, "", None) => new(VmmAction::GetInstanceInfo),
        (Method::GET, "version", None) => new(VmmAction::GetVersion),
        (Method::GET, "machine-config", None) => new(VmmAction::GetMachineConfig),
        (Method::GET, "vm", None) if second == Some("config") => new(VmmAction::GetFullVmConfig),
        (Method::GET, "mmds", None) => new(VmmAction::GetMmds),
        (Method::GET, "balloon" | "hotplug", None) => new(unsupported(first)),
        (Method::GET, _, Some(_)) => Err(RequestError::GetWithBody),

        (Method::PUT, "actions", Some(b)) => actions::parse_put(b),
        (Method::PUT, "boot-source", Some(b)) => boot_source::parse_put(b),
        (Method::PUT, "drives", Some(b)) => drive::parse_put(b, second),
        (Method::PUT, "logger", Some(b)) => logger::parse_put(b),
        (Method::PUT, "machine-config", Some(b)) => machine_config::parse_put(b),
        (Method::PUT, "metrics", Some(b)) => metrics::parse_put(b),
        (Method::PUT, "mmds", Some(b)) => mmds::parse_put(b, second),
        (Method::PUT, "network-interfaces", Some(b)) => net::parse_put(b, second),
        (Method::PUT, "serial", Some(b)) => new(VmmAction::PutSerial(json(b)?)),
        (Method::PUT, "entropy", Some(b)) => new(VmmAction::PutEntropy(json(b)?)),
        (
            Method::PUT,
            "vsock" | "balloon" | "snapshot" | "cpu-config" | "pmem" | "hotplug",
            Some(_),
        ) => new(unsupported(first)),
        (Method::PUT, _, None) => Err(RequestError::EmptyBody(Method::PUT)),

        (Method::PATCH, "drives", Some(b)) => drive::parse_patch(b, second),
        (Method::PATCH, "machine-config", Some(b)) => machine_config::parse_patch(b),
        (Method::PATCH, "mmds", Some(b)) => mmds::parse_patch(b),
        (Method::PATCH, "network-interfaces", Some(b)) => net::parse_patch(b, second),
        (Method::PATCH, "vm", Some(b)) => vm::parse_patch(b),
        (Method::PATCH, "balloon" | "hotplug" | "pmem", Some(_)) => new(unsupported(first)),
        (Method::PATCH, _, None) => Err(RequestError::EmptyBody(Method::PATCH)),

        (m, other, _) => Err(RequestError::InvalidPathMethod(m, other.to_string())),
    }
}

fn unsupported(resource: &str) -> VmmAction {
    VmmAction::Unsupported(resource.to_string())
}

/// A body as `T`; every Firecracker body type refuses unknown fields.
fn json<T: DeserializeOwned>(body: &[u8]) -> Result<T, RequestError> {
    serde_json::from_slice(body).map_err(|e| RequestError::SerdeJson(e.to_string()))
}

/// The `{id}` of `/drives/{id}` and `/network-interfaces/{id}`.
fn path_id(token: Option<&str>) -> Result<&str, RequestError> {
    match token {
        None | Some("") => Err(RequestError::EmptyId),
        Some(id) if !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') => {
            Err(RequestError::InvalidId)
        }
        Some(id) => Ok(id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(m: Method, path: &str, body: Option<&str>) -> String {
        parse(&m, path, body.map(str::as_bytes))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn routing_refuses_as_firecracker_does() {
        assert_eq!(
            err(Method::GET, "/foo", None),
            "Invalid request method and/or path: GET foo."
        );
        assert_eq!(
            err(Method::DELETE, "/machine-config", None),
            "Invalid request method and/or path: DELETE machine-config."
        );
        assert_eq!(
            err(Method::GET, "/machine-config", Some("{}")),
            "GET request cannot have a body."
        );
        assert_eq!(
            err(Method::PUT, "/machine-config", None),
            "Empty PUT request."
        );
        assert_eq!(err(Method::PATCH, "/vm", None), "Empty PATCH request.");
        assert_eq!(
            err(Method::GET, "/vm", None),
            "Invalid request method and/or path: GET vm."
        );
    }

    #[test]
    fn get_routes_need_no_body() {
        for (path, want) in [
            ("/", VmmAction::GetInstanceInfo),
            ("/version", VmmAction::GetVersion),
            ("/machine-config", VmmAction::GetMachineConfig),
            ("/vm/config", VmmAction::GetFullVmConfig),
            ("/mmds", VmmAction::GetMmds),
        ] {
            assert_eq!(
                parse(&Method::GET, path, None).unwrap().action,
                want,
                "{path}"
            );
        }
        assert_eq!(
            parse(&Method::PUT, "/vsock", Some(b"{}")).unwrap().action,
            VmmAction::Unsupported("vsock".into())
        );
    }

    #[test]
    fn path_ids_are_checked_before_the_body() {
        assert_eq!(path_id(None), Err(RequestError::EmptyId));
        assert_eq!(path_id(Some("")), Err(RequestError::EmptyId));
        assert_eq!(path_id(Some("bad-id")), Err(RequestError::InvalidId));
        assert_eq!(path_id(Some("ok_1")), Ok("ok_1"));
    }
}
