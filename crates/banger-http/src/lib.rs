//! One HTTP/1.1 exchange over a connected Unix socket: the transport under
//! `banger-client` (CLI → `bangerd.sock`) and `banger_fc::Client` (daemon → a VMM's
//! API socket).
//!
//! One request per connection: the caller connects (and checks the peer if it must,
//! before anything is sent), this sends the request and reads the whole reply, up to
//! a cap when the other end is not trusted to stop. Timeouts and the errors callers
//! show stay with the callers, which know what the socket is.
//!
//! Not `hyperlocal`: its connector feeds hyper-util's pooled client, which never
//! shows the caller the stream, so a peer check (SO_PEERCRED) before sending, which
//! the VMM client needs, has no place there.

#![forbid(unsafe_code)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::{HeaderMap, Method, Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

/// What went wrong once connected.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// The handshake failed or the request got no answer.
    #[error("the HTTP exchange failed")]
    Http(#[source] hyper::Error),
    /// The reply's head came; its body was cut or broken.
    #[error("the reply's body could not be read")]
    Body(#[source] hyper::Error),
    /// The reply's body is longer than the caller's cap; what came was dropped.
    #[error("the reply ({status}) is longer than {limit} bytes")]
    TooLong { status: StatusCode, limit: usize },
}

/// A whole reply.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A request to `uri` (a path) with `Host: host`; a body, when there is one, is JSON.
pub fn request(
    method: Method,
    uri: &str,
    host: &str,
    json: Option<Vec<u8>>,
) -> Request<Full<Bytes>> {
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::HOST, host);
    if json.is_some() {
        req = req.header(header::CONTENT_TYPE, "application/json");
    }
    req.body(Full::new(Bytes::from(json.unwrap_or_default())))
        .expect("a method, a path and a host make a valid request")
}

/// Sends `req` on `stream` and reads the whole reply, at most `limit` bytes of body
/// when a limit is given.
pub async fn exchange(
    stream: UnixStream,
    req: Request<Full<Bytes>>,
    limit: Option<usize>,
) -> Result<Reply, ExchangeError> {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(ExchangeError::Http)?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let resp = sender
        .send_request(req)
        .await
        .map_err(ExchangeError::Http)?;
    let (head, body) = resp.into_parts();
    let body = match limit {
        None => body.collect().await.map_err(ExchangeError::Body)?,
        Some(limit) => Limited::new(body, limit)
            .collect()
            .await
            .map_err(|e| match e.downcast::<hyper::Error>() {
                Ok(e) => ExchangeError::Body(*e),
                Err(e) => {
                    debug_assert!(e.is::<LengthLimitError>());
                    ExchangeError::TooLong {
                        status: head.status,
                        limit,
                    }
                }
            })?,
    };
    Ok(Reply {
        status: head.status,
        headers: head.headers,
        body: body.to_bytes(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixListener;

    /// A server that reads one request head and answers `reply` verbatim, then closes;
    /// returns the client's end and what the server read.
    async fn one_exchange(
        reply: &'static [u8],
        req: Request<Full<Bytes>>,
        limit: Option<usize>,
    ) -> (Result<Reply, ExchangeError>, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                assert!(n > 0, "the client closed before a whole head");
                got.extend_from_slice(&buf[..n]);
            }
            // The body, if any, follows the head: read all `content-length` says.
            let head_len = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
            let head = String::from_utf8_lossy(&got[..head_len]).to_ascii_lowercase();
            let body_len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map_or(0, |n| n.trim().parse().unwrap());
            while got.len() < head_len + body_len {
                let n = s.read(&mut buf).await.unwrap();
                assert!(n > 0, "the client closed before the whole body");
                got.extend_from_slice(&buf[..n]);
            }
            s.write_all(reply).await.unwrap();
            s.shutdown().await.unwrap();
            String::from_utf8(got).unwrap()
        });
        let stream = UnixStream::connect(&path).await.unwrap();
        let r = exchange(stream, req, limit).await;
        (r, server.await.unwrap())
    }

    #[tokio::test]
    async fn sends_the_request_and_returns_status_headers_and_body() {
        let req = request(
            Method::PUT,
            "/v1/x?y=1",
            "bangerd",
            Some(b"{\"a\":1}".to_vec()),
        );
        let (r, sent) = one_exchange(
            b"HTTP/1.1 201 Created\r\nx-next: 7\r\ncontent-length: 2\r\n\r\nok",
            req,
            Some(2),
        )
        .await;
        let r = r.unwrap();
        assert_eq!(r.status, StatusCode::CREATED);
        assert_eq!(r.headers["x-next"], "7");
        assert_eq!(&r.body[..], b"ok");
        assert!(sent.starts_with("PUT /v1/x?y=1 HTTP/1.1\r\n"), "{sent}");
        let lower = sent.to_ascii_lowercase();
        assert!(lower.contains("host: bangerd\r\n"), "{sent}");
        assert!(
            lower.contains("content-type: application/json\r\n"),
            "{sent}"
        );
        assert!(sent.ends_with("{\"a\":1}"), "{sent}");
    }

    #[tokio::test]
    async fn a_request_without_a_body_says_no_content_type() {
        let req = request(Method::GET, "/", "localhost", None);
        let (r, sent) = one_exchange(b"HTTP/1.1 204 No Content\r\n\r\n", req, None).await;
        assert_eq!(r.unwrap().status, StatusCode::NO_CONTENT);
        assert!(
            !sent.to_ascii_lowercase().contains("content-type"),
            "{sent}"
        );
    }

    #[tokio::test]
    async fn a_body_over_the_cap_is_refused_and_without_a_cap_read_whole() {
        const REPLY: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n0123456789";
        let get = || request(Method::GET, "/", "localhost", None);
        match one_exchange(REPLY, get(), Some(9)).await.0 {
            Err(ExchangeError::TooLong { status, limit }) => {
                assert_eq!((status, limit), (StatusCode::OK, 9));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            &one_exchange(REPLY, get(), Some(10)).await.0.unwrap().body[..],
            b"0123456789"
        );
        assert_eq!(
            &one_exchange(REPLY, get(), None).await.0.unwrap().body[..],
            b"0123456789"
        );
    }

    #[tokio::test]
    async fn a_cut_body_and_a_garbled_head_are_told_apart() {
        let get = || request(Method::GET, "/", "localhost", None);
        let cut = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n01234";
        for limit in [None, Some(100)] {
            assert!(
                matches!(
                    one_exchange(cut, get(), limit).await.0,
                    Err(ExchangeError::Body(_))
                ),
                "{limit:?}"
            );
        }
        assert!(matches!(
            one_exchange(b"nonsense\r\n\r\n", get(), None).await.0,
            Err(ExchangeError::Http(_))
        ));
    }
}
