//! Typed client for the Firecracker API over its Unix socket.
//!
//! One HTTP/1.1 connection per call: Firecracker serves at most 10 connections and a
//! short-lived connection never holds one of them while banger waits on something else.
//! The exchange itself is `banger-http`'s; the peer check, the timeout, the reply cap
//! and the errors that name the call are here.

use std::path::{Path, PathBuf};
use std::time::Duration;

use banger_http::ExchangeError;
use bytes::Bytes;
use hyper::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;

use crate::models::*;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot connect to the VMM API socket {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The socket is served by another process than the VMM banger launched: the
    /// name was pointed elsewhere (the VMM's directory is its user's, and a guest that
    /// took the VMM over could do that). Nothing was sent.
    #[error(
        "the VMM API socket {path} is served by pid {got:?}, not by the VMM (pid {want}); nothing was sent"
    )]
    WrongPeer {
        path: PathBuf,
        want: i32,
        got: Option<i32>,
    },
    #[error("HTTP exchange with the VMM failed on {method} {uri}")]
    Http {
        method: Method,
        uri: String,
        #[source]
        source: hyper::Error,
    },
    /// The reply was cut, broken, or longer than [`MAX_REPLY`].
    #[error("cannot read the VMM's reply to {method} {uri} (at most {MAX_REPLY} bytes)")]
    Reply {
        method: Method,
        uri: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("the VMM did not answer {method} {uri} within {timeout:?}")]
    Timeout {
        method: Method,
        uri: String,
        timeout: Duration,
    },
    /// The VMM refused the request; `fault_message` is Firecracker's text, verbatim.
    #[error("{method} {uri} was refused ({status}): {fault_message}")]
    Fault {
        method: Method,
        uri: String,
        status: StatusCode,
        fault_message: String,
    },
    #[error("unexpected response to {method} {uri}: {status} {body}")]
    Unexpected {
        method: Method,
        uri: String,
        status: StatusCode,
        body: String,
    },
    #[error("cannot decode the VMM's answer to {uri}")]
    Decode {
        uri: String,
        #[source]
        source: serde_json::Error,
    },
}

/// The longest reply body read from a VMM (Firecracker's largest, `GET /vm/config`,
/// is a few KiB).
pub const MAX_REPLY: usize = 1 << 20;
/// The longest `fault_message` kept: it ends up in a VM's `last_error`.
pub const MAX_FAULT_MESSAGE: usize = 4096;

/// Client for one VMM's API socket.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
    timeout: Duration,
    peer: Option<i32>,
}

