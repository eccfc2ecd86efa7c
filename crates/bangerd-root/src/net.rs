//! The VM network: one bridge with the gateway address, one persistent tap per VM
//! attached to it, and an nftables table banger owns:
//!
//! ```text
//! table inet <table> {
//!   set guests { type ifname . ipv4_addr }        # one element per VM: tap . address
//!   chain forward { type filter hook forward priority 0
//!     iifname "bg*" iifname . ip saddr != @guests drop }   # no spoofed sources
//!   chain postrouting { type nat hook postrouting priority 100
//!     ip saddr <subnet> oifname != <bridge> masquerade }   # outbound NAT
//! }
//! ```
//!
//! Links and addresses go through netlink (rtnetlink); the tap itself is made with
//! the TUN ioctls (netlink cannot create one); nftables through its JSON API
//! (the `nftables` crate). Every operation is idempotent.

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;

use banger_helper::{NetworkConfig, VmId};
use futures_util::TryStreamExt;
use rtnetlink::{Handle, LinkBridge, LinkUnspec};
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("netlink: {0}")]
    Netlink(String),
    #[error("nftables: {0}")]
    Nft(String),
    #[error("tap {name}: {source}")]
    Tap {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot enable IPv4 forwarding: {0}")]
    Forwarding(std::io::Error),
}

pub struct Net {
    pub cfg: NetworkConfig,
}

fn nl(e: rtnetlink::Error) -> NetError {
    NetError::Netlink(e.to_string())
}

/// Runs an async netlink conversation on a throwaway runtime: the helper is
/// synchronous, and one operation is a handful of messages.
fn with_netlink<T>(f: impl AsyncFnOnce(Handle) -> Result<T, NetError>) -> Result<T, NetError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let (conn, handle, _) =
            rtnetlink::new_connection().map_err(|e| NetError::Netlink(e.to_string()))?;
        tokio::spawn(conn);
        f(handle).await
    })
}

async fn link_index(h: &Handle, name: &str) -> Result<Option<u32>, NetError> {
    let mut links = h.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(l)) => Ok(Some(l.header.index)),
        Ok(None) => Ok(None),
        // ENODEV: no such link.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(nl(e)),
    }
}

impl Net {
    pub fn subnet(&self) -> String {
        let mask = u32::MAX
            .checked_shl(32 - self.cfg.prefix_len as u32)
            .unwrap_or(0);
        let net = Ipv4Addr::from(u32::from(self.cfg.gateway) & mask);
        format!("{net}/{}", self.cfg.prefix_len)
    }

