//! Loading a policy set: Cedar files plus the schema, parsed per file so
//! errors name the file and line, `@id("...")` honoured as the policy id,
//! strict schema validation, and a content-hash version.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use cedar_policy::{PolicyId, PolicySet, Schema, SchemaFragment, ValidationMode, Validator};
use sha2::{Digest, Sha256};

use super::context_needs::ContextNeeds;
use super::index::PolicyIndex;
pub use super::policy_error::{PolicyError, PolicyIssue};
use super::policy_files::check_complexity;
pub use super::policy_files::{
    MAX_FILE_BYTES, MAX_NESTING, MAX_OPERATORS, MAX_TOTAL_BYTES, PolicyFiles, PolicySource,
    SCHEMA_FILE, read_policy_dir,
};

/// The schema shipped in `policies/schema.cedarschema`, used when a policy
/// directory brings none.
pub const DEFAULT_SCHEMA: &str = include_str!("../../../policies/schema.cedarschema");
/// Where a policy came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub file: String,
    pub line: usize,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// A validated policy set, ready to decide with. Immutable: a reload builds
/// a new one and swaps it in.
#[derive(Debug)]
pub struct PolicySnapshot {
    pub(crate) policies: PolicySet,
    /// The same policies with their scopes removed, for evaluating slices.
    pub(crate) unscoped: PolicySet,
    pub(crate) schema: Arc<Schema>,
    version: String,
    origins: HashMap<PolicyId, Origin>,
    declared_headers: Vec<String>,
    pub(crate) index: PolicyIndex,
    /// Slices built so far, shared by every peer whose slice holds the same
    /// policies (most peers of a namespace, every unauthenticated peer).
    slices: Mutex<HashMap<Vec<PolicyId>, Arc<Slice>>>,
}

/// The policies that can apply to one (peer, action): those with conditions,
/// scopes removed, to evaluate with Cedar, and the context attributes they
/// can observe; and the ids of those without conditions, which are satisfied
/// by construction.
#[derive(Debug)]
pub(crate) struct Slice {
    pub policies: PolicySet,
    pub is_empty: bool,
    pub needs: ContextNeeds,
    pub always_permit: Vec<String>,
    pub always_forbid: Vec<String>,
    /// The conditional policies again, when every one of them can be
    /// decided without Cedar (see `native`): HTTP requests then skip Cedar.
    pub native: Option<Vec<super::native::NativePolicy>>,
}

/// Distinct slices kept per snapshot; past this the cache starts over.
const MAX_SLICES: usize = 50_000;

impl PolicySnapshot {
    /// The slice holding `ids` (sorted), built once per snapshot.
    pub(crate) fn slice(&self, mut ids: Vec<PolicyId>) -> Arc<Slice> {
        ids.sort_unstable_by(|a, b| AsRef::<str>::as_ref(a).cmp(AsRef::<str>::as_ref(b)));
        let mut slices = self
            .slices
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(slice) = slices.get(&ids) {
            return slice.clone();
        }
        // Policies without conditions are decided by their scope alone,
        // which the index has matched: they need no evaluation.
        let (mut always_permit, mut always_forbid, mut conditional) =
            (Vec::new(), Vec::new(), Vec::new());
        for id in &ids {
            match self.policies.policy(id) {
                Some(p) if !p.has_non_scope_constraint() => match p.effect() {
                    cedar_policy::Effect::Permit => always_permit.push(id.to_string()),
                    cedar_policy::Effect::Forbid => always_forbid.push(id.to_string()),
                },
                _ => conditional.push(id.clone()),
            }
        }
        let native = conditional
            .iter()
            .map(|id| {
                let policy = self.policies.policy(id)?;
                Some(super::native::NativePolicy {
                    id: id.to_string(),
                    permit: policy.effect() == cedar_policy::Effect::Permit,
                    condition: super::native::compile(policy)?,
                })
            })
            .collect::<Option<Vec<_>>>();
        let policies = super::index::subset(&self.unscoped, conditional);
        let needs = ContextNeeds::of(&policies);
        let slice = Arc::new(Slice {
            is_empty: policies.is_empty(),
            policies,
            needs,
            always_permit,
            always_forbid,
            native,
        });
        if slices.len() >= MAX_SLICES {
            slices.clear();
        }
        slices.insert(ids, slice.clone());
        slice
    }

    /// Content hash of the schema and every policy file: the same files give
    /// the same version on every sidecar.
    pub fn version(&self) -> &str {
        &self.version
    }

    pub fn len(&self) -> usize {
        self.origins.len()
    }

    pub fn is_empty(&self) -> bool {
        self.origins.is_empty()
    }

