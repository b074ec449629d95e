//! The layers of a configuration: the file's table, then
//! `WARDEN_<SECTION>_<KEY>` variables, then `--set section.key=value`
//! flags, each overriding the one before, merged into one TOML table.

use std::path::Path;

use super::{ConfigError, SECTIONS};

/// The file's table (`(path, text)`; none without a file) with the
/// environment's and the flags' values set on top.
pub(super) fn layered(
    file: Option<(&Path, &str)>,
    env: impl IntoIterator<Item = (String, String)>,
    sets: &[String],
) -> Result<toml::Table, ConfigError> {
    let mut table = match file {
        Some((path, text)) => {
            toml::from_str::<toml::Table>(text).map_err(|e| ConfigError::Syntax {
                path: path.to_owned(),
                message: e.to_string(),
            })?
        }
        None => toml::Table::new(),
    };
    let mut env: Vec<(String, String)> = env
        .into_iter()
        .filter(|(name, _)| name.starts_with("WARDEN_"))
        .collect();
    env.sort();
    for (name, value) in env {
        let rest = name["WARDEN_".len()..].to_ascii_lowercase();
        // The longest section the name starts with: `workload_api` holds a `_`.
        // WARDEN_LOG, WARDEN_CONFIG and the like belong to the CLI.
        let Some((section, field)) = SECTIONS
            .iter()
            .filter_map(|&s| Some((s, rest.strip_prefix(s)?.strip_prefix('_')?)))
            .max_by_key(|(s, _)| s.len())
        else {
            continue;
        };
        // The kubelet's variables for each Service of the pod's namespace
        // (a Service named `warden-control` gives WARDEN_CONTROL_SERVICE_HOST
        // and WARDEN_CONTROL_PORT_7443_TCP): never settings.
        if is_service_link(section, field) {
            continue;
        }
        set_key(
            &mut table,
            &format!("{section}.{field}"),
            override_value(&value),
            &name,
        )?;
    }
    for set in sets {
        let (key, value) = set.split_once('=').ok_or_else(|| ConfigError::Override {
            origin: format!("--set {set}"),
            message: "expected section.key=value".into(),
        })?;
        set_key(
            &mut table,
            key.trim(),
            override_value(value.trim()),
            &format!("--set {set}"),
        )?;
    }
    Ok(table)
}

/// Whether a variable's section and key (what follows `WARDEN_<SECTION>_`, lowercase)
/// has the shape of a Kubernetes service link: `<svc>_SERVICE_HOST`,
/// `<svc>_SERVICE_PORT[_<name>]`, `<svc>_PORT` or
/// `<svc>_PORT_<port>_<proto>[_PROTO|_PORT|_ADDR]`. No setting is named so.
fn is_service_link(section: &str, field: &str) -> bool {
    // A Service named `warden`: WARDEN_SERVICE_HOST, WARDEN_SERVICE_PORT[_<name>].
    if section == "service" && (field == "host" || field.starts_with("port")) {
        return true;
    }
    if field == "port" || field.ends_with("_port") || field.ends_with("service_host") {
        return true;
    }
    if field.contains("service_port") {
        return true;
    }
    // `port_<digits>_<tcp|udp|sctp>...`, at the start or after a `_`.
    let parts: Vec<&str> = field.split('_').collect();
    parts.windows(3).any(|w| {
        w[0] == "port"
            && !w[1].is_empty()
            && w[1].bytes().all(|b| b.is_ascii_digit())
            && matches!(w[2], "tcp" | "udp" | "sctp")
    })
}

/// Reads a value the way TOML would, falling back to a plain string, so
/// `WARDEN_LIMITS_MAX_CONNECTIONS=100` is a number and
/// `WARDEN_INBOUND_LISTEN=0.0.0.0:15006` a string.
fn override_value(text: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {text}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(text.to_owned()))
}

fn set_key(
    table: &mut toml::Table,
    key: &str,
    value: toml::Value,
    origin: &str,
) -> Result<(), ConfigError> {
    let (section, field) = key.split_once('.').ok_or_else(|| ConfigError::Override {
        origin: origin.into(),
        message: format!("`{key}` is not of the form section.key"),
    })?;
    if !SECTIONS.contains(&section) {
        return Err(ConfigError::Override {
            origin: origin.into(),
            message: format!(
                "unknown section `{section}` (sections: {})",
                SECTIONS.join(", ")
            ),
        });
    }
    let entry = table
        .entry(section)
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    let toml::Value::Table(section_table) = entry else {
        return Err(ConfigError::Override {
            origin: origin.into(),
            message: format!("`{section}` is not a table in the config file"),
        });
    };
    section_table.insert(field.to_owned(), value);
    Ok(())
}
