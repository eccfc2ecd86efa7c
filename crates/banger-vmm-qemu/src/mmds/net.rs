//! MMDS on the guest's wire. For an interface named in `PUT /mmds/config`, QEMU's
//! netdev is one end of a socket pair (`-netdev socket,fd=N`: frames with a 4-byte
//! big-endian length) and this thread switches frames between it and the tap, as
//! Firecracker's virtio-net device does: an ARP request for the MMDS address, or an
//! IPv4 packet to it, goes to a small TCP/IP stack (smoltcp) answering as
//! `06:01:23:45:67:01` on port 80; everything else goes to the tap unchanged, and
//! the tap's frames go to the guest. Interfaces without MMDS get the tap itself.

use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Instant;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{Device, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr};

use super::guest::{Guest, Request, Response};
use crate::log::Logger;

/// The MAC Firecracker's MMDS answers with.
pub const MMDS_MAC: [u8; 6] = [0x06, 0x01, 0x23, 0x45, 0x67, 0x01];
/// `virtio_net_hdr` in front of every frame on a tap opened with `IFF_VNET_HDR`.
const VNET_HDR_LEN: usize = 10;
const HTTP_PORT: u16 = 80;
/// Connections served at once.
const SOCKETS: usize = 8;
/// QEMU's own limit on a frame (`NET_BUFSIZE`).
const MAX_FRAME: usize = 69632;
/// A request the guest has not finished within this many bytes is refused: the guest
/// is not trusted to bound its own input.
pub const MAX_REQUEST: usize = 64 * 1024;

/// One interface's switch: the tap, our end of QEMU's socket, and the MMDS it serves.
pub struct Link {
    pub tap: OwnedFd,
    pub qemu: OwnedFd,
    pub ip: Ipv4Addr,
    pub guest: Guest,
    pub log: Logger,
}

pub fn spawn(link: Link) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("mmds".into())
        .spawn(move || {
            let log = link.log.clone();
            if let Err(e) = run(link) {
                log.main_warn(&format!("MMDS network stopped: {e}"));
            }
        })
        .map(drop)
}

/// Where a frame from the guest goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// ARP asking for the MMDS address, or TCP to it.
    Mmds,
    /// Anything else to the MMDS address (ICMP, UDP): swallowed, as Firecracker does.
    Drop,
    Tap,
}

pub fn route(frame: &[u8], ip: Ipv4Addr) -> Route {
    let ip = ip.octets();
    match frame.get(12..14) {
        Some([0x08, 0x06]) if frame.get(38..42) == Some(&ip[..]) => Route::Mmds,
        Some([0x08, 0x00]) if frame.get(30..34) == Some(&ip[..]) => match frame.get(23) {
            Some(6) => Route::Mmds,
            _ => Route::Drop,
        },
        _ => Route::Tap,
    }
}

/// Frames in a length-prefixed stream, taken off the front of `buf`; a length no
/// frame can have is an error (the stream is QEMU's, which the guest may own): the
/// stream cannot be trusted past it.
pub fn next_frame(buf: &mut Vec<u8>) -> std::io::Result<Option<Vec<u8>>> {
    let Some(head) = buf.get(..4) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes(head.try_into().expect("four bytes")) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a frame of {len} bytes from QEMU (at most {MAX_FRAME})"),
        ));
    }
    if buf.len() < 4 + len {
        return Ok(None);
    }
    let frame = buf[4..4 + len].to_vec();
    buf.drain(..4 + len);
    Ok(Some(frame))
}

#[derive(Default)]
struct Queue {
    rx: VecDeque<Vec<u8>>,
    tx: VecDeque<Vec<u8>>,
}

struct Rx(Vec<u8>);
struct Tx<'a>(&'a mut VecDeque<Vec<u8>>);

impl smoltcp::phy::RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl smoltcp::phy::TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut b = vec![0; len];
        let r = f(&mut b);
        self.0.push_back(b);
        r
    }
}

impl Device for Queue {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;

