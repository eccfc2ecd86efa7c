//! `PUT /actions`.

use banger_fc::models::{ActionType, InstanceActionInfo};

use super::{ParsedRequest, RequestError, json};
use crate::action::VmmAction;

pub(super) fn parse_put(body: &[u8]) -> Result<ParsedRequest, RequestError> {
    let a: InstanceActionInfo = json(body)?;
    Ok(ParsedRequest::new(match a.action_type {
        ActionType::InstanceStart => VmmAction::InstanceStart,
        ActionType::SendCtrlAltDel => VmmAction::SendCtrlAltDel,
        ActionType::FlushMetrics => VmmAction::FlushMetrics,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_action_type_maps_to_its_action_and_others_are_refused() {
        for (t, want) in [
            ("InstanceStart", VmmAction::InstanceStart),
            ("SendCtrlAltDel", VmmAction::SendCtrlAltDel),
            ("FlushMetrics", VmmAction::FlushMetrics),
        ] {
            let body = format!(r#"{{"action_type":"{t}"}}"#);
            assert_eq!(parse_put(body.as_bytes()).unwrap().action, want);
        }
        let e = parse_put(br#"{"action_type":"Reboot"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown variant `Reboot`"), "{e}");
        assert!(parse_put(br#"{"action_type":"InstanceStart","x":1}"#).is_err());
    }
}
