//! The API socket's accept loop: who is calling, and how much of the daemon any one
//! caller may hold.
//!
//! `bangerd.sock` is open to the daemon's user and to group `banger`, and every one of
//! them is hostile until proven otherwise. So the loop
//! - reads each connection's peer credentials (SO_PEERCRED) and hands them to the
//!   handlers as a [`Peer`] request extension: files a caller names are opened with the
//!   caller's rights where the daemon can take them (see `service::open_as`);
//! - caps connections, overall and per uid, so one member cannot take every slot;
//! - times out headers ([`HEADER_TIMEOUT`]) and bodies ([`BODY_TIMEOUT`]): a caller that
//!   sends half a request loses its connection, not the daemon's;
//! - backs off when the process is out of descriptors instead of spinning.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::UnixListener;
use tower::ServiceExt;

/// Connections open at once, from everyone.
pub const MAX_CONNECTIONS: usize = 256;
/// Connections open at once from one uid (root is not limited: it could raise any
/// limit anyway, and its requests must always get through).
pub const MAX_PER_UID: usize = 32;
/// Time to send a request's headers (also the idle limit between requests).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Time to send a request's body once its headers arrived.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Request bodies are small JSON documents.
pub const MAX_BODY: usize = 1 << 20;

/// Who is on the other end of a connection, from SO_PEERCRED.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
}

/// Counts connections per uid and overall.
#[derive(Default)]
struct Slots {
    total: usize,
    per_uid: HashMap<u32, usize>,
}

struct Slot {
    slots: Arc<Mutex<Slots>>,
    uid: u32,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut s = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        s.total -= 1;
        if let Some(n) = s.per_uid.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                s.per_uid.remove(&self.uid);
            }
        }
    }
}

fn take_slot(slots: &Arc<Mutex<Slots>>, uid: u32) -> Option<Slot> {
    let mut s = slots.lock().unwrap_or_else(|e| e.into_inner());
    let mine = s.per_uid.get(&uid).copied().unwrap_or(0);
    if uid != 0 && (s.total >= MAX_CONNECTIONS || mine >= MAX_PER_UID) {
        return None;
    }
    s.total += 1;
    *s.per_uid.entry(uid).or_default() += 1;
    Some(Slot {
        slots: slots.clone(),
        uid,
    })
}

/// How often a repeated warning is logged at most: a caller that makes the daemon
/// refuse or fail thousands of times a second must not fill the disk with its log.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// A rate limit for one repeated warning: [`Every::due`] says whether to log now, and
/// how many events the line stands for (this one and those not logged since).
struct Every {
    every: Duration,
    last: Option<std::time::Instant>,
    since: u64,
}

impl Every {
    fn new(every: Duration) -> Self {
        Self {
            every,
            last: None,
            since: 0,
        }
    }

    fn due(&mut self, now: std::time::Instant) -> Option<u64> {
        self.since += 1;
        if self
            .last
            .is_some_and(|l| now.duration_since(l) < self.every)
        {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.since))
    }
}

/// Reads the whole body within [`BODY_TIMEOUT`] and [`MAX_BODY`], so no handler ever
/// waits on a caller that stopped sending.
pub async fn bounded_body(req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let bytes = match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, MAX_BODY)).await
    {
        Ok(Ok(b)) => b,
        Ok(Err(_)) => {
            return (
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the request body is over {MAX_BODY} bytes or broken"),
            )
                .into_response();
        }
        Err(_) => {
            return (
                StatusCode::REQUEST_TIMEOUT,
                format!("the request body did not arrive within {BODY_TIMEOUT:?}"),
            )
                .into_response();
        }
    };
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

