//! Typed client for `bangerd`'s `/v1` API over its Unix socket, plus a raw escape hatch.
//! The exchange itself is `banger-http`'s, shared with the VMM client.

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

use banger_api::{
    DaemonInfo, ErrorBody, ErrorKind, Image, ImageBuildRequest, ImageImportRequest, StopRequest,
    Vm, VmSpec, VmSummary,
};
use banger_http::ExchangeError;
use bytes::Bytes;
use hyper::{Method, StatusCode};
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "permission denied on {path}; add your user to the 'banger' group (sudo usermod -aG banger $USER) and log in again, or use sudo"
    )]
    PermissionDenied {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("bangerd is not running (no answer on {path}); start it with `banger daemon start`")]
    NotRunning {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP exchange with bangerd failed")]
    Http(#[from] hyper::Error),
    /// The daemon answered with an error body.
    #[error("{}", .body.message)]
    Api { status: StatusCode, body: ErrorBody },
    #[error("bangerd sent an unreadable answer ({status}): {text}")]
    Decode { status: StatusCode, text: String },
}

impl Error {
    /// The daemon's error kind, when the daemon answered.
    pub fn kind(&self) -> Option<ErrorKind> {
        match self {
            Error::Api { body, .. } => Some(body.kind),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub async fn daemon_info(&self) -> Result<DaemonInfo, Error> {
        self.json(Method::GET, "/v1/daemon", None).await
    }
    pub async fn list(&self) -> Result<Vec<VmSummary>, Error> {
        self.json(Method::GET, "/v1/vms", None).await
    }
    /// `GET /v1/vms` as the daemon's JSON bytes (for `--json` output).
    pub async fn list_raw(&self) -> Result<Bytes, Error> {
        let (status, bytes) = self.raw(Method::GET, "/v1/vms", None).await?;
        if status.is_success() {
            Ok(bytes)
        } else {
            Err(api_error(status, &bytes))
        }
    }
    pub async fn create(&self, spec: &VmSpec) -> Result<Vm, Error> {
        self.json(
            Method::POST,
            "/v1/vms",
            Some(serde_json::to_vec(spec).expect("spec serializes")),
        )
        .await
    }
    pub async fn get(&self, name: &str) -> Result<Vm, Error> {
        self.json(Method::GET, &format!("/v1/vms/{}", enc(name)), None)
            .await
    }
    pub async fn start(&self, name: &str) -> Result<Vm, Error> {
        self.json(Method::POST, &format!("/v1/vms/{}/start", enc(name)), None)
            .await
    }
    pub async fn stop(&self, name: &str, timeout_secs: Option<u64>) -> Result<Vm, Error> {
        let body = serde_json::to_vec(&StopRequest { timeout_secs }).expect("serializes");
        self.json(
            Method::POST,
            &format!("/v1/vms/{}/stop", enc(name)),
            Some(body),
        )
        .await
    }
    pub async fn kill(&self, name: &str) -> Result<Vm, Error> {
        self.json(Method::POST, &format!("/v1/vms/{}/kill", enc(name)), None)
            .await
    }
    pub async fn remove(&self, name: &str, force: bool) -> Result<(), Error> {
        let (status, bytes) = self
            .raw(
                Method::DELETE,
                &format!("/v1/vms/{}?force={force}", enc(name)),
                None,
            )
            .await?;
        if status.is_success() {
            Ok(())
        } else {
            Err(api_error(status, &bytes))
        }
    }
    pub async fn images(&self) -> Result<Vec<Image>, Error> {
        self.json(Method::GET, "/v1/images", None).await
    }
    pub async fn image(&self, name: &str) -> Result<Image, Error> {
        self.json(Method::GET, &format!("/v1/images/{}", enc(name)), None)
            .await
    }
    pub async fn build_image(&self, req: &ImageBuildRequest) -> Result<Image, Error> {
        self.json(
            Method::POST,
            "/v1/images/build",
            Some(serde_json::to_vec(req).expect("serializes")),
        )
        .await
    }
    pub async fn import_image(&self, req: &ImageImportRequest) -> Result<Image, Error> {
        self.json(
            Method::POST,
            "/v1/images/import",
            Some(serde_json::to_vec(req).expect("serializes")),
        )
        .await
    }
    pub async fn remove_image(&self, name: &str) -> Result<(), Error> {
        let (status, bytes) = self
            .raw(Method::DELETE, &format!("/v1/images/{}", enc(name)), None)
            .await?;
        if status.is_success() {
            Ok(())
        } else {
            Err(api_error(status, &bytes))
        }
    }
    /// The current step of a build of `name`, if one is running.
    pub async fn build_progress(&self, name: &str) -> Result<Option<String>, Error> {
        let v: serde_json::Value = self
            .json(
                Method::GET,
                &format!("/v1/images/{}/progress", enc(name)),
                None,
            )
            .await?;
        Ok(v["step"].as_str().map(String::from))
    }
    /// Console bytes from `offset`, and the offset to ask for next.
    pub async fn logs(&self, name: &str, offset: u64) -> Result<(Bytes, u64), Error> {
        let uri = format!("/v1/vms/{}/logs?offset={offset}", enc(name));
        let (status, headers, bytes) = self.exchange(Method::GET, &uri, None).await?;
        if !status.is_success() {
            return Err(api_error(status, &bytes));
        }
        let next = headers
            .get("x-banger-next-offset")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(offset + bytes.len() as u64);
        Ok((bytes, next))
    }

    async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        uri: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, Error> {
        let (status, bytes) = self.raw(method, uri, body).await?;
        if !status.is_success() {
            return Err(api_error(status, &bytes));
        }
        serde_json::from_slice(&bytes).map_err(|_| Error::Decode {
            status,
            text: String::from_utf8_lossy(&bytes).into_owned(),
        })
    }

    /// The raw escape hatch: any method, path and body.
    pub async fn raw(
        &self,
        method: Method,
        uri: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes), Error> {
        let (s, _, b) = self.exchange(method, uri, body).await?;
        Ok((s, b))
    }

    async fn exchange(
        &self,
        method: Method,
        uri: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, hyper::HeaderMap, Bytes), Error> {
        let stream = UnixStream::connect(&self.socket).await.map_err(|source| {
            if source.kind() == std::io::ErrorKind::PermissionDenied {
                Error::PermissionDenied {
                    path: self.socket.clone(),
                    source,
                }
            } else {
                Error::NotRunning {
                    path: self.socket.clone(),
                    source,
                }
            }
        })?;
        // No cap: the daemon is trusted to end its replies, and a long VM list or
        // console is wanted whole.
        let req = banger_http::request(method, uri, "bangerd", body);
        match banger_http::exchange(stream, req, None).await {
            Ok(r) => Ok((r.status, r.headers, r.body)),
            Err(ExchangeError::Http(e) | ExchangeError::Body(e)) => Err(Error::Http(e)),
            Err(e @ ExchangeError::TooLong { status, .. }) => Err(Error::Decode {
                status,
                text: e.to_string(),
            }),
        }
    }
}

fn api_error(status: StatusCode, bytes: &[u8]) -> Error {
    match serde_json::from_slice::<ErrorBody>(bytes) {
        Ok(body) => Error::Api { status, body },
        Err(_) => Error::Decode {
            status,
            text: String::from_utf8_lossy(bytes).into_owned(),
        },
    }
}

/// Names reach the URL path verbatim only if they are plain; anything else is
/// percent-encoded so the daemon sees (and refuses) exactly what was typed.
fn enc(name: &str) -> String {
    let mut out = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn hostile_names_are_percent_encoded() {
        assert_eq!(super::enc("dev-1"), "dev-1");
        assert_eq!(super::enc("../x"), "%2E%2E%2Fx");
        assert_eq!(super::enc("a b?c"), "a%20b%3Fc");
    }
}
