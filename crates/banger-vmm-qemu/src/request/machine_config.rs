//! `PUT /machine-config` and `PATCH /machine-config`.

use banger_fc::models::{MachineConfiguration, MachineConfigurationUpdate};

use super::{ParsedRequest, RequestError, json};
use crate::action::VmmAction;

pub const PUT_CPU_TEMPLATE_DEPRECATED: &str =
    "PUT /machine-config: cpu_template field is deprecated.";
pub const PATCH_CPU_TEMPLATE_DEPRECATED: &str =
    "PATCH /machine-config: cpu_template field is deprecated.";

pub(super) fn parse_put(body: &[u8]) -> Result<ParsedRequest, RequestError> {
    let mc: MachineConfiguration = json(body)?;
    let deprecated = mc.cpu_template.is_some();
    let parsed = ParsedRequest::new(VmmAction::PutMachineConfig(mc));
    Ok(if deprecated {
        parsed.deprecated(PUT_CPU_TEMPLATE_DEPRECATED)
    } else {
        parsed
    })
}

pub(super) fn parse_patch(body: &[u8]) -> Result<ParsedRequest, RequestError> {
    let update: MachineConfigurationUpdate = json(body)?;
    if update.is_empty() {
        return Err(RequestError::EmptyBody(hyper::Method::PATCH));
    }
    let deprecated = update.cpu_template.is_some();
    let parsed = ParsedRequest::new(VmmAction::PatchMachineConfig(update));
    Ok(if deprecated {
        parsed.deprecated(PATCH_CPU_TEMPLATE_DEPRECATED)
    } else {
        parsed
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_needs_both_sizes_and_knows_the_templates() {
        let p = parse_put(br#"{"vcpu_count":2,"mem_size_mib":256}"#).unwrap();
        assert_eq!(p.deprecation, None);
        let e = parse_put(br#"{"mem_size_mib":128}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing field `vcpu_count`"), "{e}");
        let e = parse_put(br#"{"vcpu_count":1,"mem_size_mib":128,"cpu_template":"Z1"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown variant `Z1`"), "{e}");
        let p = parse_put(br#"{"vcpu_count":1,"mem_size_mib":128,"cpu_template":"T2"}"#).unwrap();
        assert_eq!(p.deprecation, Some(PUT_CPU_TEMPLATE_DEPRECATED));
        let e = parse_put(br#"{"vcpu_count":1,"mem_size_mib":-1}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("invalid value"), "{e}");
    }

    #[test]
    fn an_empty_patch_is_refused_and_a_template_is_deprecated() {
        assert_eq!(
            parse_patch(b"{}"),
            Err(RequestError::EmptyBody(hyper::Method::PATCH))
        );
        assert_eq!(parse_patch(br#"{"smt":false}"#).unwrap().deprecation, None);
        assert_eq!(
            parse_patch(br#"{"cpu_template":"None"}"#)
                .unwrap()
                .deprecation,
            Some(PATCH_CPU_TEMPLATE_DEPRECATED)
        );
    }
}
