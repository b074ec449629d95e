//! The usage API: what sidecars report (`POST /v1/usage`) and what the
//! admin views built on it answer (least privilege from observed use).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::is_unsafe_char;

/// The largest usage report body (below what the control plane reads and
/// drops of an oversized body before its 413, so the answer arrives).
pub const MAX_USAGE_BODY: usize = 3 << 20;
/// The most entries one usage report may carry.
pub const MAX_USAGE_ENTRIES: usize = 4096;
/// The largest count of one usage entry (one report covers one interval).
pub const MAX_USAGE_COUNT: u64 = 1 << 32;
/// The longest caller in a usage entry (a SPIFFE ID is at most 2048 bytes).
pub const MAX_USAGE_CALLER: usize = 2048;
/// The longest route template in a usage entry.
pub const MAX_USAGE_ROUTE: usize = 512;
/// The most deciding policies of one usage entry, and their longest id.
pub const MAX_USAGE_POLICIES: usize = 64;
pub const MAX_USAGE_POLICY_ID: usize = 256;
/// How far in the future a reported time may be (clock skew).
pub const MAX_USAGE_SKEW: i64 = 300;
/// The actions a usage entry may name: the schema's.
pub const USAGE_ACTIONS: [&str; 10] = [
    "GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE", "TRACE", "OTHER", "connect",
];

fn check_usage_text(what: &str, value: &str, max: usize) -> Result<(), String> {
    if value.len() > max {
        return Err(format!("{what} is {} bytes; at most {max}", value.len()));
    }
    if let Some(c) = value.chars().find(|c| is_unsafe_char(*c)) {
        return Err(format!(
            "{what} holds the control or formatting character U+{:04X}",
            u32::from(c)
        ));
    }
    Ok(())
}

fn check_usage_times(count: u64, first: i64, last: i64, now: i64) -> Result<(), String> {
    if count == 0 || count > MAX_USAGE_COUNT {
        return Err(format!("count must be 1 to {MAX_USAGE_COUNT}"));
    }
    if first < 0 || first > last {
        return Err(format!(
            "first_seen {first} must be at or before last_seen {last}"
        ));
    }
    if last > now.saturating_add(MAX_USAGE_SKEW) {
        return Err(format!("last_seen {last} is in the future (now {now})"));
    }
    Ok(())
}

impl UsageRecord {
    /// What the control plane takes (the sidecar counts an entry that
    /// fails this as overflow rather than have its report refused). The
    /// caller's form is checked by the control plane.
    pub fn check(&self, now: i64) -> Result<(), String> {
        check_usage_text("caller", &self.caller, MAX_USAGE_CALLER)?;
        if !USAGE_ACTIONS.contains(&self.action.as_str()) {
            return Err(format!(
                "action {:?} is not one of the schema's",
                self.action.escape_debug().to_string()
            ));
        }
        if !self.route.starts_with('/') {
            return Err("route must start with /".into());
        }
        check_usage_text("route", &self.route, MAX_USAGE_ROUTE)?;
        if self.decision != "allow" && self.decision != "deny" {
            return Err("decision must be allow or deny".into());
        }
        if self.policies.len() > MAX_USAGE_POLICIES {
            return Err(format!("at most {MAX_USAGE_POLICIES} policies"));
        }
        for p in &self.policies {
            if p.is_empty() || p.contains(',') {
                return Err("a policy id is not empty and holds no ,".into());
            }
            check_usage_text("a policy id", p, MAX_USAGE_POLICY_ID)?;
        }
        check_usage_times(self.count, self.first_seen, self.last_seen, now)
    }
}

impl SourceRecord {
    /// As [`UsageRecord::check`]: the range an IPv4 /24 or IPv6 /64.
    pub fn check(&self, now: i64) -> Result<(), String> {
        check_usage_text("caller", &self.caller, MAX_USAGE_CALLER)?;
        let network = match self.range.split_once('/') {
            Some((ip, "24")) => ip
                .parse::<std::net::Ipv4Addr>()
                .is_ok_and(|a| a.octets()[3] == 0),
            Some((ip, "64")) => ip
                .parse::<std::net::Ipv6Addr>()
                .is_ok_and(|a| a.segments()[4..].iter().all(|s| *s == 0)),
            _ => false,
        };
        if !network {
            return Err("range must be an IPv4 /24 or IPv6 /64 network".into());
        }
        check_usage_times(self.count, self.first_seen, self.last_seen, now)
    }
}
/// The most source ranges one usage report may carry.
pub const MAX_USAGE_SOURCES: usize = 4096;

