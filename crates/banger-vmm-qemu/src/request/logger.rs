//! `PUT /logger`.

use super::{ParsedRequest, RequestError, json};
use crate::action::VmmAction;

pub(super) fn parse_put(body: &[u8]) -> Result<ParsedRequest, RequestError> {
    Ok(ParsedRequest::new(VmmAction::PutLogger(json(body)?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_is_optional_and_unknown_ones_refused() {
        assert!(matches!(
            parse_put(b"{}").unwrap().action,
            VmmAction::PutLogger(_)
        ));
        assert!(parse_put(br#"{"log_path":"/l","show_level":true,"level":"Debug"}"#).is_ok());
        assert!(parse_put(br#"{"colour":true}"#).is_err());
    }
}
