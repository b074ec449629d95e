//! Sends the usage aggregates to the control plane (`POST /v1/usage`,
//! mTLS) every `usage.report_interval`, and once more at drain. Reports are
//! numbered ([`api::USAGE_REPORT_HEADER`]) and go one at a time. One
//! without an answer (the control plane down, or gone after storing it) is
//! sent again, unchanged and with its number, before anything newer; the
//! control plane stores a number once. Meanwhile the pending table keeps
//! aggregating (within its caps), so an outage of the control plane loses
//! nothing but what the caps refuse, and counts nothing twice.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{Mutex, watch};

use super::usage::Usage;
use crate::control::api::{self, ReportMark, UsageAccepted, UsageReport};
use crate::control::{ControlClient, ControlError};
use crate::identity::SvidStore;

/// Entries per report (the control plane takes up to
/// [`api::MAX_USAGE_ENTRIES`]).
pub const REPORT_ENTRIES: usize = 1024;
/// Reports per round: the pending table's cap over [`REPORT_ENTRIES`].
const MAX_ROUNDS: usize = super::usage::MAX_ENTRIES / REPORT_ENTRIES + 1;

pub(crate) struct Reporter {
    client: ControlClient,
    usage: Arc<Usage>,
    store: Arc<SvidStore>,
    service: String,
    /// Held for a whole flush: reports go one at a time, in number order.
    outbox: Mutex<Outbox>,
}

/// This process's numbering of its reports.
struct Outbox {
    /// 32 hex digits, random per process.
    instance: String,
    /// The last number given: the held report's, if one is held (a new
    /// one is only made once none is).
    seq: u64,
    /// The report being sent, or sent without an answer: kept until one.
    held: Option<Held>,
}

struct Held {
    report: UsageReport,
    /// Failures the control plane answered (5xx, 408, 429).
    answered_failures: u32,
}

/// A report the control plane answered with a failure this many times is
/// dropped (logged and counted as refused): it would otherwise hold back
/// every newer one. Failures without an answer (the control plane down)
/// are not counted: it is kept through an outage of any length.
const MAX_ANSWERED_FAILURES: u32 = 10;

impl Reporter {
    pub fn new(
        client: ControlClient,
        usage: Arc<Usage>,
        store: Arc<SvidStore>,
        service: String,
    ) -> Reporter {
        Reporter {
            client,
            usage,
            store,
            service,
            outbox: Mutex::new(Outbox {
                instance: hex::encode(rand::random::<[u8; 16]>()),
                seq: 0,
                held: None,
            }),
        }
    }

    /// Sends the report left without an answer, then what is pending; the
    /// entries sent. Stops at the first failure: the report that failed is
    /// held to be sent again first, the rest stays pending. A refusal other
    /// than overload (400, 403, 413) cannot be cured by retrying: that
    /// report is dropped, logged and counted.
    pub async fn flush(&self) -> Result<usize, ControlError> {
        let mut outbox = self.outbox.lock().await;
        let mut sent = self.send_held(&mut outbox).await?;
        let Some(svid) = self.store.current() else {
            return Ok(sent);
        };
        let callee = svid.spiffe_id().to_string();
        let mut max = REPORT_ENTRIES;
        for _ in 0..MAX_ROUNDS * 2 {
            let Some(report) = self.usage.take_report(&callee, &self.service, max, now()) else {
                break;
            };
            // Long callers, routes and policy lists: fewer entries a report,
            // so that none is refused for its size.
            let size = serde_json::to_vec(&report).map_or(usize::MAX, |b| b.len());
            if size > api::MAX_USAGE_BODY && report.entries.len() > 1 {
                self.usage.restore(report);
                max = (max / 2).max(1);
                continue;
            }
            outbox.seq += 1;
            outbox.held = Some(Held {
                report,
                answered_failures: 0,
            });
            sent += self.send_held(&mut outbox).await?;
        }
        Ok(sent)
    }

    /// Sends the held report, if any; its entries once answered. It stays
    /// held until then (also should this future be dropped mid-way).
    async fn send_held(&self, outbox: &mut Outbox) -> Result<usize, ControlError> {
        let Some(held) = &outbox.held else {
            return Ok(0);
        };
        let (seq, entries) = (outbox.seq, held.report.entries.len());
        let mark = ReportMark {
            instance: outbox.instance.clone(),
            seq,
        };
        let answer = self
            .client
            .post_with_header::<_, UsageAccepted>(
                api::USAGE,
                &held.report,
                api::USAGE_REPORT_HEADER,
                mark.header_value(),
            )
            .await;
        let counts = &self.usage.reports;
        match answer {
            Ok(accepted) => {
                outbox.held = None;
                if accepted.duplicate {
                    tracing::debug!(seq, "usage report stored before its answer was lost");
                }
                counts.sent.fetch_add(1, Ordering::Relaxed);
                Ok(entries)
            }
            Err(e) if final_refusal(&e) => {
                outbox.held = None;
                counts.refused.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, entries, "the control plane refused a usage report; it is dropped");
                Err(e)
            }
            Err(e) => {
                counts.failed.fetch_add(1, Ordering::Relaxed);
                if let Some(held) = &mut outbox.held
                    && matches!(e, ControlError::Refused { .. })
                {
                    held.answered_failures += 1;
                    if held.answered_failures >= MAX_ANSWERED_FAILURES {
                        outbox.held = None;
                        counts.refused.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(error = %e, entries, failures = MAX_ANSWERED_FAILURES, "the control plane failed a usage report every time it was sent; it is dropped");
                    }
                }
                Err(e)
            }
        }
    }

    /// Entries in the report held for sending again.
    async fn held_entries(&self) -> usize {
        let outbox = self.outbox.lock().await;
        outbox.held.as_ref().map_or(0, |h| h.report.entries.len())
    }

    /// Reports every `interval` until shutdown.
    pub async fn run(self: Arc<Self>, interval: Duration, mut shutdown: watch::Receiver<bool>) {
        let mut failures: u32 = 0;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
            match self.flush().await {
                Ok(_) => failures = 0,
                Err(e) => {
                    failures = failures.saturating_add(1);
                    if failures == 1 || failures.is_power_of_two() {
                        let held = self.held_entries().await;
                        tracing::warn!(error = %e, failures, held, pending = self.usage.pending_entries(), "usage report failed; kept for the next one");
                    }
                }
            }
        }
    }
}

fn now() -> i64 {
    i64::try_from(super::metrics::unix_seconds(std::time::SystemTime::now())).unwrap_or(i64::MAX)
}

fn final_refusal(e: &ControlError) -> bool {
    matches!(e, ControlError::Refused { status, .. }
        if status.is_client_error() && status.as_u16() != 429 && status.as_u16() != 408)
}
