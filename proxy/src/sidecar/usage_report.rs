//! Sends the usage aggregates to the control plane (`POST /v1/usage`,
//! mTLS) every `usage.report_interval`, and once more at drain. A report
//! that cannot be sent goes back into the pending table (bounded by the
//! same caps), so an outage of the control plane loses nothing but what
//! the caps refuse.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::watch;

use super::usage::Usage;
use crate::control::api::{self, UsageAccepted};
use crate::control::{ControlClient, ControlError};
use crate::identity::SvidStore;

/// Entries per report (the control plane takes up to
/// [`api::MAX_USAGE_ENTRIES`]).
pub const REPORT_ENTRIES: usize = 1024;
/// Reports per round: the pending table's cap over [`REPORT_ENTRIES`].
const MAX_ROUNDS: usize = super::usage::MAX_ENTRIES / REPORT_ENTRIES + 1;

pub(crate) struct Reporter {
    pub client: ControlClient,
    pub usage: Arc<Usage>,
    pub store: Arc<SvidStore>,
    pub service: String,
}

impl Reporter {
    /// Sends what is pending; the entries sent. Stops at the first failure
    /// (what was not sent stays pending). A refusal other than overload
    /// (400, 403, 413) cannot be cured by retrying: that report is dropped,
    /// logged and counted.
    pub async fn flush(&self) -> Result<usize, ControlError> {
        let Some(svid) = self.store.current() else {
            return Ok(0);
        };
        let callee = svid.spiffe_id().to_string();
        let mut sent = 0;
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
            let entries = report.entries.len();
            match self
                .client
                .post::<_, UsageAccepted>(api::USAGE, &report)
                .await
            {
                Ok(_) => {
                    sent += entries;
                    self.usage.reports.sent.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) if final_refusal(&e) => {
                    self.usage.reports.refused.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, entries, "the control plane refused a usage report; it is dropped");
                    return Err(e);
                }
                Err(e) => {
                    self.usage.reports.failed.fetch_add(1, Ordering::Relaxed);
                    self.usage.restore(report);
                    return Err(e);
                }
            }
        }
        Ok(sent)
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
                        tracing::warn!(error = %e, failures, pending = self.usage.pending_entries(), "usage report failed; kept for the next one");
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