/// A sidecar's usage since its last report: every decision its inbound
/// side made, aggregated.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UsageReport {
    /// The reporter's own SPIFFE ID: the callee of every entry.
    pub callee: String,
    /// The service name the reporter decides for (`service.name`).
    pub service: String,
    pub entries: Vec<UsageRecord>,
    /// Where each caller called from.
    #[serde(default)]
    pub sources: Vec<SourceRecord>,
    /// Decisions counted but not kept as an entry (caps reached).
    #[serde(default)]
    pub overflow: u64,
}

/// One aggregate: a caller's decisions on one route.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UsageRecord {
    /// The caller's SPIFFE ID, or `unauthenticated:<kind>`.
    pub caller: String,
    /// The Cedar action (`GET`, `POST`, `connect`...).
    pub action: String,
    /// The route template (`/orders/{id}`; `/tcp/<port>` for a connection).
    pub route: String,
    /// `allow` or `deny`.
    pub decision: String,
    /// The deciding policy ids, sorted.
    #[serde(default)]
    pub policies: Vec<String>,
    pub count: u64,
    /// Unix seconds.
    pub first_seen: i64,
    pub last_seen: i64,
}

/// A caller seen from a source range (an IPv4 /24 or IPv6 /64).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SourceRecord {
    pub caller: String,
    pub range: String,
    pub count: u64,
    pub first_seen: i64,
    pub last_seen: i64,
}

/// The header that numbers a usage report: `<instance>/<seq>`, the
/// sidecar process's random instance (32 lowercase hex digits) and the
/// report's number in it (from 1). A report the sidecar got no answer for
/// is sent again unchanged, with the same number; the control plane stores
/// a number at most once per (callee, instance). A header, not a body
/// field, so that a control plane that predates it ignores it (see
/// [`super::VERSION_HEADER`]).
pub const USAGE_REPORT_HEADER: &str = "warden-usage-report";

/// The number of one usage report ([`USAGE_REPORT_HEADER`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportMark {
    /// The sidecar process: 32 lowercase hex digits, random per start.
    pub instance: String,
    /// The report's number in that process, from 1.
    pub seq: u64,
}

impl ReportMark {
    /// The header's value.
    pub fn header_value(&self) -> String {
        format!("{}/{}", self.instance, self.seq)
    }

    /// Reads a header value, refusing anything but the exact form.
    pub fn parse(text: &str) -> Result<ReportMark, String> {
        let bad = || {
            format!(
                "{USAGE_REPORT_HEADER} must be <32 lowercase hex digits>/<report number from 1 to {}>",
                i64::MAX
            )
        };
        let (instance, seq) = text.split_once('/').ok_or_else(bad)?;
        let hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
        if instance.len() != 32 || !instance.bytes().all(hex) {
            return Err(bad());
        }
        // Digits only (`parse` would take a `+`), no leading zero (so not
        // 0 either), at most i64::MAX (the database's integer).
        if seq.is_empty() || seq.starts_with('0') || !seq.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let seq: u64 = seq.parse().map_err(|_| bad())?;
        if i64::try_from(seq).is_err() {
            return Err(bad());
        }
        Ok(ReportMark {
            instance: instance.to_owned(),
            seq,
        })
    }
}

/// The answer to a usage report.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UsageAccepted {
    /// A report already stored under its number ([`USAGE_REPORT_HEADER`]):
    /// nothing of it was added again.
    #[serde(default)]
    pub duplicate: bool,
    pub entries: usize,
    /// Edges seen for the first time in this report.
    #[serde(default)]
    pub new_edges: usize,
    /// Requests not stored: the callee had added its most rows for the day.
    #[serde(default)]
    pub dropped: u64,
}

/// Stored usage, summed over a window.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct UsageRows {
    /// Unix seconds: the window's start.
    pub since: i64,
    pub rows: Vec<UsageRow>,
}