    fn receive(
        &mut self,
        _: smoltcp::time::Instant,
    ) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let f = self.rx.pop_front()?;
        Some((Rx(f), Tx(&mut self.tx)))
    }

    fn transmit(&mut self, _: smoltcp::time::Instant) -> Option<Self::TxToken<'_>> {
        Some(Tx(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ethernet;
        c.max_transmission_unit = 1514;
        c
    }
}

fn run(mut l: Link) -> std::io::Result<()> {
    set_nonblocking(&l.qemu)?;
    set_nonblocking(&l.tap)?;
    let mut dev = Queue::default();
    let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(MMDS_MAC)));
    config.random_seed = rand::random();
    let started = Instant::now();
    let now = || smoltcp::time::Instant::from_micros(started.elapsed().as_micros() as i64);
    let mut iface = Interface::new(config, &mut dev, now());
    // Every address is on-link: the guest's is whatever it is, and replies go to the
    // MAC it came from (learnt by ARP).
    iface.update_ip_addrs(|a| {
        let _ = a.push(IpCidr::new(IpAddress::Ipv4(l.ip), 0));
    });
    let mut sockets = SocketSet::new(Vec::new());
    let mut conns: Vec<(SocketHandle, Conn)> = (0..SOCKETS)
        .map(|_| {
            let s = tcp::Socket::new(
                tcp::SocketBuffer::new(vec![0; 16 * 1024]),
                tcp::SocketBuffer::new(vec![0; 128 * 1024]),
            );
            (sockets.add(s), Conn::default())
        })
        .collect();
    let mut from_qemu = Vec::new();
    let mut buf = vec![0u8; VNET_HDR_LEN + MAX_FRAME];
    loop {
        let wait = iface
            .poll_delay(now(), &sockets)
            .map(|d| d.total_millis().min(1000) as u16)
            .unwrap_or(1000);
        let mut fds = [
            PollFd::new(l.tap.as_fd(), PollFlags::POLLIN),
            PollFd::new(l.qemu.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::from(wait)) {
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
            Ok(_) => {}
        }
        // The tap's frames go to the guest.
        loop {
            match nix::unistd::read(&l.tap, &mut buf) {
                Ok(n) if n > VNET_HDR_LEN => write_frame(&l.qemu, &buf[VNET_HDR_LEN..n])?,
                Ok(_) => {}
                Err(nix::errno::Errno::EAGAIN) => break,
                Err(e) => return Err(e.into()),
            }
        }
        // The guest's frames go to MMDS or to the tap.
        loop {
            match nix::unistd::read(&l.qemu, &mut buf) {
                Ok(0) => return Ok(()), // QEMU is gone.
                Ok(n) => from_qemu.extend_from_slice(&buf[..n]),
                Err(nix::errno::Errno::EAGAIN) => break,
                Err(e) => return Err(e.into()),
            }
        }
        while let Some(mut frame) = next_frame(&mut from_qemu)? {
            let to = route(&frame, l.ip);
            if to == Route::Drop {
                continue;
            }
            if to == Route::Mmds {
                // Firecracker answers an IPv4 packet to its address whatever MAC the
                // guest sent it to (its gateway's, usually).
                if frame[12..14] == [0x08, 0x00] {
                    frame[..6].copy_from_slice(&MMDS_MAC);
                }
                dev.rx.push_back(frame);
            } else {
                let mut out = vec![0u8; VNET_HDR_LEN];
                out.extend_from_slice(&frame);
                // A tap that cannot take a frame drops it, as a wire would.
                let _ = nix::unistd::write(&l.tap, &out);
            }
        }
        iface.poll(now(), &mut dev, &mut sockets);
        for (h, c) in conns.iter_mut() {
            serve(sockets.get_mut::<tcp::Socket>(*h), c, &mut l.guest);
        }
        iface.poll(now(), &mut dev, &mut sockets);
        while let Some(f) = dev.tx.pop_front() {
            write_frame(&l.qemu, &f)?;
        }
    }
}

