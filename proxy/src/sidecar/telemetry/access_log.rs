//! The access log: one JSON line per request on stdout.

/// One access-log line.
pub struct Access<'a> {
    pub direction: &'static str,
    pub request_id: &'a str,
    pub trace_id: Option<String>,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub duration: std::time::Duration,
    pub peer: &'a str,
    pub decision: &'static str,
}

/// Writes the line to stdout, as one JSON object.
pub fn access_log(entry: &Access<'_>) {
    use std::io::Write;
    let line = serde_json::json!({
        "time": crate::identity::Timestamp::now().to_string(),
        "direction": entry.direction,
        "request_id": entry.request_id,
        "trace_id": entry.trace_id,
        "method": entry.method,
        "path": entry.path,
        "status": entry.status,
        "duration_ms": entry.duration.as_secs_f64() * 1000.0,
        "peer": entry.peer,
        "decision": entry.decision,
    });
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
}
