//! Reading a policy directory, and the limits that keep hostile or broken
//! policy files from exhausting memory or stack before Cedar sees them.

use std::path::Path;

use super::policy_error::{PolicyError, PolicyIssue};

/// Largest policy or schema file accepted.
pub const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;
/// Largest policy set accepted, all files together.
pub const MAX_TOTAL_BYTES: u64 = 32 * 1024 * 1024;
/// File name of a directory's own schema.
pub const SCHEMA_FILE: &str = "schema.cedarschema";

/// The contents of a policy directory, read in one pass.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PolicyFiles {
    pub sources: Vec<PolicySource>,
    /// The directory's own `schema.cedarschema`, if it has one.
    pub schema: Option<String>,
}

/// Reads the `*.cedar` files (regular files only, sorted by name) and the
/// schema of `dir`, enforcing the size limits.
pub fn read_policy_dir(dir: &Path) -> Result<PolicyFiles, PolicyError> {
    let io = |source| PolicyError::Io {
        path: dir.to_owned(),
        source,
    };
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if path.extension().is_some_and(|e| e == "cedar") && path.is_file() {
            paths.push(path);
        }
    }
    paths.sort();
    let mut total = 0;
    let mut sources = Vec::with_capacity(paths.len());
    for path in &paths {
        let text = read_limited(path, &mut total)?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        sources.push(PolicySource { name, text });
    }
    let schema_path = dir.join(SCHEMA_FILE);
    let schema = if schema_path.is_file() {
        Some(read_limited(&schema_path, &mut total)?)
    } else {
        None
    };
    Ok(PolicyFiles { sources, schema })
}

impl PolicyFiles {
    /// Files given by name (a bundle pushed to the control plane): `*.cedar`
    /// files and optionally the schema, nothing else, no paths.
    pub fn from_named(files: &std::collections::BTreeMap<String, String>) -> Result<Self, String> {
        let mut out = PolicyFiles::default();
        for (name, text) in files {
            if name.contains('/') || name.starts_with('.') {
                return Err(format!("{name:?} is not a plain file name"));
            }
            if name == SCHEMA_FILE {
                out.schema = Some(text.clone());
            } else if name.ends_with(".cedar") {
                out.sources.push(PolicySource {
                    name: name.clone(),
                    text: text.clone(),
                });
            } else {
                return Err(format!(
                    "{name:?}: only *.cedar files and {SCHEMA_FILE} are accepted"
                ));
            }
        }
        if out.sources.is_empty() {
            return Err("the bundle has no *.cedar file".into());
        }
        Ok(out)
    }
}

/// A policy file's name and text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySource {
    pub name: String,
    pub text: String,
}

/// Deepest bracket nesting accepted in a policy.
pub const MAX_NESTING: usize = 32;
/// Most operators accepted in one policy.
pub const MAX_OPERATORS: usize = 256;

/// Refuses policies deep enough to exhaust a thread's stack in Cedar's
/// recursive parser and evaluator (it has no depth limit of its own): deep
/// bracket nesting, or very long operator chains (each operator is one more
/// level in the expression tree). Strings and comments are skipped.
pub(super) fn check_complexity(source: &PolicySource) -> Result<(), PolicyIssue> {
    let text = source.text.as_bytes();
    let (mut depth, mut operators, mut line) = (0usize, 0usize, 1usize);
    let mut i = 0;
    while i < text.len() {
        let c = text[i];
        match c {
            b'\n' => line += 1,
            b'"' => {
                // Skip the string literal, honouring escapes.
                i += 1;
                while i < text.len() && text[i] != b'"' {
                    if text[i] == b'\\' {
                        i += 1;
                    } else if text[i] == b'\n' {
                        line += 1;
                    }
                    i += 1;
                }
            }
            b'/' if text.get(i + 1) == Some(&b'/') => {
                while i < text.len() && text[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'(' | b'[' | b'{' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err(PolicyIssue {
                        file: source.name.clone(),
                        line,
                        policy_id: None,
                        message: format!("brackets nested deeper than {MAX_NESTING}"),
                    });
                }
            }
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            b';' if depth == 0 => operators = 0,
            b'&' | b'|' | b'=' | b'!' | b'<' | b'>' | b'+' | b'-' | b'*' | b'.' => {
                operators += 1;
                if operators > MAX_OPERATORS * 2 {
                    return Err(PolicyIssue {
                        file: source.name.clone(),
                        line,
                        policy_id: None,
                        message: format!("policy has more than {MAX_OPERATORS} operators"),
                    });
                }
            }
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

fn read_limited(path: &Path, total: &mut u64) -> Result<String, PolicyError> {
    let io = |source| PolicyError::Io {
        path: path.to_owned(),
        source,
    };
    let size = std::fs::metadata(path).map_err(io)?.len();
    if size > MAX_FILE_BYTES {
        return Err(PolicyError::TooLarge {
            path: path.to_owned(),
            size,
            limit: MAX_FILE_BYTES,
        });
    }
    *total += size;
    if *total > MAX_TOTAL_BYTES {
        return Err(PolicyError::TooLarge {
            path: path.to_owned(),
            size: *total,
            limit: MAX_TOTAL_BYTES,
        });
    }
    let bytes = std::fs::read(path).map_err(io)?;
    String::from_utf8(bytes).map_err(|_| PolicyError::NotUtf8(path.to_owned()))
}
