//! `PUT /mmds`, `PUT /mmds/config` and `PATCH /mmds`.

use banger_fc::models::{MmdsConfig, MmdsVersion};
use serde_json::Value;

use super::{ParsedRequest, RequestError, json};
use crate::action::VmmAction;

pub const V1_DEPRECATED: &str = "PUT /mmds/config: V1 is deprecated. Use V2 instead.";

pub(super) fn parse_put(body: &[u8], sub: Option<&str>) -> Result<ParsedRequest, RequestError> {
    match sub {
        None => Ok(ParsedRequest::new(VmmAction::PutMmds(json::<Value>(body)?))),
        Some("config") => {
            let config: MmdsConfig = json(body)?;
            let v1 = config.version == MmdsVersion::V1;
            let parsed = ParsedRequest::new(VmmAction::PutMmdsConfig(config));
            Ok(if v1 {
                parsed.deprecated(V1_DEPRECATED)
            } else {
                parsed
            })
        }
        Some(other) => Err(RequestError::Generic(format!(
            "Unrecognized PUT request path `{other}`."
        ))),
    }
}

pub(super) fn parse_patch(body: &[u8]) -> Result<ParsedRequest, RequestError> {
    Ok(ParsedRequest::new(VmmAction::PatchMmds(json::<Value>(
        body,
    )?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_config_and_unknown_sub_paths() {
        assert!(matches!(
            parse_put(br#"{"a":{"b":1}}"#, None).unwrap().action,
            VmmAction::PutMmds(v) if v["a"]["b"] == 1
        ));
        let p = parse_put(
            br#"{"network_interfaces":["eth0"],"version":"V2"}"#,
            Some("config"),
        )
        .unwrap();
        assert_eq!(p.deprecation, None);
        let p = parse_put(br#"{"network_interfaces":["eth0"]}"#, Some("config")).unwrap();
        assert_eq!(p.deprecation, Some(V1_DEPRECATED));
        assert_eq!(
            parse_put(b"{}", Some("foo")).unwrap_err().to_string(),
            "Unrecognized PUT request path `foo`."
        );
        assert!(parse_put(b"{", None).is_err());
        assert!(matches!(
            parse_patch(br#"{"a":null}"#).unwrap().action,
            VmmAction::PatchMmds(_)
        ));
    }
}
