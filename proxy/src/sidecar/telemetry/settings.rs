//! Export settings from the standard `OTEL_*` variables: what cannot be
//! used (endpoint, protocol) is an error, any other mistake a warning and
//! the default.

use std::time::Duration;

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};

use super::context::{self, Sampler};
use super::otlp::{Protocol, Sender};

/// Export settings from the `OTEL_*` variables.
pub(super) struct Settings {
    pub(super) sender: Sender,
    pub(super) sampler: Sampler,
    pub(super) resource: Vec<(String, String)>,
    pub(super) schedule_delay: Duration,
    pub(super) max_queue: usize,
    pub(super) max_batch: usize,
}

/// Logs a telemetry setting that does not parse; the default applies. As
/// the OpenTelemetry configuration rules ask, a mistake in these variables
/// (often set for a whole pod) never stops the data plane; only an endpoint
/// or protocol that cannot be used does.
fn warn_default(problem: &str) {
    tracing::warn!("{problem}; using the default");
}

/// Whether the environment asks for OTLP trace export.
/// `OTEL_TRACES_EXPORTER` is a list: tracing is on when it names `otlp` (or
/// is unset); other exporters are not available and are ignored.
pub(super) fn enabled(env: &dyn Fn(&str) -> Option<String>) -> bool {
    let set = |k: &str| env(k).is_some_and(|v| !v.trim().is_empty());
    if env("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
        return false;
    }
    if let Some(list) = env("OTEL_TRACES_EXPORTER").filter(|v| !v.trim().is_empty()) {
        let names: Vec<&str> = list.split(',').map(str::trim).collect();
        let others: Vec<&&str> = names
            .iter()
            .filter(|n| !matches!(**n, "otlp" | "none" | ""))
            .collect();
        if !others.is_empty() {
            tracing::warn!(
                "OTEL_TRACES_EXPORTER names {others:?}: only otlp is available, the rest is ignored"
            );
        }
        if !names.contains(&"otlp") {
            return false;
        }
    }
    set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
}

/// The `_TRACES_` form of a variable if set and not empty, else the general
/// one (an empty variable counts as unset).
fn traces_var(env: &dyn Fn(&str) -> Option<String>, general: &str) -> Option<(String, String)> {
    let specific = general.replacen("OTEL_EXPORTER_OTLP_", "OTEL_EXPORTER_OTLP_TRACES_", 1);
    let value = |name: &str| {
        env(name)
            .filter(|v| !v.trim().is_empty())
            .map(|v| (name.to_owned(), v))
    };
    value(&specific).or_else(|| value(general))
}

/// A whole number of milliseconds (or items), the default when unset or
/// unparsable.
fn number(name: &str, value: Option<&str>, default: u64) -> u64 {
    match value.map(str::trim).filter(|v| !v.is_empty()) {
        None => default,
        Some(v) => v.parse().unwrap_or_else(|_| {
            warn_default(&format!("{name}={v:?} is not a whole number"));
            default
        }),
    }
}

/// `%XX` escapes of a W3C-baggage-style value (`OTEL_EXPORTER_OTLP_HEADERS`,
/// `OTEL_RESOURCE_ATTRIBUTES`).
/// Strict: every `%` must start an escape of two hex digits, and the result
/// must be UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let stray = bytes.iter().enumerate().any(|(i, &b)| {
        b == b'%'
            && !bytes
                .get(i + 1..i + 3)
                .is_some_and(|pair| pair.iter().all(u8::is_ascii_hexdigit))
    });
    if stray {
        return None;
    }
    percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .ok()
        .map(std::borrow::Cow::into_owned)
}

/// `k=v,k2=v2` with percent-encoded values; an entry that does not parse
/// is left out, with a warning.
fn key_values(name: &str, text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for item in text
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
    {
        let parsed = item
            .split_once('=')
            .filter(|(k, _)| !k.trim().is_empty())
            .and_then(|(k, v)| Some((k.trim().to_owned(), percent_decode(v.trim())?)));
        match parsed {
            Some(kv) => out.push(kv),
            None => tracing::warn!("{name}: {item:?} is not key=value (percent-encoded); left out"),
        }
    }
    out
}