/// One connection's bytes: the request being read, the answer being sent.
#[derive(Default)]
struct Conn {
    pending: Vec<u8>,
    out: Vec<u8>,
}

/// One connection: (re)listen, send what is owed, read what came, and answer one
/// complete request at a time (the next only once the last is sent, so a guest that
/// pipelines thousands of requests gets them answered at the pace it reads).
fn serve(sock: &mut tcp::Socket<'_>, c: &mut Conn, guest: &mut Guest) {
    use tcp::State;
    if sock.state() == State::Closed {
        *c = Conn::default();
        let _ = sock.listen(HTTP_PORT);
        return;
    }
    while !c.out.is_empty() && sock.can_send() {
        match sock.send_slice(&c.out) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                c.out.drain(..n);
            }
        }
    }
    while sock.can_recv() && c.pending.len() <= MAX_REQUEST {
        let _ = sock.recv(|d| {
            c.pending.extend_from_slice(d);
            (d.len(), ())
        });
    }
    if c.out.is_empty() && !c.pending.is_empty() {
        let (resp, close) = answer(&mut c.pending, guest);
        if let Some(resp) = resp {
            c.out = resp.to_bytes();
            let _ = sock.send_slice(&c.out).map(|n| c.out.drain(..n));
            if close {
                c.pending.clear();
                sock.close();
                return;
            }
        }
    }
    // The guest closed its side: once everything it asked is answered, close ours.
    if sock.state() == State::CloseWait && c.out.is_empty() && c.pending.is_empty() {
        sock.close();
    }
}

/// The answer to the request at the front of `pending` (taken off it), and whether
/// the connection closes after it; `None` while the request is incomplete.
pub fn answer(pending: &mut Vec<u8>, guest: &mut Guest) -> (Option<Response>, bool) {
    let bad = || (Some(Response::text(400, "Invalid request.")), true);
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let n = match req.parse(pending) {
        Ok(httparse::Status::Partial) if pending.len() > MAX_REQUEST => return bad(),
        Ok(httparse::Status::Partial) => return (None, false),
        Ok(httparse::Status::Complete(n)) => n,
        Err(_) => return bad(),
    };
    let r = Request {
        method: req.method.unwrap_or_default().to_string(),
        uri: req.path.unwrap_or_default().to_string(),
        headers: req
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_string(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect(),
    };
    let has = |name: &str, value: Option<&str>| {
        r.headers.iter().any(|(k, v)| {
            k.eq_ignore_ascii_case(name)
                && value.is_none_or(|want| v.trim().eq_ignore_ascii_case(want))
        })
    };
    let close = has("connection", Some("close"));
    let body_len = r
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.trim().parse::<usize>());
    let body_len = match body_len {
        None => 0,
        Some(Ok(len)) => len,
        Some(Err(_)) => return bad(),
    };
    // Firecracker's MMDS takes no body on a GET; any request past the limit is refused.
    let Some(total) = n.checked_add(body_len).filter(|t| *t <= MAX_REQUEST) else {
        return bad();
    };
    if r.method == "GET" && body_len > 0 {
        return bad();
    }
    if pending.len() < total {
        return (None, false);
    }
    pending.drain(..total);
    (Some(guest.respond(&r, Instant::now())), close)
}

fn set_nonblocking(fd: &OwnedFd) -> std::io::Result<()> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

