//! The daemon's side of the socket: a blocking client, one connection per request,
//! like the helper's synchronous design. [`HelperClient::call`] takes a request and
//! returns the reply its [`HelperRequest`] declares; [`HelperClient::exchange`] is
//! the raw escape hatch (a wire [`Request`] in, a wire [`Reply`] out).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use crate::protocol::{Failure, HelperRequest, Reply, Request, Response};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the root helper at {path} (is bangerd-root running?)")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("lost the connection to the root helper")]
    Io(#[from] std::io::Error),
    #[error("the root helper sent an unreadable reply")]
    Decode(#[from] serde_json::Error),
    #[error("the root helper refused: {0}")]
    Refused(#[source] Failure),
    /// A reply of another kind than the request declares: a helper that does not
    /// keep the protocol.
    #[error("the root helper answered with an unexpected reply: {0:?}")]
    UnexpectedReply(Box<Reply>),
}

/// The reply `R` declares, out of the wire reply: the one place a reply of the wrong
/// kind becomes an error (for [`HelperClient::call`] and for any other transport,
/// such as the daemon's test fake).
pub fn typed_reply<R: HelperRequest>(reply: Reply) -> Result<R::Reply, ClientError> {
    R::from_wire(reply).map_err(ClientError::UnexpectedReply)
}

/// How long the client waits for the helper's reply: image builds run for minutes
/// (debootstrap), everything else is quick.
fn reply_deadline(req: &Request) -> Duration {
    match req {
        Request::BuildImage(_) => Duration::from_secs(30 * 60),
        _ => Duration::from_secs(60),
    }
}

/// Blocking client: one connection per call, like the helper's synchronous design.
#[derive(Debug, Clone)]
pub struct HelperClient {
    socket: PathBuf,
}

impl HelperClient {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
        }
    }

    /// Sends `req` and returns its reply, typed: `call(Ping {})` is a [`Pong`](crate::Pong).
    pub fn call<R: HelperRequest>(&self, req: R) -> Result<R::Reply, ClientError> {
        typed_reply::<R>(self.exchange(&req.into())?)
    }

    /// Sends one wire request and returns the wire reply, whatever its kind.
    pub fn exchange(&self, req: &Request) -> Result<Reply, ClientError> {
        let mut stream =
            UnixStream::connect(&self.socket).map_err(|source| ClientError::Connect {
                path: self.socket.clone(),
                source,
            })?;
        stream.set_read_timeout(Some(reply_deadline(req)))?;
        let mut line = serde_json::to_vec(req)?;
        line.push(b'\n');
        // A refused caller is answered (and closed) before the helper reads: the
        // write may fail, and the reply still says why.
        let written = stream.write_all(&line);
        let mut reader = BufReader::new(stream);
        let mut buf = String::new();
        let read = reader.read_line(&mut buf);
        if buf.is_empty() {
            written?;
            read?;
        }
        let resp: Response = serde_json::from_str(&buf)?;
        resp.map_err(ClientError::Refused)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{BuildImage, CreateVmDirs, Exited, Ping, SignalVmm, Signalled};
    use crate::protocol::{VmmExit, VmmSignal};
    use banger_layout::{Release, VmId};

    #[test]
    fn builds_get_half_an_hour_for_a_reply_and_everything_else_a_minute() {
        let build = Request::BuildImage(BuildImage {
            build_id: VmId::new("0123456789ab").unwrap(),
            release: Release::new("bookworm").unwrap(),
            packages: Vec::new(),
        });
        assert_eq!(reply_deadline(&build), Duration::from_secs(1800));
        assert_eq!(
            reply_deadline(&Request::Ping(Ping {})),
            Duration::from_secs(60)
        );
    }

    #[test]
    fn each_request_takes_only_its_own_reply() {
        let exited = Reply::Exited(Exited {
            exit: Some(VmmExit {
                code: Some(0),
                signal: None,
            }),
        });
        assert_eq!(
            typed_reply::<crate::VmmExited>(exited.clone())
                .unwrap()
                .exit,
            Some(VmmExit {
                code: Some(0),
                signal: None
            })
        );
        typed_reply::<CreateVmDirs>(Reply::Done).unwrap();
        let signal = SignalVmm {
            vm_id: VmId::new("0123456789ab").unwrap(),
            pid: 2,
            start_time: 3,
            signal: VmmSignal::Kill,
        };
        assert_eq!(
            signal.answer(Signalled { was_alive: true }),
            Reply::Signalled(Signalled { was_alive: true })
        );
        for (wrong, reply) in [("done", Reply::Done), ("exited", exited.clone())] {
            match typed_reply::<SignalVmm>(reply) {
                Err(ClientError::UnexpectedReply(r)) => {
                    assert_eq!(serde_json::to_value(&*r).unwrap()["reply"], wrong)
                }
                other => panic!("{wrong}: {other:?}"),
            }
        }
        assert!(matches!(
            typed_reply::<CreateVmDirs>(exited.clone()),
            Err(ClientError::UnexpectedReply(_))
        ));
        // The raw escape hatch passes any reply through.
        assert_eq!(typed_reply::<Request>(exited.clone()).unwrap(), exited);
    }
}