impl Client {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
            timeout: Duration::from_secs(10),
            peer: None,
        }
    }

    /// Talks only to a socket that process `pid` serves (SO_PEERCRED of the connection
    /// is the listener's): a request, and the VM configuration or shutdown it carries,
    /// never reaches whatever else the socket's name was made to lead to.
    pub fn with_peer(mut self, pid: i32) -> Self {
        self.peer = Some(pid);
        self
    }

    /// Per-request timeout (connect + exchange). InstanceStart under software
    /// emulation can take a while; the default is 10 s.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub async fn instance_info(&self) -> Result<InstanceInfo, Error> {
        self.get("/").await
    }
    pub async fn machine_config(&self) -> Result<MachineConfiguration, Error> {
        self.get("/machine-config").await
    }
    pub async fn put_machine_config(&self, cfg: &MachineConfiguration) -> Result<(), Error> {
        self.send(Method::PUT, "/machine-config", Some(cfg)).await
    }
    pub async fn put_boot_source(&self, boot: &BootSource) -> Result<(), Error> {
        self.send(Method::PUT, "/boot-source", Some(boot)).await
    }
    pub async fn put_drive(&self, drive: &Drive) -> Result<(), Error> {
        let uri = format!("/drives/{}", drive.drive_id);
        self.send(Method::PUT, &uri, Some(drive)).await
    }
    pub async fn put_network_interface(&self, iface: &NetworkInterface) -> Result<(), Error> {
        let uri = format!("/network-interfaces/{}", iface.iface_id);
        self.send(Method::PUT, &uri, Some(iface)).await
    }
    /// `PUT /mmds/config`: which interfaces the guest reaches MMDS on (after they are
    /// configured, before the guest starts).
    pub async fn put_mmds_config(&self, cfg: &MmdsConfig) -> Result<(), Error> {
        self.send(Method::PUT, "/mmds/config", Some(cfg)).await
    }
    /// `PUT /mmds`: replaces the whole MMDS data store.
    pub async fn put_mmds(&self, data: &serde_json::Value) -> Result<(), Error> {
        self.send(Method::PUT, "/mmds", Some(data)).await
    }
    /// `GET /mmds`: the data store as the VMM holds it.
    pub async fn mmds(&self) -> Result<serde_json::Value, Error> {
        self.get("/mmds").await
    }
    pub async fn action(&self, action_type: ActionType) -> Result<(), Error> {
        self.send(
            Method::PUT,
            "/actions",
            Some(&InstanceActionInfo { action_type }),
        )
        .await
    }
    pub async fn instance_start(&self) -> Result<(), Error> {
        self.action(ActionType::InstanceStart).await
    }
    pub async fn send_ctrl_alt_del(&self) -> Result<(), Error> {
        self.action(ActionType::SendCtrlAltDel).await
    }
    pub async fn vm_config(&self) -> Result<FullVmConfiguration, Error> {
        self.get("/vm/config").await
    }
    pub async fn patch_vm(&self, state: VmStateRequest) -> Result<(), Error> {
        self.send(Method::PATCH, "/vm", Some(&VmPatch { state }))
            .await
    }

    pub async fn get<T: DeserializeOwned>(&self, uri: &str) -> Result<T, Error> {
        let (status, body) = self.raw(Method::GET, uri, None).await?;
        if status != StatusCode::OK {
            return Err(fault(Method::GET, uri, status, &body));
        }
        serde_json::from_slice(&body).map_err(|source| Error::Decode {
            uri: uri.into(),
            source,
        })
    }

    /// PUT/PATCH with a JSON body; success is `204 No Content`.
    pub async fn send<B: Serialize>(
        &self,
        method: Method,
        uri: &str,
        body: Option<&B>,
    ) -> Result<(), Error> {
        let bytes = body.map(|b| serde_json::to_vec(b).expect("API bodies always serialize"));
        let (status, resp) = self.raw(method.clone(), uri, bytes).await?;
        if status == StatusCode::NO_CONTENT {
            Ok(())
        } else {
            Err(fault(method, uri, status, &resp))
        }
    }

    /// The raw escape hatch: any method, path and body; returns status and body bytes.
    pub async fn raw(
        &self,
        method: Method,
        uri: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes), Error> {
        let fut = self.exchange(method.clone(), uri, body);
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout {
                method,
                uri: uri.into(),
                timeout: self.timeout,
            }),
        }
    }

    async fn exchange(
        &self,
        method: Method,
        uri: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes), Error> {
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|source| Error::Connect {
                path: self.socket.clone(),
                source,
            })?;
        if let Some(want) = self.peer {
            let got = stream.peer_cred().ok().and_then(|c| c.pid());
            if got != Some(want) {
                return Err(Error::WrongPeer {
                    path: self.socket.clone(),
                    want,
                    got,
                });
            }
        }
        let mut req = banger_http::request(method.clone(), uri, "localhost", body);
        req.headers_mut().insert(
            hyper::header::ACCEPT,
            hyper::header::HeaderValue::from_static("application/json"),
        );
        // What a VMM answers is bounded: a VMM its guest took over could stream
        // without end at the daemon, which reads every reply.
        match banger_http::exchange(stream, req, Some(MAX_REPLY)).await {
            Ok(r) => Ok((r.status, r.body)),
            Err(ExchangeError::Http(source)) => Err(Error::Http {
                method,
                uri: uri.into(),
                source,
            }),
            Err(e) => Err(Error::Reply {
                method,
                uri: uri.into(),
                source: Box::new(e),
            }),
        }
    }
}

/// `s` cut to [`MAX_FAULT_MESSAGE`] bytes (at a character boundary).
fn truncated(mut s: String) -> String {
    if s.len() > MAX_FAULT_MESSAGE {
        let mut end = MAX_FAULT_MESSAGE;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str("...");
    }
    s
}

