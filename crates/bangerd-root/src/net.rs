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

use std::borrow::Cow;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::OnceLock;

use banger_helper::{NetworkConfig, VmId};
use futures_util::TryStreamExt;
use nftables::expr::{Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, Prefix};
use nftables::schema::{
    Chain, Element, FlushObject, NfCmd, NfListObject, NfObject, Nftables, Rule, Set, SetType,
    SetTypeValue, Table,
};
use nftables::stmt::{Match, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};
use rtnetlink::{Handle, LinkBridge, LinkUnspec};

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("netlink")]
    Netlink(#[source] rtnetlink::Error),
    #[error("netlink: cannot open a connection")]
    Connect(#[source] std::io::Error),
    #[error("no link {0}")]
    NoLink(String),
    #[error("nftables")]
    Nft(#[source] nftables::helper::NftablesError),
    #[error("tap {name}")]
    Tap {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot enable IPv4 forwarding")]
    Forwarding(#[source] std::io::Error),
}

/// The network, and one netlink connection for the helper's life: a runtime and a
/// socket per call cost more than the call.
#[derive(Clone)]
pub struct Net {
    pub cfg: NetworkConfig,
    netlink: std::sync::Arc<OnceLock<Netlink>>,
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net")
            .field("cfg", &self.cfg)
            .field("connected", &self.netlink.get().is_some())
            .finish()
    }
}

struct Netlink {
    rt: tokio::runtime::Runtime,
    handle: Handle,
}

fn nl(e: rtnetlink::Error) -> NetError {
    NetError::Netlink(e)
}

/// `nft` by absolute path ([`banger_helper::tool`]), found once.
fn nft_program() -> &'static Path {
    static NFT: OnceLock<std::path::PathBuf> = OnceLock::new();
    NFT.get_or_init(|| banger_helper::tool("nft"))
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

const INET: NfFamily = NfFamily::INet;

fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

fn ip_saddr() -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: "ip".into(),
            field: "saddr".into(),
        },
    )))
}

fn matches<'a>(left: Expression<'a>, op: Operator, right: Expression<'a>) -> Statement<'a> {
    Statement::Match(Match { left, right, op })
}

/// One `guests` element: `tap . address`.
fn guest_elem(tap: &str, ip: Ipv4Addr) -> Expression<'static> {
    Expression::Named(NamedExpression::Concat(vec![
        Expression::String(tap.to_string().into()),
        Expression::String(ip.to_string().into()),
    ]))
}

impl Net {
    pub fn new(cfg: NetworkConfig) -> Self {
        Net {
            cfg,
            netlink: Default::default(),
        }
    }

    /// Runs an async netlink conversation on the helper's one connection (made on
    /// first use, in the helper's network namespace).
    fn with_netlink<T>(
        &self,
        f: impl AsyncFnOnce(Handle) -> Result<T, NetError>,
    ) -> Result<T, NetError> {
        let n = match self.netlink.get() {
            Some(n) => n,
            None => {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .thread_name("netlink")
                    .enable_all()
                    .build()
                    .map_err(NetError::Connect)?;
                let handle = rt.block_on(async {
                    let (conn, handle, _) =
                        rtnetlink::new_connection().map_err(NetError::Connect)?;
                    tokio::spawn(conn);
                    Ok::<_, NetError>(handle)
                })?;
                // Two threads racing here: one connection wins, the other is dropped.
                let _ = self.netlink.set(Netlink { rt, handle });
                self.netlink.get().expect("just set")
            }
        };
        n.rt.block_on(f(n.handle.clone()))
    }

