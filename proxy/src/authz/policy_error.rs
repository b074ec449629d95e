//! What can be wrong with a policy set, shared by the file reader
//! ([`super::policy_files`]) and the loader ([`super::policy_set`]).

use std::path::PathBuf;

/// One problem found in a policy set, located.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyIssue {
    pub file: String,
    pub line: usize,
    pub policy_id: Option<String>,
    pub message: String,
}

impl std::fmt::Display for PolicyIssue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: ", self.file, self.line)?;
        if let Some(id) = &self.policy_id {
            write!(f, "policy {id:?}: ")?;
        }
        f.write_str(&self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is {size} bytes: policy files are limited to {limit} bytes")]
    TooLarge {
        path: PathBuf,
        size: u64,
        limit: u64,
    },
    #[error("{0} is not UTF-8 text")]
    NotUtf8(PathBuf),
    #[error("schema {file}: {message}")]
    Schema { file: String, message: String },
    #[error("{} problem(s) in the policy set:\n{}", .0.len(), .0.iter().map(|i| format!("  {i}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<PolicyIssue>),
}