/// One (callee, caller, action, route, decision, policies) summed over the
/// window.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UsageRow {
    pub callee: String,
    pub service: String,
    pub caller: String,
    pub action: String,
    pub route: String,
    pub decision: String,
    pub policies: Vec<String>,
    pub count: u64,
    pub first_seen: i64,
    pub last_seen: i64,
}

/// Edges first seen in a window.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct EdgeList {
    pub edges: Vec<Edge>,
}

/// A caller calling a callee (`kind` `call`), or calling it from a source
/// range (`kind` `source`, the range in `value`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Edge {
    pub caller: String,
    pub callee: String,
    pub service: String,
    pub kind: String,
    #[serde(default)]
    pub value: String,
    pub first_seen: i64,
    pub last_seen: i64,
}

/// A candidate policy set to replay ([`ADMIN_ACCESS_REPLAY`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// File name -> text, as [`PolicyPush`].
    pub files: BTreeMap<String, String>,
    /// The window, seconds back from now.
    pub since_secs: u64,
}

/// Every recorded (caller, action, service, route) whose decision the
/// candidate changes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct ReplayReport {
    pub since: i64,
    /// Recorded aggregates replayed.
    pub replayed: usize,
    pub changes: Vec<ReplayChange>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReplayChange {
    pub caller: String,
    pub action: String,
    pub service: String,
    pub callee: String,
    pub route: String,
    /// As recorded.
    pub was: String,
    /// Under the candidate.
    pub now: String,
    /// The candidate's deciding policies.
    pub policies: Vec<String>,
    pub count: u64,
}

/// The proposed least-privilege policy set.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct PolicyProposal {
    pub since: i64,
    /// File name -> text; empty when the window holds no allowed traffic.
    pub files: BTreeMap<String, String>,
    pub permits: usize,
    pub forbids_kept: usize,
    /// Allowed requests the permits come from.
    pub requests: u64,
}

/// Per identity, what the policies allow against what it used.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct AccessReport {
    pub since: i64,
    pub policy_version: String,
    pub identities: Vec<IdentityAccess>,
    /// Policies that decided nothing in the window.
    pub idle_policies: Vec<String>,
    /// Permits whose scope covers many identities of which few used them.
    pub broad_policies: Vec<BroadPolicy>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct IdentityAccess {
    pub identity: String,
    /// (service, action, route) the engine allows it.
    pub granted: Vec<Grant>,
    /// The allowed ones it used in the window.
    pub used: usize,
    /// Denied attempts, requests.
    pub denied: u64,
    /// Allowed requests.
    pub requests: u64,
    pub last_seen_as_caller: Option<i64>,
    pub summary: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Grant {
    pub service: String,
    pub callee: String,
    pub action: String,
    pub route: String,
    /// Allowed requests in the window (0: granted, never used).
    pub count: u64,
    pub policies: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BroadPolicy {
    pub policy: String,
    /// Identities the policy allows something.
    pub covers: usize,
    /// Of those, the ones that used it.
    pub used_by: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_marks_round_trip_and_refuse_every_other_form() {
        let mark = ReportMark {
            instance: "0123456789abcdef0123456789abcdef".into(),
            seq: 7,
        };
        assert_eq!(ReportMark::parse(&mark.header_value()), Ok(mark));
        let max = format!("{}/{}", "f".repeat(32), i64::MAX);
        assert_eq!(ReportMark::parse(&max).map(|m| m.seq), Ok(i64::MAX as u64));
        for bad in [
            "",
            "/",
            "0123456789abcdef0123456789abcdef",
            "0123456789abcdef0123456789abcdef/",
            "0123456789abcdef0123456789abcdef/0",
            "0123456789abcdef0123456789abcdef/01",
            "0123456789abcdef0123456789abcdef/-1",
            "0123456789abcdef0123456789abcdef/+1",
            "0123456789abcdef0123456789abcdef/1/2",
            "0123456789abcdef0123456789abcdef/ 1",
            "0123456789abcdef0123456789abcdef/9223372036854775808",
            "0123456789ABCDEF0123456789abcdef/1",
            "0123456789abcdef0123456789abcde/1",
            "0123456789abcdef0123456789abcdef0/1",
            "0123456789abcdeg0123456789abcdef/1",
        ] {
            assert!(ReportMark::parse(bad).is_err(), "{bad:?} was taken");
        }
    }
}