fn fault(method: Method, uri: &str, status: StatusCode, body: &[u8]) -> Error {
    match serde_json::from_slice::<FaultBody>(body) {
        Ok(f) => Error::Fault {
            method,
            uri: uri.into(),
            status,
            fault_message: truncated(f.fault_message),
        },
        Err(_) => Error::Unexpected {
            method,
            uri: uri.into(),
            status,
            body: truncated(String::from_utf8_lossy(body).into_owned()),
        },
    }
}

/// The client against the real Firecracker (`scripts/firecracker-assets`, which
/// scripts/test runs): each call's success and refusal as Firecracker itself answers.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::{
        ActionType, BootSource, Drive, MachineConfiguration, NetworkInterface, VmStateRequest,
    };

    fn assets() -> PathBuf {
        std::env::var_os("BANGER_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.cache"))
            .join("firecracker")
    }

    /// The VMM and its directory (removed when the VMM is dropped).
    struct Vmm {
        child: std::process::Child,
        _dir: tempfile::TempDir,
    }
    impl Drop for Vmm {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    async fn firecracker() -> (Vmm, Client) {
        let bin = assets().join("bin/firecracker");
        assert!(
            bin.exists(),
            "{} is missing: run scripts/firecracker-assets",
            bin.display()
        );
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("api.sock");
        let log = std::fs::File::create(dir.path().join("out.log")).unwrap();
        let child = std::process::Command::new(bin)
            .arg("--api-sock")
            .arg(&sock)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let c = Client::new(&sock)
            .with_timeout(Duration::from_secs(5))
            .with_peer(child.id() as i32);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while c.instance_info().await.is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "firecracker never answered"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        (Vmm { child, _dir: dir }, c)
    }

    fn refused(r: Result<(), Error>, status: u16, words: &str) {
        match r {
            Err(Error::Fault {
                status: s,
                fault_message,
                ..
            }) => {
                assert_eq!(s.as_u16(), status, "{fault_message}");
                assert!(
                    fault_message.contains(words),
                    "{fault_message:?} lacks {words:?}"
                );
            }
            other => panic!("expected a {status} refusal mentioning {words:?}, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn every_call_reports_firecracker_s_refusals_and_accepts_what_it_accepts() {
        let (_vmm, c) = firecracker().await;
        let info = c.instance_info().await.unwrap();
        assert_eq!(info.state, "Not started");
        let mc = |vcpus| MachineConfiguration {
            vcpu_count: vcpus,
            mem_size_mib: 128,
            ..Default::default()
        };
        refused(c.put_machine_config(&mc(0)).await, 400, "vCPU");
        c.put_machine_config(&mc(1)).await.unwrap();
        assert_eq!(c.machine_config().await.unwrap().mem_size_mib, 128);
        let boot = |path: &str| BootSource {
            kernel_image_path: path.into(),
            initrd_path: None,
            boot_args: None,
        };
        refused(
            c.put_boot_source(&boot("/nonexistent/vmlinux")).await,
            400,
            "kernel file cannot be opened",
        );
        c.put_boot_source(&boot(assets().join("tiny-guest").to_str().unwrap()))
            .await
            .unwrap();
        let drive = Drive::on_file("rootfs", "/nonexistent/disk", true, true);
        refused(c.put_drive(&drive).await, 400, "No such file");
        let nic = NetworkInterface::new("eth0", "a-tap-name-far-too-long", None);
        refused(
            c.put_network_interface(&nic).await,
            400,
            "Invalid interface name",
        );
        // MMDS: its config names a configured interface; its store holds what was put.
        let mmds = |iface: &str| MmdsConfig {
            version: MmdsVersion::V2,
            network_interfaces: vec![iface.into()],
            ipv4_address: None,
            imds_compat: false,
        };
        refused(
            c.put_mmds_config(&mmds("eth9")).await,
            400,
            "network interface ID",
        );
        let data = serde_json::json!({"banger": {"hostname": "vm1"}});
        c.put_mmds(&data).await.unwrap();
        assert_eq!(c.mmds().await.unwrap(), data);
        refused(
            c.send_ctrl_alt_del().await,
            400,
            "not supported before starting",
        );
        refused(
            c.patch_vm(VmStateRequest::Paused).await,
            400,
            "not supported before starting",
        );
        refused(c.action(ActionType::FlushMetrics).await, 400, "");
        // GET of an unknown resource is refused too (not taken as data).
        assert!(matches!(
            c.get::<serde_json::Value>("/no-such-resource").await,
            Err(Error::Fault { .. })
        ));
        // The raw escape hatch returns what was said.
        let (status, body) = c.raw(Method::GET, "/", None).await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert!(
            String::from_utf8_lossy(&body).contains("Not started"),
            "{body:?}"
        );

        c.instance_start().await.unwrap();
        assert_eq!(c.instance_info().await.unwrap().state, "Running");
        refused(c.instance_start().await, 400, "");
        refused(
            c.put_machine_config(&mc(2)).await,
            400,
            "not supported after starting",
        );
        c.patch_vm(VmStateRequest::Paused).await.unwrap();
        assert_eq!(c.instance_info().await.unwrap().state, "Paused");
        c.patch_vm(VmStateRequest::Resumed).await.unwrap();
        c.send_ctrl_alt_del().await.unwrap();
    }

    #[tokio::test]
    async fn a_socket_served_by_another_process_gets_nothing() {
        // The name leads to a listener of this process, not the VMM's: refused before
        // a byte is written; the same socket with its real server's pid connects.
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("api.sock");
        let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let me = std::process::id() as i32;
        match Client::new(&sock).with_peer(me + 1).instance_info().await {
            Err(Error::WrongPeer { want, got, .. }) => assert_eq!((want, got), (me + 1, Some(me))),
            other => panic!("{other:?}"),
        }
        listener.set_nonblocking(true).unwrap();
        let (mut conn, _) = listener.accept().unwrap();
        let mut buf = [0u8; 16];
        // Blocking, with a deadline: a child another test forks holds a copy of the
        // client's descriptor until it execs, so the end of the stream may come late.
        conn.set_nonblocking(false).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let r = std::io::Read::read(&mut conn, &mut buf);
        assert!(
            matches!(r, Ok(0)),
            "nothing was sent to the stranger: {r:?}"
        );
        drop(conn);
        let r = Client::new(&sock)
            .with_peer(me)
            .with_timeout(Duration::from_millis(200))
            .instance_info()
            .await;
        assert!(
            matches!(r, Err(Error::Timeout { .. })),
            "the right peer is talked to: {r:?}"
        );
    }

    #[tokio::test]
    async fn a_vmm_that_answers_without_end_is_cut_off_and_its_faults_are_bounded() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("api.sock");
        let listener = tokio::net::UnixListener::bind(&sock).unwrap();
        // Answers every request: an endless chunked body, then (next connection) a
        // fault far longer than a message.
        tokio::spawn(async move {
            for n in 0.. {
                let (mut c, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 4096];
                let _ = c.read(&mut buf).await;
                if n == 0 {
                    let _ = c
                        .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                        .await;
                    let chunk = format!("{:x}\r\n{}\r\n", 65536, "x".repeat(65536));
                    while c.write_all(chunk.as_bytes()).await.is_ok() {}
                } else {
                    let body = format!("{{\"fault_message\":\"{}\"}}", "y".repeat(100_000));
                    let head = format!(
                        "HTTP/1.1 400 Bad Request\r\nContent-Length: {}\r\n\r\n",
                        body.len()
                    );
                    let _ = c.write_all(head.as_bytes()).await;
                    let _ = c.write_all(body.as_bytes()).await;
                }
            }
        });
        let c = Client::new(&sock).with_peer(std::process::id() as i32);
        match c.instance_info().await {
            Err(Error::Reply { .. }) => {}
            other => panic!("{other:?}"),
        }
        match c.send_ctrl_alt_del().await {
            Err(Error::Fault { fault_message, .. }) => {
                assert_eq!(fault_message.len(), MAX_FAULT_MESSAGE + 3)
            }
            other => panic!("{other:?}"),
        }
    }
}
