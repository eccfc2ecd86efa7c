//! What MMDS answers the guest, as Firecracker's `src/vmm/src/mmds/mod.rs` does: GET
//! of a path in the data store (JSON or IMDS format), session tokens for V2
//! (`PUT /latest/api/token`), and Firecracker's statuses and texts for everything else.
//! Pure request -> response, so every rule is a unit test; [`super::net`] carries the
//! bytes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use banger_fc::models::MmdsVersion;
use serde_json::Value;

use super::DataStore;

pub const TOKEN_PATH: &str = "/latest/api/token";
const TOKEN_HEADERS: [&str; 2] = ["x-metadata-token", "x-aws-ec2-metadata-token"];
const TTL_HEADERS: [&str; 2] = [
    "x-metadata-token-ttl-seconds",
    "x-aws-ec2-metadata-token-ttl-seconds",
];
const MAX_TTL: u32 = 21600;
/// Firecracker refuses longer tokens outright.
const MAX_TOKEN_LEN: usize = 70;
/// Live tokens kept: a guest asking for more (each may live 6 h) loses its oldest,
/// so it cannot grow the VMM without bound.
pub const MAX_TOKENS: usize = 1024;

/// One request as the guest sent it.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub method: String,
    pub uri: String,
    /// Names as sent.
    pub headers: Vec<(String, String)>,
}

impl Request {
    fn header(&self, names: &[&str]) -> Option<(&str, &str)> {
        self.headers
            .iter()
            .find(|(k, _)| names.iter().any(|n| k.eq_ignore_ascii_case(n)))
            .map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    /// Extra headers (`Allow`, the echoed TTL).
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            content_type: "text/plain",
            headers: Vec::new(),
            body: body.into().into_bytes(),
        }
    }

    /// The bytes on the wire, with micro_http's status line and headers.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut head = format!(
            "HTTP/1.1 {} \r\nServer: Firecracker API\r\nConnection: keep-alive\r\n",
            self.status
        );
        for (k, v) in &self.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str(&format!(
            "Content-Type: {}\r\nContent-Length: {}\r\n\r\n",
            self.content_type,
            self.body.len()
        ));
        let mut out = head.into_bytes();
        out.extend_from_slice(&self.body);
        out
    }
}

/// The MMDS a guest talks to: the data store shared with the API, the configured
/// version and format, and the tokens handed out.
#[derive(Debug)]
pub struct Guest {
    pub store: Arc<Mutex<DataStore>>,
    pub version: MmdsVersion,
    pub imds_compat: bool,
    tokens: HashMap<String, Instant>,
}

impl Guest {
    pub fn new(store: Arc<Mutex<DataStore>>, version: MmdsVersion, imds_compat: bool) -> Self {
        Self {
            store,
            version,
            imds_compat,
            tokens: HashMap::new(),
        }
    }

    pub fn respond(&mut self, req: &Request, now: Instant) -> Response {
        if req.uri.is_empty() {
            return Response::text(400, "Invalid URI.");
        }
        match req.method.as_str() {
            "GET" => self.get(req, now),
            "PUT" => self.put_token(req, now),
            _ => {
                let mut r = Response::text(405, "Not allowed HTTP method.");
                r.headers.push(("Allow".into(), "GET, PUT".into()));
                r
            }
        }
    }

    fn get(&mut self, req: &Request, now: Instant) -> Response {
        if self.version == MmdsVersion::V2 {
            match req.header(&TOKEN_HEADERS) {
                None => {
                    return Response::text(
                        401,
                        "No MMDS token provided. Use `X-metadata-token` or `X-aws-ec2-metadata-token` header to specify the session token.",
                    );
                }
                Some((_, token)) if !self.valid(token, now) => {
                    return Response::text(401, "MMDS token not valid.");
                }
                Some(_) => {}
            }
        }
        let path = sanitize(&req.uri);
        let pointer = path.trim_end_matches('/');
        let store = self.store.lock().unwrap_or_else(|p| p.into_inner());
        let data = store.raw();
        let Some(value) = data.pointer(pointer) else {
            return Response::text(404, format!("Resource not found: {}.", req.uri));
        };
        let json = !self.imds_compat
            && req
                .header(&["accept"])
                .is_some_and(|(_, v)| v.trim().eq_ignore_ascii_case("application/json"));
        if json {
            return Response {
                status: 200,
                content_type: "application/json",
                headers: Vec::new(),
                body: value.to_string().into_bytes(),
            };
        }
        match imds(value) {
            Some(text) => Response::text(200, text),
            None => Response::text(
                501,
                "Cannot retrieve value. The value has an unsupported type.",
            ),
        }
    }

