//! `PUT /boot-source`.

use super::{ParsedRequest, RequestError, json};
use crate::action::VmmAction;

pub(super) fn parse_put(body: &[u8]) -> Result<ParsedRequest, RequestError> {
    Ok(ParsedRequest::new(VmmAction::PutBootSource(json(body)?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_is_required_and_unknown_fields_refused() {
        let VmmAction::PutBootSource(b) =
            parse_put(br#"{"kernel_image_path":"/k"}"#).unwrap().action
        else {
            panic!()
        };
        assert_eq!(
            (b.kernel_image_path.as_str(), b.initrd_path, b.boot_args),
            ("/k", None, None)
        );
        let e = parse_put(br#"{"initrd_path":"/i"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing field `kernel_image_path`"), "{e}");
        assert!(parse_put(br#"{"kernel_image_path":"/k","x":1}"#).is_err());
    }
}
