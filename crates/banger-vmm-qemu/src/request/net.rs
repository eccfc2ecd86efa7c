//! `PUT /network-interfaces/{id}` and `PATCH /network-interfaces/{id}`.

use banger_fc::models::{NetworkInterface, PartialNetworkInterface};

use super::{ParsedRequest, RequestError, json, path_id};
use crate::action::VmmAction;

fn mismatch(path: &str, body: &str) -> RequestError {
    RequestError::Generic(format!(
        "The id from the path [{path}] does not match the id from the body [{body}]!"
    ))
}

pub(super) fn parse_put(body: &[u8], id: Option<&str>) -> Result<ParsedRequest, RequestError> {
    let id = path_id(id)?;
    let n: NetworkInterface = json(body)?;
    if n.iface_id != id {
        return Err(mismatch(id, &n.iface_id));
    }
    Ok(ParsedRequest::new(VmmAction::PutNetworkInterface(n)))
}

pub(super) fn parse_patch(body: &[u8], id: Option<&str>) -> Result<ParsedRequest, RequestError> {
    let id = path_id(id)?;
    let n: PartialNetworkInterface = json(body)?;
    if n.iface_id != id {
        return Err(mismatch(id, &n.iface_id));
    }
    Ok(ParsedRequest::new(VmmAction::PatchNetworkInterface(n)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_must_match_and_the_mac_must_be_one() {
        let body = br#"{"iface_id":"eth0","host_dev_name":"tap0","guest_mac":"06:00:ac:10:00:02"}"#;
        assert!(matches!(
            parse_put(body, Some("eth0")).unwrap().action,
            VmmAction::PutNetworkInterface(n) if n.host_dev_name == "tap0"
        ));
        assert_eq!(
            parse_put(body, Some("eth1")).unwrap_err().to_string(),
            "The id from the path [eth1] does not match the id from the body [eth0]!"
        );
        for bad in [
            "06:00:ac:10:00",
            "06:00:ac:10:00:0g",
            "0600ac100002",
            "06:00:ac:10:00:002",
        ] {
            let b = format!(r#"{{"iface_id":"e","host_dev_name":"t","guest_mac":"{bad}"}}"#);
            let e = parse_put(b.as_bytes(), Some("e")).unwrap_err().to_string();
            assert!(
                e.contains("The provided MAC address is invalid. at line 1 column"),
                "{bad}: {e}"
            );
        }
        let e = parse_put(
            br#"{"iface_id":"e","host_dev_name":"t","mtu":70000}"#,
            Some("e"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("u16"), "{e}");
        assert!(matches!(
            parse_patch(br#"{"iface_id":"e"}"#, Some("e"))
                .unwrap()
                .action,
            VmmAction::PatchNetworkInterface(_)
        ));
        assert!(parse_patch(br#"{"iface_id":"e"}"#, Some("f")).is_err());
    }
}