    fn put_token(&mut self, req: &Request, now: Instant) -> Response {
        if let Some((name, _)) = req.header(&["x-forwarded-for"]) {
            return Response::text(
                400,
                format!("Invalid header. Reason: Unsupported header name. Key: {name}"),
            );
        }
        if sanitize(&req.uri) != TOKEN_PATH {
            return Response::text(404, format!("Resource not found: {}.", req.uri));
        }
        let Some((name, value)) = req.header(&TTL_HEADERS) else {
            return Response::text(
                400,
                "Token time to live value not found. Use `X-metadata-token-ttl-seconds` or `X-aws-ec2-metadata-token-ttl-seconds` header to specify the token's lifetime.",
            );
        };
        let Ok(ttl) = value.trim().parse::<u32>() else {
            return Response::text(
                400,
                format!("Invalid header. Reason: Invalid value. Key:{name}; Value:{value}"),
            );
        };
        if !(1..=MAX_TTL).contains(&ttl) {
            return Response::text(
                400,
                format!(
                    "Invalid time to live value provided for token: {ttl}. Please provide a value between 1 and {MAX_TTL}."
                ),
            );
        }
        self.tokens.retain(|_, expiry| *expiry > now);
        while self.tokens.len() >= MAX_TOKENS {
            let oldest = self
                .tokens
                .iter()
                .min_by_key(|(_, e)| **e)
                .map(|(t, _)| t.clone())
                .expect("the map is not empty");
            self.tokens.remove(&oldest);
        }
        let token: String = (0..32)
            .map(|_| format!("{:02x}", rand::random::<u8>()))
            .collect();
        self.tokens
            .insert(token.clone(), now + Duration::from_secs(ttl.into()));
        let mut r = Response::text(200, token);
        r.headers.push((name.to_string(), ttl.to_string()));
        r
    }

    fn valid(&self, token: &str, now: Instant) -> bool {
        token.len() <= MAX_TOKEN_LEN && self.tokens.get(token).is_some_and(|e| *e > now)
    }
}

/// `//` collapsed to `/`, as Firecracker's `sanitize_uri` does.
fn sanitize(uri: &str) -> String {
    let mut s = uri.to_string();
    while s.contains("//") {
        s = s.replace("//", "/");
    }
    s
}