impl Settings {
    pub(super) fn from_env(
        env: &dyn Fn(&str) -> Option<String>,
        default_service: &str,
    ) -> Result<Settings, String> {
        let protocol = match traces_var(env, "OTEL_EXPORTER_OTLP_PROTOCOL") {
            None => Protocol::Grpc,
            Some((name, value)) => match value.trim() {
                "grpc" => Protocol::Grpc,
                "http/protobuf" => Protocol::HttpProtobuf,
                other => {
                    return Err(format!(
                        "{name}={other:?} is not supported: use grpc or http/protobuf"
                    ));
                }
            },
        };
        // The traces endpoint is used as given; the general one gets
        // `/v1/traces` appended for HTTP (the OTLP exporter rules).
        let endpoint =
            match env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").filter(|v| !v.trim().is_empty()) {
                Some(e) => e.trim().to_owned(),
                None => {
                    let base = env("OTEL_EXPORTER_OTLP_ENDPOINT").unwrap_or_default();
                    let base = base.trim().trim_end_matches('/');
                    match protocol {
                        Protocol::Grpc => base.to_owned(),
                        Protocol::HttpProtobuf => format!("{base}/v1/traces"),
                    }
                }
            };
        let mut headers = HeaderMap::new();
        if let Some((var, text)) = traces_var(env, "OTEL_EXPORTER_OTLP_HEADERS") {
            for (k, v) in key_values(&var, &text) {
                match (
                    HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()),
                    HeaderValue::from_str(&v),
                ) {
                    (Ok(name), Ok(mut value)) => {
                        // Credentials, often: never HPACK-indexed.
                        value.set_sensitive(true);
                        headers.append(name, value);
                    }
                    _ => tracing::warn!("{var}: {k:?} is not a usable header; left out"),
                }
            }
        }
        let timeout = match traces_var(env, "OTEL_EXPORTER_OTLP_TIMEOUT") {
            Some((name, value)) => number(&name, Some(&value), 10_000),
            None => 10_000,
        };
        let sender = Sender::new(
            &endpoint,
            protocol,
            headers,
            Duration::from_millis(timeout.max(1)),
        )?;
        let name = env("OTEL_TRACES_SAMPLER");
        let arg = env("OTEL_TRACES_SAMPLER_ARG");
        let sampler = Sampler::from_env(name.as_deref(), arg.as_deref()).unwrap_or_else(|e| {
            warn_default(&e);
            // A bad ratio: the named sampler at ratio 1; a bad name: the default.
            Sampler::from_env(name.as_deref(), None)
                .unwrap_or(Sampler::ParentBased(context::Root::AlwaysOn))
        });
        // Resource: the SDK description, then OTEL_RESOURCE_ATTRIBUTES, then
        // the service name (OTEL_SERVICE_NAME over service.name over ours).
        let mut resource = vec![
            ("telemetry.sdk.name".to_owned(), "warden".to_owned()),
            ("telemetry.sdk.language".to_owned(), "rust".to_owned()),
            (
                "telemetry.sdk.version".to_owned(),
                env!("CARGO_PKG_VERSION").to_owned(),
            ),
        ];
        if let Some(text) = env("OTEL_RESOURCE_ATTRIBUTES") {
            for (k, v) in key_values("OTEL_RESOURCE_ATTRIBUTES", &text) {
                resource.retain(|(key, _)| *key != k);
                resource.push((k, v));
            }
        }
        let service = env("OTEL_SERVICE_NAME")
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty());
        match service {
            Some(name) => {
                resource.retain(|(key, _)| key != "service.name");
                resource.push(("service.name".to_owned(), name));
            }
            None if !resource.iter().any(|(k, _)| k == "service.name") => {
                resource.push(("service.name".to_owned(), default_service.to_owned()));
            }
            None => {}
        }
        let bsp = |name: &str, default: u64| number(name, env(name).as_deref(), default);
        let max_queue = usize::try_from(bsp("OTEL_BSP_MAX_QUEUE_SIZE", 2048))
            .unwrap_or(usize::MAX)
            .max(1);
        let max_batch = usize::try_from(bsp("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512))
            .unwrap_or(usize::MAX)
            .clamp(1, max_queue);
        Ok(Settings {
            sender,
            sampler,
            resource,
            schedule_delay: Duration::from_millis(bsp("OTEL_BSP_SCHEDULE_DELAY", 5000).max(1)),
            max_queue,
            max_batch,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k: &str| {
            vars.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        }
    }

    #[test]
    fn enabled_only_with_an_endpoint_and_not_disabled() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317");
        assert!(!enabled(&env_of(&[])));
        assert!(enabled(&env_of(&[endpoint])));
        assert!(!enabled(&env_of(&[
            endpoint,
            ("OTEL_SDK_DISABLED", "true")
        ])));
        assert!(!enabled(&env_of(&[
            endpoint,
            ("OTEL_TRACES_EXPORTER", "none")
        ])));
        assert!(!enabled(&env_of(&[
            endpoint,
            ("OTEL_TRACES_EXPORTER", "zipkin")
        ])));
        assert!(enabled(&env_of(&[
            endpoint,
            ("OTEL_TRACES_EXPORTER", "otlp, console")
        ])));
    }

    #[tokio::test]
    async fn settings_from_the_standard_variables() {
        let s = Settings::from_env(
            &env_of(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
                (
                    "OTEL_RESOURCE_ATTRIBUTES",
                    "service.name=from-attrs,deployment.environment=prod%20eu",
                ),
                ("OTEL_BSP_MAX_QUEUE_SIZE", "100"),
                ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "500"),
            ]),
            "warden-orders",
        )
        .expect("settings");
        assert_eq!(
            s.sender.uri().to_string(),
            "http://collector:4318/v1/traces"
        );
        assert!(
            s.resource
                .contains(&("service.name".to_owned(), "from-attrs".to_owned()))
        );
        assert!(
            s.resource
                .contains(&("deployment.environment".to_owned(), "prod eu".to_owned()))
        );
        assert_eq!(
            (s.max_queue, s.max_batch),
            (100, 100),
            "batch capped by the queue"
        );
        let named = Settings::from_env(
            &env_of(&[
                (
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                    "http://127.0.0.1:4317",
                ),
                ("OTEL_SERVICE_NAME", "orders"),
                ("OTEL_RESOURCE_ATTRIBUTES", "service.name=ignored"),
            ]),
            "warden-orders",
        )
        .expect("settings");
        assert_eq!(
            named.sender.uri().to_string(),
            "http://127.0.0.1:4317/opentelemetry.proto.collector.trace.v1.TraceService/Export"
        );
        let names: Vec<_> = named
            .resource
            .iter()
            .filter(|(k, _)| k == "service.name")
            .collect();
        assert_eq!(names, [&("service.name".to_owned(), "orders".to_owned())]);
        // What cannot be used stops the sidecar.
        for bad in [
            vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4317")],
            vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317")],
            vec![
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ],
        ] {
            let err = Settings::from_env(&env_of(&bad), "w").err();
            assert!(err.is_some(), "{bad:?} accepted");
        }
        // Mistakes elsewhere fall back to the defaults.
        let lenient = Settings::from_env(
            &env_of(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", " "),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
                ("OTEL_EXPORTER_OTLP_HEADERS", "novalue,x-token=a%20b,bad%=1"),
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "10s"),
                ("OTEL_TRACES_SAMPLER", "traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "2"),
                ("OTEL_BSP_MAX_QUEUE_SIZE", "lots"),
                ("OTEL_RESOURCE_ATTRIBUTES", "=x,team=payments"),
            ]),
            "w",
        )
        .expect("lenient settings");
        assert_eq!(
            lenient.sender.uri().to_string(),
            "http://c:4318/v1/traces",
            "an empty _TRACES_ variable falls back to the general one"
        );
        assert_eq!(
            lenient.sampler,
            Sampler::from_env(Some("traceidratio"), Some("1")).expect("ratio 1")
        );
        assert_eq!(lenient.max_queue, 2048);
        assert!(
            lenient
                .resource
                .contains(&("team".to_owned(), "payments".to_owned()))
        );
        let unknown = Settings::from_env(
            &env_of(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
                ("OTEL_TRACES_SAMPLER", "jaeger_remote"),
            ]),
            "w",
        )
        .expect("settings");
        assert_eq!(
            unknown.sampler,
            Sampler::ParentBased(context::Root::AlwaysOn)
        );
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b%2Cc").as_deref(), Some("a b,c"));
        assert_eq!(percent_decode("bad%2"), None);
        assert_eq!(percent_decode("bad%zz"), None);
        assert_eq!(percent_decode("bad%+f"), None);
    }
}
