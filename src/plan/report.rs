//! Usage reporting: Portkey's per-bucket usage → the status summary and the alert Events due.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;

use crate::api::{AlertRecord, BucketUsage, UsageSummary};
use crate::portkey::{BucketStatus, ValueKeyUsage};

/// Buckets listed in `status.usage.top`.
pub const TOP_BUCKETS: usize = 10;
/// Buckets remembered per alert kind and period (and so Events of each kind per period).
pub const MAX_ALERTED: usize = 100;

/// An alert Event that is due.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AlertEvent {
    ThresholdReached {
        value_key: String,
        usage: Decimal,
        threshold: Decimal,
    },
    Exhausted {
        value_key: String,
        usage: Decimal,
        limit: Decimal,
    },
}

/// The status summary, the alert record to store, and the Events to record now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageReport {
    pub summary: UsageSummary,
    pub alerts: AlertRecord,
    pub events: Vec<AlertEvent>,
}

/// Whole percent of `limit`, rounded down.
pub fn percent(usage: Decimal, limit: Decimal) -> i32 {
    if limit <= Decimal::ZERO {
        return 0;
    }
    (usage * Decimal::from(100) / limit)
        .floor()
        .to_i32()
        .unwrap_or(i32::MAX)
}

/// Builds the report. `period` names the current reset period (e.g. the last reset instant);
/// alerts recorded for another period are forgotten, so each bucket alerts once per period.
pub fn usage_report(
    usage: &BTreeMap<String, ValueKeyUsage>,
    limit: Decimal,
    threshold: Option<Decimal>,
    period: &str,
    previous: Option<&AlertRecord>,
) -> UsageReport {
    let mut buckets: Vec<(&String, &ValueKeyUsage)> = usage.iter().collect();
    // Largest usage first; ties by key so the order is stable.
    buckets.sort_by(|a, b| b.1.current_usage.cmp(&a.1.current_usage).then(a.0.cmp(b.0)));
    let exhausted =
        |u: &ValueKeyUsage| u.status == BucketStatus::Exhausted || u.current_usage >= limit;
    let peak = buckets
        .first()
        .map(|b| b.1.current_usage)
        .unwrap_or_default();
    let summary = UsageSummary {
        buckets: buckets.len().try_into().unwrap_or(i32::MAX),
        exhausted_buckets: buckets
            .iter()
            .filter(|b| exhausted(b.1))
            .count()
            .try_into()
            .unwrap_or(i32::MAX),
        peak_usage: peak.normalize().to_string(),
        peak_percent: percent(peak, limit),
        top: buckets
            .iter()
            .take(TOP_BUCKETS)
            .map(|(k, u)| BucketUsage {
                value_key: (*k).clone(),
                current_usage: u.current_usage.normalize().to_string(),
                percent: percent(u.current_usage, limit),
                status: if exhausted(u) { "exhausted" } else { "active" }.to_owned(),
            })
            .collect(),
    };

    let mut alerts = match previous {
        Some(p) if p.period == period => p.clone(),
        _ => AlertRecord {
            period: period.to_owned(),
            ..Default::default()
        },
    };
    let mut events = Vec::new();
    // Walk in key order so which buckets fit under the cap does not depend on usage order.
    for (key, u) in usage {
        if exhausted(u) {
            if !alerts.exhausted.contains(key) && alerts.exhausted.len() < MAX_ALERTED {
                alerts.exhausted.push(key.clone());
                events.push(AlertEvent::Exhausted {
                    value_key: key.clone(),
                    usage: u.current_usage,
                    limit,
                });
            }
        } else if let Some(t) = threshold
            && u.current_usage >= t
            && !alerts.threshold_reached.contains(key)
            && alerts.threshold_reached.len() < MAX_ALERTED
        {
            alerts.threshold_reached.push(key.clone());
            events.push(AlertEvent::ThresholdReached {
                value_key: key.clone(),
                usage: u.current_usage,
                threshold: t,
            });
        }
    }
    UsageReport {
        summary,
        alerts,
        events,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    fn bucket(usage: &str, status: BucketStatus) -> ValueKeyUsage {
        ValueKeyUsage {
            current_usage: d(usage),
            status,
            is_threshold_alerts_sent: false,
            is_exhausted_alerts_sent: false,
        }
    }

    #[test]
    fn summary_and_alerts_once_per_period() {
        let mut map = BTreeMap::new();
        map.insert("u:alice".to_owned(), bucket("12.37", BucketStatus::Active));
        map.insert("u:bob".to_owned(), bucket("50", BucketStatus::Exhausted));
        map.insert("u:carol".to_owned(), bucket("45", BucketStatus::Active));
        let r = usage_report(&map, d("50"), Some(d("40")), "2026-11-01T00:00:00Z", None);
        assert_eq!(r.summary.buckets, 3);
        assert_eq!(r.summary.exhausted_buckets, 1);
        assert_eq!(r.summary.peak_usage, "50");
        assert_eq!(r.summary.peak_percent, 100);
        let order: Vec<_> = r.summary.top.iter().map(|b| b.value_key.as_str()).collect();
        assert_eq!(order, ["u:bob", "u:carol", "u:alice"]);
        assert_eq!(r.summary.top[2].percent, 24);
        assert_eq!(r.events.len(), 2);
        assert!(
            matches!(&r.events[0], AlertEvent::Exhausted { value_key, .. } if value_key == "u:bob")
        );
        assert!(
            matches!(&r.events[1], AlertEvent::ThresholdReached { value_key, .. } if value_key == "u:carol")
        );

        // Same period: nothing new.
        let again = usage_report(
            &map,
            d("50"),
            Some(d("40")),
            "2026-11-01T00:00:00Z",
            Some(&r.alerts),
        );
        assert!(again.events.is_empty());
        assert_eq!(again.alerts, r.alerts);
        // A new period re-arms every bucket.
        let next = usage_report(
            &map,
            d("50"),
            Some(d("40")),
            "2026-12-01T00:00:00Z",
            Some(&r.alerts),
        );
        assert_eq!(next.events.len(), 2);
    }

    #[test]
    fn alerts_are_capped() {
        let map: BTreeMap<String, ValueKeyUsage> = (0..150)
            .map(|i| (format!("u:{i:03}"), bucket("10", BucketStatus::Exhausted)))
            .collect();
        let r = usage_report(&map, d("10"), None, "p", None);
        assert_eq!(r.events.len(), MAX_ALERTED);
        assert_eq!(r.alerts.exhausted.len(), MAX_ALERTED);
        assert_eq!(r.summary.top.len(), TOP_BUCKETS);
        assert_eq!(r.summary.exhausted_buckets, 150);
        assert!(
            usage_report(&map, d("10"), None, "p", Some(&r.alerts))
                .events
                .is_empty()
        );
    }
}