/// Serves `app` on `listener` until `shutdown` completes, then stops accepting and
/// gives requests in flight up to `drain` to finish.
pub async fn serve(
    listener: UnixListener,
    app: Router,
    shutdown: impl std::future::Future<Output = ()>,
    drain: Duration,
) {
    let slots = Arc::new(Mutex::new(Slots::default()));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut accept_log = Every::new(LOG_EVERY);
    let mut refused_log = Every::new(LOG_EVERY);
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    // Out of descriptors (or another transient error): wait instead of
                    // spinning on a listener that stays readable.
                    if accept_log.due(std::time::Instant::now()).is_some() {
                        tracing::warn!("accept failed: {e}; pausing");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let Ok(cred) = stream.peer_cred() else {
            continue;
        };
        let peer = Peer {
            uid: cred.uid(),
            gid: cred.gid(),
        };
        let Some(slot) = take_slot(&slots, peer.uid) else {
            // Closed at once, unread: a caller over its share learns it by EOF.
            if let Some(refused) = refused_log.due(std::time::Instant::now()) {
                tracing::warn!(
                    uid = peer.uid,
                    refused,
                    "connection limit reached; refusing connections"
                );
            }
            continue;
        };
        let app = app.clone();
        let svc = hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(peer);
            let app = app.clone();
            async move {
                Ok::<_, Infallible>(
                    app.oneshot(req.map(Body::new))
                        .await
                        .unwrap_or_else(|e| match e {}),
                )
            }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .serve_connection(TokioIo::new(stream), svc);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still running after {drain:?}; leaving them");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_cap_each_uid_and_the_total_but_never_root() {
        let slots = Arc::new(Mutex::new(Slots::default()));
        let mine: Vec<_> = (0..MAX_PER_UID)
            .map(|_| take_slot(&slots, 1000).expect("under the cap"))
            .collect();
        assert!(take_slot(&slots, 1000).is_none(), "one uid is capped");
        let other = take_slot(&slots, 1001).expect("another uid still gets in");
        let mut mine = mine;
        mine.truncate(MAX_PER_UID - 3);
        assert_eq!(
            slots.lock().unwrap().per_uid.get(&1000),
            Some(&(MAX_PER_UID - 3)),
            "each release counts once"
        );
        assert!(
            take_slot(&slots, 1000).is_some(),
            "a released slot can be taken again"
        );
        drop(mine);
        assert_eq!(
            slots.lock().unwrap().per_uid.get(&1000),
            None,
            "released slots are returned"
        );
        let mut many = Vec::new();
        for uid in 2000.. {
            match take_slot(&slots, uid) {
                Some(s) => many.push(s),
                None => break,
            }
        }
        assert_eq!(
            slots.lock().unwrap().total,
            MAX_CONNECTIONS,
            "the total is capped"
        );
        assert!(
            take_slot(&slots, 0).is_some(),
            "root is served even at the cap"
        );
        drop((other, many));
        assert_eq!(slots.lock().unwrap().total, 0);
    }

    /// A request over a real socket through `serve`: the handler sees the caller's
    /// SO_PEERCRED identity, bodies over the limit are refused before the handler
    /// runs, and `serve` returns once shutdown is asked for.
    #[tokio::test]
    async fn serve_hands_handlers_the_caller_and_bounds_bodies_and_stops_on_shutdown() {
        use axum::routing::{get, post};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("bangerd.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let app = Router::new()
            .route(
                "/who",
                get(|axum::Extension(p): axum::Extension<Peer>| async move {
                    format!("{}:{}", p.uid, p.gid)
                }),
            )
            .route(
                "/echo",
                post(|body: axum::body::Bytes| async move { body.len().to_string() }),
            )
            .layer(axum::middleware::from_fn(bounded_body));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            listener,
            app,
            async {
                let _ = stopped.await;
            },
            Duration::from_secs(5),
        ));
        let ask = |req: Vec<u8>| {
            let sock = sock.clone();
            async move {
                let mut c = tokio::net::UnixStream::connect(&sock).await.unwrap();
                c.write_all(&req).await.unwrap();
                let mut out = Vec::new();
                c.read_to_end(&mut out).await.unwrap();
                String::from_utf8_lossy(&out).into_owned()
            }
        };
        let me = format!("{}:{}", nix::unistd::geteuid(), nix::unistd::getegid());
        let who = ask(b"GET /who HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec()).await;
        assert!(
            who.starts_with("HTTP/1.1 200") && who.ends_with(&me),
            "{who}"
        );
        let small = ask(b"POST /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello".to_vec()).await;
        assert!(
            small.starts_with("HTTP/1.1 200") && small.ends_with("\r\n5"),
            "{small}"
        );
        let mut big = format!(
            "POST /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY + 1
        )
        .into_bytes();
        big.extend(std::iter::repeat_n(b'x', MAX_BODY + 1));
        let big = ask(big).await;
        assert!(
            big.starts_with("HTTP/1.1 413"),
            "{}",
            &big[..big.len().min(200)]
        );
        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("serve returns on shutdown")
            .unwrap();
        assert!(
            tokio::net::UnixStream::connect(&sock).await.is_err(),
            "the listener is closed"
        );
    }

    #[test]
    fn a_repeated_warning_is_logged_once_per_period_with_what_it_stands_for() {
        let t0 = std::time::Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut e = Every::new(Duration::from_secs(5));
        assert_eq!(e.due(at(0)), Some(1), "the first one is logged");
        assert_eq!(e.due(at(1000)), None);
        assert_eq!(e.due(at(4999)), None);
        assert_eq!(
            e.due(at(5000)),
            Some(3),
            "the period is over: this one and the two held back"
        );
        assert_eq!(e.due(at(5001)), None);
        assert_eq!(e.due(at(20_000)), Some(2));
    }
}