/// IMDS format: an object's keys one per line (objects with a trailing `/`), a string
/// as it is; anything else has no IMDS form.
fn imds(v: &Value) -> Option<String> {
    match v {
        Value::Object(m) => Some(
            m.iter()
                .map(|(k, v)| {
                    if v.is_object() {
                        format!("{k}/")
                    } else {
                        k.clone()
                    }
                })
                .collect::<Vec<_>>()
                .join("\n"),
        ),
        Value::String(s) => Some(s.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn guest(version: MmdsVersion, imds_compat: bool) -> Guest {
        let mut store = DataStore::new(51200);
        store
            .put(json!({
                "latest": {"meta-data": {"ami-id": "ami-1", "tags": ["a", "b"], "n": 3,
                           "placement": {"zone": "z1"}}},
                "hostname": "vm1"
            }))
            .unwrap();
        Guest::new(Arc::new(Mutex::new(store)), version, imds_compat)
    }

    fn req(method: &str, uri: &str, headers: &[(&str, &str)]) -> Request {
        Request {
            method: method.into(),
            uri: uri.into(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn body(r: &Response) -> &str {
        std::str::from_utf8(&r.body).unwrap()
    }

    #[test]
    fn v1_serves_paths_in_imds_and_json_formats() {
        let mut g = guest(MmdsVersion::V1, false);
        let now = Instant::now();
        let r = g.respond(&req("GET", "/latest/meta-data/", &[]), now);
        assert_eq!((r.status, r.content_type), (200, "text/plain"));
        assert_eq!(body(&r), "ami-id\nn\nplacement/\ntags");
        let r = g.respond(&req("GET", "//latest//meta-data/ami-id", &[]), now);
        assert_eq!(body(&r), "ami-1");
        let r = g.respond(
            &req(
                "GET",
                "/latest/meta-data/ami-id",
                &[("Accept", "application/json")],
            ),
            now,
        );
        assert_eq!(
            (r.content_type, body(&r)),
            ("application/json", "\"ami-1\"")
        );
        let r = g.respond(&req("GET", "/latest/meta-data/n", &[]), now);
        assert_eq!(
            (r.status, body(&r)),
            (
                501,
                "Cannot retrieve value. The value has an unsupported type."
            )
        );
        let r = g.respond(
            &req(
                "GET",
                "/latest/meta-data/tags/1",
                &[("accept", "application/json")],
            ),
            now,
        );
        assert_eq!(body(&r), "\"b\"");
        let r = g.respond(&req("GET", "/nothing/here", &[]), now);
        assert_eq!(
            (r.status, body(&r)),
            (404, "Resource not found: /nothing/here.")
        );
        let r = g.respond(&req("PATCH", "/", &[]), now);
        assert_eq!(r.status, 405);
        assert_eq!(r.headers, [("Allow".to_string(), "GET, PUT".to_string())]);
        // IMDS compatibility ignores Accept.
        let mut g = guest(MmdsVersion::V1, true);
        let r = g.respond(
            &req("GET", "/hostname", &[("Accept", "application/json")]),
            now,
        );
        assert_eq!((r.content_type, body(&r)), ("text/plain", "vm1"));
    }

    #[test]
    fn v2_needs_a_live_token_and_tokens_follow_firecracker_s_rules() {
        let mut g = guest(MmdsVersion::V2, false);
        let now = Instant::now();
        let r = g.respond(&req("GET", "/hostname", &[]), now);
        assert_eq!(r.status, 401);
        assert!(body(&r).starts_with("No MMDS token provided."));
        let r = g.respond(
            &req("GET", "/hostname", &[("X-metadata-token", "forged")]),
            now,
        );
        assert_eq!((r.status, body(&r)), (401, "MMDS token not valid."));
        for (headers, status, text) in [
            (vec![], 400, "Token time to live value not found."),
            (
                vec![("X-metadata-token-ttl-seconds", "0")],
                400,
                "Invalid time to live value provided for token: 0. Please provide a value between 1 and 21600.",
            ),
            (
                vec![("X-metadata-token-ttl-seconds", "21601")],
                400,
                "Please provide a value between 1 and 21600.",
            ),
            (
                vec![("X-metadata-token-ttl-seconds", "ten")],
                400,
                "Invalid header. Reason: Invalid value. Key:X-metadata-token-ttl-seconds; Value:ten",
            ),
            (
                vec![
                    ("X-metadata-token-ttl-seconds", "60"),
                    ("X-Forwarded-For", "1.2.3.4"),
                ],
                400,
                "Invalid header. Reason: Unsupported header name. Key: X-Forwarded-For",
            ),
        ] {
            let r = g.respond(&req("PUT", TOKEN_PATH, &headers), now);
            assert_eq!(r.status, status, "{headers:?}");
            assert!(body(&r).contains(text), "{headers:?}: {}", body(&r));
        }
        let r = g.respond(
            &req(
                "PUT",
                "/latest/api/toke",
                &[("X-metadata-token-ttl-seconds", "60")],
            ),
            now,
        );
        assert_eq!(
            (r.status, body(&r)),
            (404, "Resource not found: /latest/api/toke.")
        );
        let r = g.respond(
            &req(
                "PUT",
                TOKEN_PATH,
                &[("X-aws-ec2-metadata-token-ttl-seconds", "60")],
            ),
            now,
        );
        assert_eq!(r.status, 200);
        assert_eq!(
            r.headers,
            [(
                "X-aws-ec2-metadata-token-ttl-seconds".to_string(),
                "60".to_string()
            )]
        );
        let token = body(&r).to_string();
        let r = g.respond(
            &req("GET", "/hostname", &[("x-aws-ec2-metadata-token", &token)]),
            now,
        );
        assert_eq!((r.status, body(&r)), (200, "vm1"));
        // Still good just before its TTL ends, refused after.
        let almost = now + Duration::from_secs(59);
        let r = g.respond(
            &req("GET", "/hostname", &[("X-metadata-token", &token)]),
            almost,
        );
        assert_eq!(r.status, 200);
        // Expired after its TTL.
        let later = now + Duration::from_secs(61);
        let r = g.respond(
            &req("GET", "/hostname", &[("X-metadata-token", &token)]),
            later,
        );
        assert_eq!(r.status, 401);
        // A guest asking for tokens without end keeps at most MAX_TOKENS.
        for _ in 0..MAX_TOKENS + 10 {
            g.respond(
                &req(
                    "PUT",
                    TOKEN_PATH,
                    &[("X-metadata-token-ttl-seconds", "21600")],
                ),
                now,
            );
        }
        assert_eq!(g.tokens.len(), MAX_TOKENS);
    }

    #[test]
    fn the_wire_form_is_micro_http_s() {
        let r = Response::text(404, "x");
        assert_eq!(
            String::from_utf8(r.to_bytes()).unwrap(),
            "HTTP/1.1 404 \r\nServer: Firecracker API\r\nConnection: keep-alive\r\nContent-Type: text/plain\r\nContent-Length: 1\r\n\r\nx"
        );
    }
}