    pub fn origin(&self, id: &str) -> Option<&Origin> {
        self.origins.get(&PolicyId::new(id))
    }

    /// The request headers the schema declares; only these reach policies.
    pub fn declared_headers(&self) -> &[String] {
        &self.declared_headers
    }

    pub fn policy_set(&self) -> &PolicySet {
        &self.policies
    }

    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// Loads every `*.cedar` file in `dir` (not recursing), with
    /// `dir/schema.cedarschema` if present, else the built-in schema.
    pub fn load_dir(dir: &Path) -> Result<Self, PolicyError> {
        Self::from_files(read_policy_dir(dir)?)
    }

    /// Builds a snapshot from files already read (see [`read_policy_dir`]).
    pub fn from_files(files: PolicyFiles) -> Result<Self, PolicyError> {
        match files.schema {
            Some(schema) => Self::from_sources(SCHEMA_FILE, &schema, files.sources),
            None => Self::from_sources("(built-in schema)", DEFAULT_SCHEMA, files.sources),
        }
    }

    /// Builds a snapshot from in-memory files (a bundle from the control plane).
    pub fn from_sources(
        schema_name: &str,
        schema_text: &str,
        sources: Vec<PolicySource>,
    ) -> Result<Self, PolicyError> {
        Self::build(&PolicySchema::parse(schema_name, schema_text)?, sources)
    }

    /// Builds a snapshot against an already parsed schema.
    pub fn build(schema: &PolicySchema, sources: Vec<PolicySource>) -> Result<Self, PolicyError> {
        let schema_text = schema.text.as_str();
        let declared_headers = schema.declared_headers.clone();
        let schema = schema.schema.clone();
        let mut issues = Vec::new();
        let mut policies = PolicySet::new();
        let mut origins: HashMap<PolicyId, Origin> = HashMap::new();
        for source in &sources {
            if let Err(issue) = check_complexity(source) {
                issues.push(issue);
                continue;
            }
            let parsed = match PolicySet::from_str(&source.text) {
                Ok(p) => p,
                Err(errors) => {
                    for e in errors.iter() {
                        issues.push(PolicyIssue {
                            file: source.name.clone(),
                            line: line_of(&source.text, first_offset(e)),
                            policy_id: None,
                            message: e.to_string(),
                        });
                    }
                    continue;
                }
            };
            if parsed.templates().next().is_some() {
                issues.push(PolicyIssue {
                    file: source.name.clone(),
                    line: 1,
                    policy_id: None,
                    message: "policy templates (?principal, ?resource) are not supported".into(),
                });
                continue;
            }
            let mut in_file: Vec<_> = parsed.policies().collect();
            // Cedar names a file's policies policy0, policy1, ... in source order.
            in_file.sort_by_key(|p| {
                p.id()
                    .to_string()
                    .trim_start_matches("policy")
                    .parse::<usize>()
                    .unwrap_or(usize::MAX)
            });
            for (ordinal, policy) in in_file.into_iter().enumerate() {
                let (id, line) = match policy.annotation("id") {
                    Some(id) if id.trim().is_empty() => {
                        issues.push(PolicyIssue {
                            file: source.name.clone(),
                            line: line_of_text(&source.text, "@id(\"\")"),
                            policy_id: None,
                            message: "@id must not be empty".into(),
                        });
                        continue;
                    }
                    Some(id) => (
                        id.to_owned(),
                        line_of_text(&source.text, &format!("@id(\"{id}\")")),
                    ),
                    None => (format!("{}#{ordinal}", source.name), 1),
                };
                let origin = Origin {
                    file: source.name.clone(),
                    line,
                };
                let policy_id = PolicyId::new(&id);
                if let Some(first) = origins.get(&policy_id) {
                    issues.push(PolicyIssue {
                        file: source.name.clone(),
                        line,
                        policy_id: Some(id.clone()),
                        message: format!("duplicate policy id, first used at {first}"),
                    });
                    continue;
                }
                if let Err(e) = policies.add(policy.new_id(policy_id.clone())) {
                    issues.push(PolicyIssue {
                        file: source.name.clone(),
                        line,
                        policy_id: Some(id.clone()),
                        message: e.to_string(),
                    });
                    continue;
                }
                origins.insert(policy_id, origin);
            }
        }
        if issues.is_empty() {
            let validator = Validator::new(Schema::clone(&schema));
            let result = validator.validate(&policies, ValidationMode::Strict);
            // Warnings Warden treats as errors: a policy that can never apply
            // (typically a guard on an undeclared header or attribute) is a
            // mistake that silently denies, and bidirectional-text characters
            // can make a policy read differently from what it does.
            for w in result.validation_warnings() {
                use cedar_policy::ValidationWarning as W;
                let hint = match w {
                    W::ImpossiblePolicy(_) => {
                        "this policy can never apply: does it test an undeclared header or attribute?"
                    }
                    W::BidiCharsInString(_) | W::BidiCharsInIdentifier(_) => {
                        "bidirectional-text characters are not allowed in policies"
                    }
                    _ => {
                        tracing::warn!(warning = %w, "policy validation warning");
                        continue;
                    }
                };
                let id = w.policy_id();
                let origin = origins.get(id);
                let text = origin
                    .and_then(|o| sources.iter().find(|s| s.name == o.file))
                    .map(|s| s.text.as_str())
                    .unwrap_or_default();
                issues.push(PolicyIssue {
                    file: origin.map(|o| o.file.clone()).unwrap_or_default(),
                    line: line_of(text, first_offset(w)),
                    policy_id: Some(id.to_string()),
                    message: format!("{hint} ({w})"),
                });
            }
            for e in result.validation_errors() {
                let id = e.policy_id();
                let origin = origins.get(id);
                let text = origin
                    .and_then(|o| sources.iter().find(|s| s.name == o.file))
                    .map(|s| s.text.as_str())
                    .unwrap_or_default();
                let help = miette::Diagnostic::help(e)
                    .map(|h| format!(" ({h})"))
                    .unwrap_or_default();
                issues.push(PolicyIssue {
                    file: origin.map(|o| o.file.clone()).unwrap_or_default(),
                    line: line_of(text, first_offset(e)),
                    policy_id: Some(id.to_string()),
                    message: format!("{e}{help}"),
                });
            }
        }
        if !issues.is_empty() {
            return Err(PolicyError::Invalid(issues));
        }
        let version = version_of(schema_text, &sources);
        let index = PolicyIndex::build(&policies);
        let unscoped = super::index::without_scopes(&policies);
        Ok(PolicySnapshot {
            unscoped,
            policies,
            schema,
            version,
            origins,
            declared_headers,
            index,
            slices: Mutex::new(HashMap::new()),
        })
    }
}

