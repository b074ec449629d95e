//! Kubernetes manifests in and out: YAML (several documents, `---`) or
//! JSON, `List`s, and the pod template inside each workload kind.

use serde_json::Value;

use super::{InjectOptions, Outcome, Refused, Skip};

/// The kinds whose pods Warden injects, and where their pod template is.
const WORKLOADS: &[(&str, &[&str])] = &[
    ("Pod", &[]),
    ("Deployment", &["spec", "template"]),
    ("StatefulSet", &["spec", "template"]),
    ("DaemonSet", &["spec", "template"]),
    ("ReplicaSet", &["spec", "template"]),
    ("Job", &["spec", "template"]),
    ("CronJob", &["spec", "jobTemplate", "spec", "template"]),
];

/// The input's format, kept for the output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Yaml,
    Json,
}

/// A manifest that cannot be read as Kubernetes objects.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("not YAML or JSON: {0}")]
    Syntax(String),
    #[error("document {index}: not a Kubernetes object ({reason})")]
    NotKubernetes { index: usize, reason: String },
    #[error("no Kubernetes object in the input")]
    Empty,
}

/// The documents of a manifest, as JSON values.
pub fn parse(text: &str) -> Result<(Format, Vec<Value>), ManifestError> {
    let trimmed = text.trim_start_matches('\u{feff}').trim_start();
    let (format, documents) = if trimmed.starts_with('{') || trimmed.starts_with('[') {
        let mut documents = Vec::new();
        for value in serde_json::Deserializer::from_str(trimmed).into_iter::<Value>() {
            documents.push(value.map_err(|e| ManifestError::Syntax(e.to_string()))?);
        }
        (Format::Json, documents)
    } else {
        // `---` at the end, or a document of comments only: nothing.
        let documents = super::yaml_in::documents(text)
            .map_err(ManifestError::Syntax)?
            .into_iter()
            .filter(|d| !d.is_null())
            .collect();
        (Format::Yaml, documents)
    };
    if documents.is_empty() {
        return Err(ManifestError::Empty);
    }
    for (index, document) in documents.iter().enumerate() {
        check_object(document).map_err(|reason| ManifestError::NotKubernetes {
            index: index + 1,
            reason,
        })?;
    }
    Ok((format, documents))
}

fn check_object(value: &Value) -> Result<(), String> {
    let Some(object) = value.as_object() else {
        return Err("not a map".into());
    };
    for key in ["apiVersion", "kind"] {
        match object.get(key) {
            Some(Value::String(s)) if !s.is_empty() => {}
            _ => return Err(format!("no {key}")),
        }
    }
    if object.get("kind").and_then(Value::as_str) == Some("List") {
        let items = object
            .get("items")
            .and_then(Value::as_array)
            .ok_or("a List without items")?;
        for item in items {
            check_object(item)?;
        }
    }
    Ok(())
}

/// The documents written back in `format`.
pub fn render(format: Format, documents: &[Value]) -> Result<String, String> {
    match format {
        Format::Json => {
            let mut out = String::new();
            for document in documents {
                out.push_str(&serde_json::to_string_pretty(document).map_err(|e| e.to_string())?);
                out.push('\n');
            }
            Ok(out)
        }
        Format::Yaml => {
            let mut out = String::new();
            for (i, document) in documents.iter().enumerate() {
                if i > 0 {
                    out.push_str("---\n");
                }
                out.push_str(&super::yaml_out::to_string(document));
            }
            Ok(out)
        }
    }
}

/// What was done to one object: `kind/name` and the outcome.
#[derive(Debug)]
pub struct Report {
    pub object: String,
    pub result: Result<Outcome, Refused>,
}

/// Injects (or with `uninject`, takes out) every pod template in the
/// documents, in place. An object that is refused is left as it was.
pub fn transform(documents: &mut [Value], options: &InjectOptions, uninject: bool) -> Vec<Report> {
    let mut reports = Vec::new();
    for document in documents.iter_mut() {
        visit(document, options, uninject, &mut reports);
    }
    reports
}

fn object_name(value: &Value) -> String {
    let kind = value.get("kind").and_then(Value::as_str).unwrap_or("?");
    let meta = value.get("metadata");
    let name = meta
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .or_else(|| {
            meta.and_then(|m| m.get("generateName"))
                .and_then(Value::as_str)
        })
        .unwrap_or("(no name)");
    format!("{kind}/{name}")
}

fn visit(value: &mut Value, options: &InjectOptions, uninject: bool, reports: &mut Vec<Report>) {
    let kind = value
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if kind == "List" {
        if let Some(items) = value.get_mut("items").and_then(Value::as_array_mut) {
            for item in items {
                visit(item, options, uninject, reports);
            }
        }
        return;
    }
    let object = object_name(value);
    let Some((_, path)) = WORKLOADS.iter().find(|(k, _)| *k == kind) else {
        reports.push(Report {
            object,
            result: Err(Refused(format!(
                "kind {kind} has no pod template (Warden injects Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet, Job and CronJob); left unchanged"
            ))),
        });
        return;
    };
    let mut template = &mut *value;
    for key in *path {
        match template.get_mut(*key) {
            Some(next) => template = next,
            None => {
                reports.push(Report {
                    object,
                    result: Err(Refused(format!("no {} (the pod template)", path.join(".")))),
                });
                return;
            }
        }
    }
    let Some(template) = template.as_object_mut() else {
        reports.push(Report {
            object,
            result: Err(Refused("the pod template is not a map".into())),
        });
        return;
    };
    let mut meta = template.remove("metadata").unwrap_or(Value::Null);
    let mut spec = template.remove("spec").unwrap_or(Value::Null);
    let result = if uninject {
        super::uninject(&mut meta, &mut spec)
    } else {
        super::inject(&mut meta, &mut spec, options)
    };
    // Injection made the template's metadata if it had none; taking
    // Warden out leaves none again.
    let emptied = uninject && meta.as_object().is_some_and(serde_json::Map::is_empty);
    if !meta.is_null() && !emptied {
        template.insert("metadata".into(), meta);
    }
    if !spec.is_null() {
        template.insert("spec".into(), spec);
    }
    reports.push(Report { object, result });
}

/// Whether a report counts as a failure for the exit code: a refusal of a
/// workload (not a kind without pods, nor a pod skipped on purpose).
pub fn is_failure(report: &Report) -> bool {
    matches!(&report.result, Err(Refused(m)) if !m.starts_with("kind "))
}

/// One line for stderr.
pub fn describe(report: &Report, uninject: bool) -> String {
    match &report.result {
        Ok(Outcome::Changed) if uninject => format!("{}: uninjected", report.object),
        Ok(Outcome::Changed) => format!("{}: injected", report.object),
        Ok(Outcome::Skipped(Skip::AlreadyInjected)) => {
            format!("{}: already injected, unchanged", report.object)
        }
        Ok(Outcome::Skipped(skip)) => format!("{}: {skip}, unchanged", report.object),
        Err(Refused(reason)) => format!("{}: {reason}", report.object),
    }
}
