//! Logging: the log lines and the audit lines, both on stderr.

use crate::args::{AuditLevel, LogFormat};

/// Audit records (`warden::audit`) go to their own sink, which neither
/// `--log` nor the admin API's log filter can turn off.
const AUDIT_TARGET: &str = "warden::audit";

/// Installs the log subscriber, to stderr: the log lines, with a filter
/// that can be replaced while running (the sidecar's admin API does), and
/// the audit lines, which that filter does not govern.
pub(crate) fn init_logging(
    filter: &str,
    format: LogFormat,
    audit: AuditLevel,
) -> warden_proxy::sidecar::LogControl {
    use tracing_subscriber::Layer;
    use tracing_subscriber::filter::filter_fn;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let initial = tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|_| "warn".into());
    let (log_filter, handle) = tracing_subscriber::reload::Layer::new(initial);
    let sink = || match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(false)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let logs = sink()
        .with_filter(filter_fn(|meta| meta.target() != AUDIT_TARGET))
        .with_filter(log_filter)
        .boxed();
    // Denies are audited at warn, allowed requests at debug.
    let audit_level = match audit {
        AuditLevel::Deny => tracing::Level::INFO,
        AuditLevel::All => tracing::Level::DEBUG,
    };
    let audit = sink()
        .with_filter(
            tracing_subscriber::filter::Targets::new().with_target(AUDIT_TARGET, audit_level),
        )
        .boxed();
    let _ = tracing_subscriber::registry()
        .with(vec![logs, audit])
        .try_init();
    let current = std::sync::Arc::new(std::sync::Mutex::new(filter.to_owned()));
    std::sync::Arc::new(move |new: Option<&str>| {
        let mut current = current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(new) = new {
            let parsed = tracing_subscriber::EnvFilter::try_new(new)
                .map_err(|e| format!("{new:?} is not a log filter: {e}"))?;
            handle.reload(parsed).map_err(|e| e.to_string())?;
            *current = new.to_owned();
        }
        Ok(current.clone())
    })
}