/// One frame to QEMU, length first; waits while its socket is full.
fn write_frame(fd: &OwnedFd, frame: &[u8]) -> std::io::Result<()> {
    let mut out = (frame.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(frame);
    let mut rest = &out[..];
    while !rest.is_empty() {
        match nix::unistd::write(fd, rest) {
            Ok(n) => rest = &rest[n..],
            Err(nix::errno::Errno::EAGAIN) => {
                let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLOUT)];
                poll(&mut fds, PollTimeout::from(1000u16))?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(ethertype: [u8; 2], at: usize, ip: [u8; 4]) -> Vec<u8> {
        let mut f = vec![0u8; 60];
        f[12..14].copy_from_slice(&ethertype);
        f[at..at + 4].copy_from_slice(&ip);
        f
    }

    #[test]
    fn arp_for_the_address_and_tcp_to_it_are_mmds_s_the_rest_to_it_dropped() {
        let ip = Ipv4Addr::new(169, 254, 169, 254);
        assert_eq!(
            route(&frame([0x08, 0x06], 38, ip.octets()), ip),
            Route::Mmds
        );
        let mut tcp = frame([0x08, 0x00], 30, ip.octets());
        tcp[23] = 6;
        assert_eq!(route(&tcp, ip), Route::Mmds);
        let mut icmp = tcp.clone();
        icmp[23] = 1;
        assert_eq!(route(&icmp, ip), Route::Drop);
        let mut other = frame([0x08, 0x00], 30, [10, 0, 0, 1]);
        other[23] = 6;
        assert_eq!(route(&other, ip), Route::Tap);
        assert_eq!(
            route(&frame([0x86, 0xdd], 30, ip.octets()), ip),
            Route::Tap,
            "IPv6"
        );
        assert_eq!(route(&[0u8; 10], ip), Route::Tap, "a runt frame");
    }

    fn guest() -> Guest {
        let mut store = super::super::DataStore::new(51200);
        store.put(serde_json::json!({"a": "b"})).unwrap();
        Guest::new(
            std::sync::Arc::new(std::sync::Mutex::new(store)),
            banger_fc::models::MmdsVersion::V1,
            false,
        )
    }

    #[test]
    fn requests_are_answered_one_at_a_time_and_bad_ones_close() {
        let mut g = guest();
        let mut p =
            b"GET /a HTTP/1.1\r\n\r\nGET /a HTTP/1.1\r\nConnection: close\r\n\r\nGET".to_vec();
        let (r, close) = answer(&mut p, &mut g);
        assert_eq!((r.unwrap().body, close), (b"b".to_vec(), false));
        let (r, close) = answer(&mut p, &mut g);
        assert_eq!((r.unwrap().status, close), (200, true));
        assert_eq!(answer(&mut p, &mut g), (None, false), "incomplete: wait");
        for bad in [
            &b"GET /a HTTP/1.1\r\nContent-Length: 18446744073709551615\r\n\r\n"[..],
            b"GET /a HTTP/1.1\r\nContent-Length: x\r\n\r\n",
            b"GET /a HTTP/1.1\r\nContent-Length: 2\r\n\r\nab",
            b"\x00\x01 not http\r\n\r\n",
        ] {
            let mut p = bad.to_vec();
            let (r, close) = answer(&mut p, &mut g);
            assert_eq!((r.map(|r| r.status), close), (Some(400), true), "{bad:?}");
        }
        let mut p = vec![b'G'; MAX_REQUEST + 1];
        assert_eq!(
            answer(&mut p, &mut g).0.map(|r| r.status),
            Some(400),
            "a request without end"
        );
        // A PUT's body is read and skipped.
        let mut p = b"PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 5\r\nContent-Length: 2\r\n\r\nxx".to_vec();
        assert_eq!(answer(&mut p, &mut g).0.map(|r| r.status), Some(200));
        assert!(p.is_empty());
    }

    #[test]
    fn frames_are_cut_from_a_length_prefixed_stream() {
        let mut buf = vec![0, 0, 0, 2, b'a', b'b', 0, 0, 0, 3, b'c'];
        assert_eq!(next_frame(&mut buf).unwrap(), Some(b"ab".to_vec()));
        assert_eq!(
            next_frame(&mut buf).unwrap(),
            None,
            "the second is not complete yet"
        );
        buf.extend_from_slice(b"de");
        assert_eq!(next_frame(&mut buf).unwrap(), Some(b"cde".to_vec()));
        assert!(buf.is_empty());
        // A length no frame has stops the switch instead of buffering 4 GiB.
        let mut buf = vec![0xff, 0xff, 0xff, 0xff, 0];
        assert!(next_frame(&mut buf).is_err());
    }
}