/// A parsed schema, reusable across policy sets (parsing one is costly).
#[derive(Debug, Clone)]
pub struct PolicySchema {
    text: String,
    schema: Arc<Schema>,
    declared_headers: Vec<String>,
}

impl PolicySchema {
    pub fn parse(name: &str, text: &str) -> Result<Self, PolicyError> {
        Ok(PolicySchema {
            schema: Arc::new(parse_schema(name, text)?),
            declared_headers: declared_headers(text),
            text: text.to_owned(),
        })
    }
}

fn parse_schema(name: &str, text: &str) -> Result<Schema, PolicyError> {
    Schema::from_cedarschema_str(text)
        .map(|(schema, _warnings)| schema)
        .map_err(|e| PolicyError::Schema {
            file: name.to_owned(),
            message: format!("line {}: {e}", line_of(text, first_offset(&e))),
        })
}

/// The attribute names of the schema's `Headers` type.
fn declared_headers(schema_text: &str) -> Vec<String> {
    let Ok((fragment, _)) = SchemaFragment::from_cedarschema_str(schema_text) else {
        return Vec::new();
    };
    let Ok(json) = fragment.to_json_value() else {
        return Vec::new();
    };
    let mut headers: Vec<String> = json
        .as_object()
        .into_iter()
        .flat_map(|namespaces| namespaces.values())
        .filter_map(|ns| ns.pointer("/commonTypes/Headers/attributes"))
        .filter_map(|attrs| attrs.as_object())
        .flat_map(|attrs| attrs.keys().cloned())
        .collect();
    headers.sort();
    headers
}

fn version_of(schema_text: &str, sources: &[PolicySource]) -> String {
    let mut sorted: Vec<&PolicySource> = sources.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut hash = Sha256::new();
    hash.update(schema_text.as_bytes());
    for s in sorted {
        hash.update([0]);
        hash.update(s.name.as_bytes());
        hash.update([0]);
        hash.update(s.text.as_bytes());
    }
    let digest = hash.finalize();
    let hex = hex::encode(&digest[..8]);
    format!("sha256:{hex}")
}

/// Byte offset of a diagnostic's first label, if it has one.
fn first_offset(diagnostic: &dyn miette::Diagnostic) -> Option<usize> {
    diagnostic.labels()?.next().map(|l| l.offset())
}

fn line_of(text: &str, offset: Option<usize>) -> usize {
    match offset {
        Some(o) => {
            text.as_bytes()[..o.min(text.len())]
                .iter()
                .filter(|b| **b == b'\n')
                .count()
                + 1
        }
        None => 1,
    }
}

fn line_of_text(text: &str, needle: &str) -> usize {
    line_of(text, text.find(needle))
}
