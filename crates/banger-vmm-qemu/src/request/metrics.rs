//! `PUT /metrics`.

use super::{ParsedRequest, RequestError, json};
use crate::action::VmmAction;

pub(super) fn parse_put(body: &[u8]) -> Result<ParsedRequest, RequestError> {
    Ok(ParsedRequest::new(VmmAction::PutMetrics(json(body)?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_path_is_required() {
        assert!(matches!(
            parse_put(br#"{"metrics_path":"/m"}"#).unwrap().action,
            VmmAction::PutMetrics(m) if m.metrics_path == "/m"
        ));
        assert!(
            parse_put(b"{}")
                .unwrap_err()
                .to_string()
                .contains("missing field `metrics_path`")
        );
    }
}
