//! Why the engine could not decide as the policies say: each becomes an
//! entry of the decision's `errors` (and the decision a deny), with the
//! wording the audit records have always had.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthzError {
    #[error("no valid policy set has been loaded")]
    NoPolicySet,
    /// The peer's or the service's entities could not be built.
    #[error("{0}")]
    Entities(String),
    #[error("unknown action {0}")]
    UnknownAction(&'static str),
    /// A declared header sent twice: which copy would the policy see?
    #[error("request context: declared header {0:?} is sent more than once")]
    DuplicateHeader(String),
    /// Cedar refused the request's context.
    #[error("request context: {0}")]
    Context(String),
    /// Cedar refused the request (principal, action, resource, context).
    #[error("request: {0}")]
    Request(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Audit records and tests read these words: they must not drift.
    #[test]
    fn the_audit_wording_is_kept() {
        assert_eq!(
            AuthzError::NoPolicySet.to_string(),
            "no valid policy set has been loaded"
        );
        assert_eq!(
            AuthzError::DuplicateHeader("x-tenant".into()).to_string(),
            "request context: declared header \"x-tenant\" is sent more than once"
        );
        assert_eq!(
            AuthzError::UnknownAction("FETCH").to_string(),
            "unknown action FETCH"
        );
        assert_eq!(
            AuthzError::Request("bad".into()).to_string(),
            "request: bad"
        );
    }
}