    /// The table banger owns, whole: its set, both chains emptied and their rules
    /// written again (so a table someone edited is put right).
    pub(crate) fn ruleset(&self) -> Nftables<'static> {
        let table: Cow<'static, str> = self.cfg.nft_table.clone().into();
        let chain = |name: &'static str, ty, hook, prio| Chain {
            family: INET,
            table: table.clone(),
            name: name.into(),
            _type: Some(ty),
            hook: Some(hook),
            prio: Some(prio),
            policy: Some(NfChainPolicy::Accept),
            ..Chain::default()
        };
        let forward = chain("forward", NfChainType::Filter, NfHook::Forward, 0);
        let postrouting = chain("postrouting", NfChainType::NAT, NfHook::Postrouting, 100);
        let subnet = self.cfg.subnet();
        let no_spoofing = Rule {
            family: INET,
            table: table.clone(),
            chain: "forward".into(),
            expr: vec![
                matches(
                    meta(MetaKey::Iifname),
                    Operator::EQ,
                    Expression::String("bg*".into()),
                ),
                matches(
                    Expression::Named(NamedExpression::Concat(vec![
                        meta(MetaKey::Iifname),
                        ip_saddr(),
                    ])),
                    Operator::NEQ,
                    Expression::String("@guests".into()),
                ),
                Statement::Drop(None),
            ]
            .into(),
            ..Rule::default()
        };
        let nat = Rule {
            family: INET,
            table: table.clone(),
            chain: "postrouting".into(),
            expr: vec![
                matches(
                    ip_saddr(),
                    Operator::EQ,
                    Expression::Named(NamedExpression::Prefix(Prefix {
                        addr: Box::new(Expression::String(subnet.network().to_string().into())),
                        len: u32::from(subnet.prefix_len()),
                    })),
                ),
                matches(
                    meta(MetaKey::Oifname),
                    Operator::NEQ,
                    Expression::String(self.cfg.bridge.clone().into()),
                ),
                Statement::Masquerade(None),
            ]
            .into(),
            ..Rule::default()
        };
        let cmd = |c| NfObject::CmdObject(c);
        Nftables {
            objects: vec![
                cmd(NfCmd::Add(NfListObject::Table(Table {
                    family: INET,
                    name: table.clone(),
                    handle: None,
                }))),
                cmd(NfCmd::Add(NfListObject::Set(Box::new(Set {
                    family: INET,
                    table: table.clone(),
                    name: "guests".into(),
                    set_type: SetTypeValue::Concatenated(
                        vec![SetType::Ifname, SetType::Ipv4Addr].into(),
                    ),
                    ..Set::default()
                })))),
                cmd(NfCmd::Add(NfListObject::Chain(forward))),
                cmd(NfCmd::Add(NfListObject::Chain(postrouting))),
                cmd(NfCmd::Flush(FlushObject::Chain(Chain {
                    family: INET,
                    table: table.clone(),
                    name: "forward".into(),
                    ..Chain::default()
                }))),
                cmd(NfCmd::Flush(FlushObject::Chain(Chain {
                    family: INET,
                    table: table.clone(),
                    name: "postrouting".into(),
                    ..Chain::default()
                }))),
                cmd(NfCmd::Add(NfListObject::Rule(no_spoofing))),
                cmd(NfCmd::Add(NfListObject::Rule(nat))),
            ]
            .into(),
        }
    }

    fn guests(&self, elem: Vec<Expression<'static>>) -> NfListObject<'static> {
        NfListObject::Element(Element {
            family: INET,
            table: self.cfg.nft_table.clone().into(),
            name: "guests".into(),
            elem: elem.into(),
        })
    }

    pub fn setup(&self) -> Result<(), NetError> {
        let cfg = self.cfg.clone();
        self.with_netlink(async move |h| {
            let idx = match link_index(&h, &cfg.bridge).await? {
                Some(i) => i,
                None => {
                    // Another set-up (a start's, the daemon's) may make it first.
                    match h.link().add(LinkBridge::new(&cfg.bridge).build()).execute().await {
                        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => {}
                        r => r.map_err(nl)?,
                    }
                    link_index(&h, &cfg.bridge).await?.ok_or_else(|| NetError::NoLink(cfg.bridge.clone()))?
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
                match h.address().add(idx, cfg.gateway.into(), cfg.prefix_len).execute().await {
                    Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => {}
                    r => r.map_err(nl)?,
                }
            }
            h.link().set(LinkUnspec::new_with_index(idx).up().build()).execute().await.map_err(nl)?;
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
                banger_api::error_chain(&NetError::Forwarding(e))
            );
        }
        self.nft(&self.ruleset())
    }

    pub fn teardown(&self) -> Result<(), NetError> {
        let table = NfListObject::Table(Table {
            family: INET,
            name: self.cfg.nft_table.clone().into(),
            handle: None,
        });
        let _ = self.nft(&Nftables {
            objects: vec![NfObject::CmdObject(NfCmd::Delete(table))].into(),
        });
        let bridge = self.cfg.bridge.clone();
        self.with_netlink(async move |h| {
            if let Some(i) = link_index(&h, &bridge).await? {
                h.link().del(i).execute().await.map_err(nl)?;
            }
            Ok(())
        })
    }

    /// The VM's tap, owned by the VMM's user, on the bridge and up. The network is
    /// set up when the daemon starts; only when the bridge is missing (torn down) is
    /// it set up again here, so a start costs one tap and one netlink exchange.
    pub fn create_tap(&self, id: &VmId, uid: u32, gid: u32) -> Result<(), NetError> {
        let name = NetworkConfig::tap_name(id);
        make_persistent_tap(&name, uid, gid).map_err(|source| NetError::Tap {
            name: name.clone(),
            source,
        })?;
        if let Err(e) = self.attach(&name) {
            tracing::info!(
                "setting the network up again: {}",
                banger_api::error_chain(&e)
            );
            self.setup()?;
            self.attach(&name)?;
        }
        Ok(())
    }

    /// The tap's `guests` element, `tap . ip`: one `nft`, or the whole table again
    /// when it is missing (flushed by someone). The tap's name is the VM's and its
    /// address the VM's for the VM's life, so an element this tap had before is this
    /// same element (`add` keeps it).
    pub fn allow_guest(&self, id: &VmId, ip: Ipv4Addr) -> Result<(), NetError> {
        let name = NetworkConfig::tap_name(id);
        let add = Nftables {
            objects: vec![NfObject::CmdObject(NfCmd::Add(
                self.guests(vec![guest_elem(&name, ip)]),
            ))]
            .into(),
        };
        if let Err(e) = self.nft(&add) {
            tracing::info!(
                "setting the network up again: {}",
                banger_api::error_chain(&e)
            );
            self.setup()?;
            self.nft(&add)?;
        }
        Ok(())
    }

    /// Puts the tap on the bridge and up.
    fn attach(&self, tap: &str) -> Result<(), NetError> {
        let bridge = self.cfg.bridge.clone();
        let tap = tap.to_string();
        self.with_netlink(async move |h| {
            let br = link_index(&h, &bridge)
                .await?
                .ok_or_else(|| NetError::NoLink(bridge.clone()))?;
            let t = link_index(&h, &tap)
                .await?
                .ok_or_else(|| NetError::NoLink(tap.clone()))?;
            h.link()
                .set(LinkUnspec::new_with_index(t).controller(br).up().build())
                .execute()
                .await
                .map_err(nl)?;
            Ok(())
        })
    }

    pub fn delete_tap(&self, id: &VmId) -> Result<(), NetError> {
        let name = NetworkConfig::tap_name(id);
        self.forget_tap(&name);
        self.with_netlink(async move |h| {
            if let Some(i) = link_index(&h, &name).await? {
                h.link().del(i).execute().await.map_err(nl)?;
            }
            Ok(())
        })
    }

    /// Removes every `guests` element of this tap (there is at most one).
    fn forget_tap(&self, tap: &str) {
        let Ok(listed) = nftables::helper::get_current_ruleset_with_args(
            Some(nft_program()),
            [
                "-j",
                "list",
                "set",
                "inet",
                self.cfg.nft_table.as_str(),
                "guests",
            ],
        ) else {
            return;
        };
        let elems = elements_of(&listed, tap);
        if !elems.is_empty() {
            let _ = self.nft(&Nftables {
                objects: vec![NfObject::CmdObject(NfCmd::Delete(self.guests(elems)))].into(),
            });
        }
    }

    fn nft(&self, ruleset: &Nftables) -> Result<(), NetError> {
        nftables::helper::apply_ruleset_with_args(
            ruleset,
            Some(nft_program()),
            nftables::helper::DEFAULT_ARGS,
        )
        .map_err(NetError::Nft)
    }
}

/// The `guests` elements of `tap` in a listing of the set.
fn elements_of(listed: &Nftables<'_>, tap: &str) -> Vec<Expression<'static>> {
    listed
        .objects
        .iter()
        .filter_map(|o| match o {
            NfObject::ListObject(NfListObject::Set(s)) => s.elem.as_deref(),
            _ => None,
        })
        .flatten()
        .filter_map(|e| match e {
            Expression::Named(NamedExpression::Concat(parts)) => match parts.as_slice() {
                [Expression::String(t), Expression::String(ip)] if t == tap => ip.parse().ok(),
                _ => None,
            },
            _ => None,
        })
        .map(|ip| guest_elem(tap, ip))
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn net() -> Net {
        Net::new(NetworkConfig {
            bridge: "br0".into(),
            gateway: "10.9.0.1".parse().unwrap(),
            prefix_len: 24,
            nft_table: "t".into(),
        })
    }

    /// The typed ruleset is, to the byte of its JSON, the table the module documents.
    #[test]
    fn the_ruleset_is_the_documented_table() {
        let want = json!({"nftables": [
            {"add": {"table": {"family": "inet", "name": "t"}}},
            {"add": {"set": {"family": "inet", "table": "t", "name": "guests", "type": ["ifname", "ipv4_addr"]}}},
            {"add": {"chain": {"family": "inet", "table": "t", "name": "forward",
                "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}}},
            {"add": {"chain": {"family": "inet", "table": "t", "name": "postrouting",
                "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"}}},
            {"flush": {"chain": {"family": "inet", "table": "t", "name": "forward"}}},
            {"flush": {"chain": {"family": "inet", "table": "t", "name": "postrouting"}}},
            {"add": {"rule": {"family": "inet", "table": "t", "chain": "forward", "expr": [
                {"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "bg*"}},
                {"match": {"op": "!=", "left": {"concat": [{"meta": {"key": "iifname"}},
                    {"payload": {"protocol": "ip", "field": "saddr"}}]}, "right": "@guests"}},
                {"drop": null}
            ]}}},
            {"add": {"rule": {"family": "inet", "table": "t", "chain": "postrouting", "expr": [
                {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                    "right": {"prefix": {"addr": "10.9.0.0", "len": 24}}}},
                {"match": {"op": "!=", "left": {"meta": {"key": "oifname"}}, "right": "br0"}},
                {"masquerade": null}
            ]}}}
        ]});
        assert_eq!(serde_json::to_value(net().ruleset()).unwrap(), want);
    }

    /// What `nft -j list set` prints: only this tap's elements, other taps' and
    /// malformed ones left alone.
    #[test]
    fn a_tap_s_elements_are_found_in_a_listing() {
        let listed: Nftables = serde_json::from_value(json!({"nftables": [
            {"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}},
            {"set": {"family": "inet", "name": "guests", "table": "t", "type": ["ifname", "ipv4_addr"], "handle": 1,
                "elem": [{"concat": ["bgaaa", "10.9.0.2"]}, {"concat": ["bgbbb", "10.9.0.3"]},
                         {"concat": ["bgaaa", "10.9.0.9"]}, {"concat": ["bgaaa", "not an address"]}, "bgaaa"]}}
        ]}))
        .unwrap();
        let got = serde_json::to_value(elements_of(&listed, "bgaaa")).unwrap();
        assert_eq!(
            got,
            json!([{"concat": ["bgaaa", "10.9.0.2"]}, {"concat": ["bgaaa", "10.9.0.9"]}])
        );
        assert!(elements_of(&listed, "bgccc").is_empty());
        let element = serde_json::to_value(
            net().guests(vec![guest_elem("bgaaa", "10.9.0.2".parse().unwrap())]),
        )
        .unwrap();
        assert_eq!(
            element,
            json!({"element": {"family": "inet", "table": "t", "name": "guests", "elem": [{"concat": ["bgaaa", "10.9.0.2"]}]}})
        );
    }
}