    pub fn setup(&self) -> Result<(), NetError> {
        let cfg = self.cfg.clone();
        with_netlink(async move |h| {
            let idx = match link_index(&h, &cfg.bridge).await? {
                Some(i) => i,
                None => {
                    h.link()
                        .add(LinkBridge::new(&cfg.bridge).build())
                        .execute()
                        .await
                        .map_err(nl)?;
                    link_index(&h, &cfg.bridge)
                        .await?
                        .ok_or_else(|| NetError::Netlink("bridge vanished".into()))?
                }
            };
            let has_addr = h
                .address()
                .get()
                .set_link_index_filter(idx)
                .execute()
                .try_collect::<Vec<_>>()
                .await
                .map_err(nl)?
                .iter()
                .any(|a| {
                    a.attributes.iter().any(|at| {
                        matches!(at, rtnetlink::packet_route::address::AddressAttribute::Address(std::net::IpAddr::V4(ip)) if *ip == cfg.gateway)
                    })
                });
            if !has_addr {
                h.address()
                    .add(idx, cfg.gateway.into(), cfg.prefix_len)
                    .execute()
                    .await
                    .map_err(nl)?;
            }
            h.link()
                .set(LinkUnspec::new_with_index(idx).up().build())
                .execute()
                .await
                .map_err(nl)?;
            Ok(())
        })?;
        // Outbound NAT needs forwarding; VM-to-VM and VM-to-host traffic does not. Where
        // /proc/sys is read-only (a container), say so and carry on.
        let fwd = "/proc/sys/net/ipv4/ip_forward";
        if std::fs::read_to_string(fwd)
            .map(|v| v.trim() != "1")
            .unwrap_or(true)
            && let Err(e) = std::fs::write(fwd, "1")
        {
            tracing::warn!(
                "{}; guests will not reach beyond this host",
                NetError::Forwarding(e)
            );
        }
        self.nft(json!({"nftables": [
            {"add": {"table": {"family": "inet", "name": self.cfg.nft_table}}},
            {"add": {"set": {"family": "inet", "table": self.cfg.nft_table, "name": "guests",
                "type": ["ifname", "ipv4_addr"]}}},
            {"add": {"chain": {"family": "inet", "table": self.cfg.nft_table, "name": "forward",
                "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}}},
            {"add": {"chain": {"family": "inet", "table": self.cfg.nft_table, "name": "postrouting",
                "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"}}},
            {"flush": {"chain": {"family": "inet", "table": self.cfg.nft_table, "name": "forward"}}},
            {"flush": {"chain": {"family": "inet", "table": self.cfg.nft_table, "name": "postrouting"}}},
            {"add": {"rule": {"family": "inet", "table": self.cfg.nft_table, "chain": "forward", "expr": [
                {"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "bg*"}},
                {"match": {"op": "!=", "left": {"concat": [{"meta": {"key": "iifname"}},
                    {"payload": {"protocol": "ip", "field": "saddr"}}]}, "right": "@guests"}},
                {"drop": null}
            ]}}},
            {"add": {"rule": {"family": "inet", "table": self.cfg.nft_table, "chain": "postrouting", "expr": [
                {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                    "right": {"prefix": {"addr": self.subnet().split('/').next().unwrap_or_default(), "len": self.cfg.prefix_len}}}},
                {"match": {"op": "!=", "left": {"meta": {"key": "oifname"}}, "right": self.cfg.bridge}},
                {"masquerade": null}
            ]}}}
        ]}))
    }

    pub fn teardown(&self) -> Result<(), NetError> {
        let _ = self.nft(json!({"nftables": [
            {"delete": {"table": {"family": "inet", "name": self.cfg.nft_table}}}
        ]}));
        let bridge = self.cfg.bridge.clone();
        with_netlink(async move |h| {
            if let Some(i) = link_index(&h, &bridge).await? {
                h.link().del(i).execute().await.map_err(nl)?;
            }
            Ok(())
        })
    }

    pub fn create_tap(&self, id: &VmId, ip: Ipv4Addr, uid: u32, gid: u32) -> Result<(), NetError> {
        self.setup()?;
        let name = NetworkConfig::tap_name(id);
        make_persistent_tap(&name, uid, gid).map_err(|source| NetError::Tap {
            name: name.clone(),
            source,
        })?;
        let bridge = self.cfg.bridge.clone();
        let tap = name.clone();
        with_netlink(async move |h| {
            let br = link_index(&h, &bridge)
                .await?
                .ok_or_else(|| NetError::Netlink(format!("no bridge {bridge}")))?;
            let t = link_index(&h, &tap)
                .await?
                .ok_or_else(|| NetError::Netlink(format!("no tap {tap}")))?;
            h.link()
                .set(LinkUnspec::new_with_index(t).controller(br).up().build())
                .execute()
                .await
                .map_err(nl)?;
            Ok(())
        })?;
        // Replace any element this tap had before.
        self.forget_tap(&name);
        self.nft(json!({"nftables": [
            {"add": {"element": {"family": "inet", "table": self.cfg.nft_table, "name": "guests",
                "elem": [{"concat": [name, ip.to_string()]}]}}}
        ]}))
    }

    pub fn delete_tap(&self, id: &VmId) -> Result<(), NetError> {
        let name = NetworkConfig::tap_name(id);
        self.forget_tap(&name);
        with_netlink(async move |h| {
            if let Some(i) = link_index(&h, &name).await? {
                h.link().del(i).execute().await.map_err(nl)?;
            }
            Ok(())
        })
    }

    /// Removes every `guests` element of this tap (there is at most one).
    fn forget_tap(&self, tap: &str) {
        let Ok(out) = nftables::helper::get_current_ruleset_raw(
            None::<&str>,
            ["list", "set", "inet", self.cfg.nft_table.as_str(), "guests"],
        ) else {
            return;
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&out) else {
            return;
        };
        let elems: Vec<serde_json::Value> = v["nftables"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|o| o.get("set"))
            .filter_map(|s| s.get("elem"))
            .filter_map(|e| e.as_array())
            .flatten()
            .filter(|e| e["concat"][0] == tap)
            .cloned()
            .collect();
        if !elems.is_empty() {
            let _ = self.nft(json!({"nftables": [
                {"delete": {"element": {"family": "inet", "table": self.cfg.nft_table, "name": "guests", "elem": elems}}}
            ]}));
        }
    }

    fn nft(&self, ruleset: serde_json::Value) -> Result<(), NetError> {
        nftables::helper::apply_ruleset_raw(
            &ruleset.to_string(),
            None::<&str>,
            std::iter::empty::<&str>(),
        )
        .map(|_| ())
        .map_err(|e| NetError::Nft(e.to_string()))
    }
}

// TUN ioctls (linux/if_tun.h).
nix::ioctl_write_int!(tunsetiff, b'T', 202);
nix::ioctl_write_int!(tunsetpersist, b'T', 203);
nix::ioctl_write_int!(tunsetowner, b'T', 204);
nix::ioctl_write_int!(tunsetgroup, b'T', 206);

const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;

#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Creates (or re-opens) a persistent tap owned by `uid:gid`, so a VMM running as
/// that user can open it without privileges.
fn make_persistent_tap(name: &str, uid: u32, gid: u32) -> std::io::Result<()> {
    if name.len() >= libc::IFNAMSIZ {
        return Err(std::io::Error::other("name too long"));
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
        _pad: [0; 22],
    };
    for (d, s) in req.name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    let fd = f.as_raw_fd();
    // SAFETY: fd is an open /dev/net/tun; req is a properly laid out struct ifreq.
    unsafe {
        tunsetiff(fd, &req as *const IfReq as u64).map_err(std::io::Error::from)?;
        tunsetowner(fd, uid as u64).map_err(std::io::Error::from)?;
        tunsetgroup(fd, gid as u64).map_err(std::io::Error::from)?;
        tunsetpersist(fd, 1).map_err(std::io::Error::from)?;
    }
    Ok(())
}
