//! `PUT /drives/{id}` and `PATCH /drives/{id}`.

use banger_fc::models::{Drive, PartialDrive};

use super::{ParsedRequest, RequestError, json, path_id};
use crate::action::VmmAction;

const ID_MISMATCH: &str = "The id from the path does not match the id from the body!";

pub(super) fn parse_put(body: &[u8], id: Option<&str>) -> Result<ParsedRequest, RequestError> {
    let id = path_id(id)?;
    let d: Drive = json(body)?;
    if d.drive_id != id {
        return Err(RequestError::Generic(ID_MISMATCH.into()));
    }
    Ok(ParsedRequest::new(VmmAction::PutDrive(d)))
}

pub(super) fn parse_patch(body: &[u8], id: Option<&str>) -> Result<ParsedRequest, RequestError> {
    let id = path_id(id)?;
    let d: PartialDrive = json(body)?;
    if d.drive_id != id {
        return Err(RequestError::Generic(ID_MISMATCH.into()));
    }
    Ok(ParsedRequest::new(VmmAction::PatchDrive(d)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_path_id_must_be_valid_and_match_the_body() {
        let ok = br#"{"drive_id":"rootfs","is_root_device":true,"path_on_host":"/d"}"#;
        assert!(matches!(
            parse_put(ok, Some("rootfs")).unwrap().action,
            VmmAction::PutDrive(d) if d.path_on_host.as_deref() == Some("/d")
        ));
        assert_eq!(
            parse_put(ok, Some("other")).unwrap_err().to_string(),
            ID_MISMATCH
        );
        assert_eq!(parse_put(ok, None), Err(RequestError::EmptyId));
        assert_eq!(parse_put(ok, Some("bad-id")), Err(RequestError::InvalidId));
        let e = parse_put(br#"{"drive_id":"rootfs"}"#, Some("rootfs"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing field `is_root_device`"), "{e}");
        let e = parse_put(
            br#"{"drive_id":"a","is_root_device":true,"cache_type":"Fast"}"#,
            Some("a"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("unknown variant `Fast`"), "{e}");
        assert!(matches!(
            parse_patch(br#"{"drive_id":"a","path_on_host":"/n"}"#, Some("a"))
                .unwrap()
                .action,
            VmmAction::PatchDrive(_)
        ));
        assert_eq!(
            parse_patch(br#"{"drive_id":"a"}"#, Some("b"))
                .unwrap_err()
                .to_string(),
            ID_MISMATCH
        );
    }
}
