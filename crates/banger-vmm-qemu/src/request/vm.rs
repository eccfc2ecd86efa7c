//! `PATCH /vm`.

use banger_fc::models::VmPatch;

use super::{ParsedRequest, RequestError, json};
use crate::action::VmmAction;

pub(super) fn parse_patch(body: &[u8]) -> Result<ParsedRequest, RequestError> {
    let v: VmPatch = json(body)?;
    Ok(ParsedRequest::new(VmmAction::PatchVm(v.state)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use banger_fc::models::VmStateRequest;

    #[test]
    fn paused_and_resumed_only() {
        assert_eq!(
            parse_patch(br#"{"state":"Paused"}"#).unwrap().action,
            VmmAction::PatchVm(VmStateRequest::Paused)
        );
        assert_eq!(
            parse_patch(br#"{"state":"Resumed"}"#).unwrap().action,
            VmmAction::PatchVm(VmStateRequest::Resumed)
        );
        assert!(parse_patch(br#"{"state":"Stopped"}"#).is_err());
    }
}
