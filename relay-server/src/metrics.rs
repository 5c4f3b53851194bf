//! The relay's counters and their Prometheus text rendering (`/metrics` on the admin listener).
//!
//! Labels are bounded: `tenant` takes only provisioned tenant names (requests for unknown tenants
//! count under `tenant=""`), `class` is the status class. Nothing is labelled per request or stream.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Upper bounds (seconds) of the response-head latency histogram.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0,
];

/// Counters of one tenant.
#[derive(Debug, Default)]
pub(crate) struct TenantCounters {
    /// Responses by status class 1xx..5xx.
    classes: [AtomicU64; 5],
    /// Request body bytes received from visitors.
    pub(crate) request_bytes: AtomicU64,
    /// Response body bytes sent to visitors.
    pub(crate) response_bytes: AtomicU64,
}

/// Counters read by tests, logs and `/metrics`.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Visitor requests received.
    pub requests: AtomicU64,
    /// Streams in flight (request sent, response body not yet finished).
    pub in_flight: AtomicUsize,
    /// Connector authentications refused.
    pub auth_failures: AtomicU64,
    /// Live sessions.
    pub sessions: AtomicUsize,
    /// Audit records written to the store.
    pub audit_written: AtomicU64,
    /// Audit records dropped (queue full, or the store failed the batch).
    pub audit_dropped: AtomicU64,
    /// Requests this node forwarded to the node holding the tenant's session.
    pub forwarded_out: AtomicU64,
    /// Requests other nodes forwarded here and this node served from its sessions.
    pub forwarded_in: AtomicU64,
    /// Forwarded requests that failed before the owning node answered (link down, refused).
    pub forward_failures: AtomicU64,
    /// Live relay nodes in the registry, this one included (as of the last heartbeat).
    pub nodes: AtomicUsize,
    /// Queue messages accepted by this node.
    pub queue_accepted: AtomicU64,
    /// Queue messages this node delivered (a final response).
    pub queue_delivered: AtomicU64,
    /// Queue delivery attempts this node will retry.
    pub queue_retries: AtomicU64,
    /// Queue messages this node gave up on (a final failure).
    pub queue_failed: AtomicU64,
    /// Queue messages this node moved to expired.
    pub queue_expired: AtomicU64,
    /// Idle HTTP/1 visitor connections parked: held without hyper and its buffers.
    pub visitors_parked: AtomicUsize,
    /// Pairing: peers online on this node (introduction sockets admitted).
    pub pairing_peers: AtomicUsize,
    /// Pairing: connection sockets on this node, held or piped.
    pub pairing_connections: AtomicUsize,
    /// Pairing: connections matched with their partner on this node.
    pub pairing_pairings: AtomicU64,
    /// Pairing: message bytes piped between paired connections.
    pub pairing_bytes: AtomicU64,
    /// Pairing: sockets closed by a refusal or a limit (close codes 4400–4499, 1008, 1009).
    pub pairing_refusals: AtomicU64,
    /// Requests refused by an access policy, by rule kind and status (both from fixed lists).
    policy_refusals: RwLock<BTreeMap<(&'static str, u16), u64>>,
    /// Queue messages by state, cluster-wide (refreshed every few seconds).
    queue_depth: RwLock<Vec<(&'static str, u64)>>,
    /// When the oldest queued message was accepted, ms since the epoch (0: none).
    queue_oldest_ms: AtomicU64,
    tenants: RwLock<HashMap<String, Arc<TenantCounters>>>,
    buckets: [AtomicU64; BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_micros: AtomicU64,
}

impl Metrics {
    /// The counters of `tenant` (`""` for requests that matched no tenant).
    pub(crate) fn tenant(&self, tenant: &str) -> Arc<TenantCounters> {
        if let Some(c) = self
            .tenants
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(tenant)
        {
            return c.clone();
        }
        let mut map = self.tenants.write().unwrap_or_else(|p| p.into_inner());
        map.entry(tenant.to_string()).or_default().clone()
    }

    /// Records one answered request.
    pub(crate) fn record(&self, counters: &TenantCounters, status: u16, head_latency: Duration) {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        counters.classes[class].fetch_add(1, Ordering::Relaxed);
        let secs = head_latency.as_secs_f64();
        for (i, bound) in BUCKETS.iter().enumerate() {
            if secs <= *bound {
                self.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_sum_micros
            .fetch_add(head_latency.as_micros() as u64, Ordering::Relaxed);
    }

    /// Counts one request refused by the access-policy rule `kind` (`ip-deny`, `api-key`, …)
    /// with `status`.
    pub(crate) fn policy_refusal(&self, kind: &'static str, status: u16) {
        let mut map = self
            .policy_refusals
            .write()
            .unwrap_or_else(|p| p.into_inner());
        *map.entry((kind, status)).or_default() += 1;
    }

    /// Sets the queue depth gauges.
    pub(crate) fn set_queue_depth(&self, counts: &relay_store::QueueCounts) {
        let depth = relay_store::QueueState::ALL
            .iter()
            .map(|s| (s.as_str(), counts.by_state.get(s).copied().unwrap_or(0)))
            .collect();
        *self.queue_depth.write().unwrap_or_else(|p| p.into_inner()) = depth;
        self.queue_oldest_ms.store(
            counts.oldest_queued_at.map_or(0, |t| t.max(0) as u64),
            Ordering::Relaxed,
        );
    }

    /// The Prometheus text exposition of every counter.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let tenants: Vec<(String, Arc<TenantCounters>)> = {
            let map = self.tenants.read().unwrap_or_else(|p| p.into_inner());
            let mut v: Vec<_> = map.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        };
        let _ = writeln!(
            out,
            "# HELP relay_requests_total Visitor requests answered, by tenant and status class."
        );
        let _ = writeln!(out, "# TYPE relay_requests_total counter");
        for (name, c) in &tenants {
            for (i, class) in ["1xx", "2xx", "3xx", "4xx", "5xx"].iter().enumerate() {
                let n = c.classes[i].load(Ordering::Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "relay_requests_total{{tenant=\"{name}\",class=\"{class}\"}} {n}"
                    );
                }
            }
        }
        for (metric, help, pick) in [
            (
                "relay_request_body_bytes_total",
                "Request body bytes received from visitors.",
                0,
            ),
            (
                "relay_response_body_bytes_total",
                "Response body bytes sent to visitors.",
                1,
            ),
        ] {
            let _ = writeln!(out, "# HELP {metric} {help}");
            let _ = writeln!(out, "# TYPE {metric} counter");
            for (name, c) in &tenants {
                let n = if pick == 0 {
                    &c.request_bytes
                } else {
                    &c.response_bytes
                }
                .load(Ordering::Relaxed);
                let _ = writeln!(out, "{metric}{{tenant=\"{name}\"}} {n}");
            }
        }
        let _ = writeln!(
            out,
            "# HELP relay_response_head_duration_seconds Time from request to response head."
        );
        let _ = writeln!(out, "# TYPE relay_response_head_duration_seconds histogram");
        for (i, bound) in BUCKETS.iter().enumerate() {
            let n = self.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "relay_response_head_duration_seconds_bucket{{le=\"{bound}\"}} {n}"
            );
        }
        let count = self.latency_count.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "relay_response_head_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let sum = self.latency_sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "relay_response_head_duration_seconds_sum {sum}");
        let _ = writeln!(out, "relay_response_head_duration_seconds_count {count}");
        for (metric, kind, help, v) in [
            (
                "relay_sessions",
                "gauge",
                "Live connector sessions.",
                self.sessions.load(Ordering::Relaxed) as u64,
            ),
            (
                "relay_streams_in_flight",
                "gauge",
                "Visitor requests in flight through sessions.",
                self.in_flight.load(Ordering::Relaxed) as u64,
            ),
            (
                "relay_auth_failures_total",
                "counter",
                "Connector authentications refused.",
                self.auth_failures.load(Ordering::Relaxed),
            ),
            (
                "relay_audit_written_total",
                "counter",
                "Audit records written to the store.",
                self.audit_written.load(Ordering::Relaxed),
            ),
            (
                "relay_audit_dropped_total",
                "counter",
                "Audit records dropped because the queue was full or the store failed.",
                self.audit_dropped.load(Ordering::Relaxed),
            ),
            (
                "relay_cluster_nodes",
                "gauge",
                "Live relay nodes in the registry, this one included.",
                self.nodes.load(Ordering::Relaxed) as u64,
            ),
            (
                "relay_forwarded_out_total",
                "counter",
                "Requests forwarded to the node holding the tenant's session.",
                self.forwarded_out.load(Ordering::Relaxed),
            ),
            (
                "relay_forwarded_in_total",
                "counter",
                "Requests other nodes forwarded here, served from this node's sessions.",
                self.forwarded_in.load(Ordering::Relaxed),
            ),
            (
                "relay_forward_failures_total",
                "counter",
                "Forwarded requests that failed before the owning node answered.",
                self.forward_failures.load(Ordering::Relaxed),
            ),
            (
                "relay_queue_accepted_total",
                "counter",
                "Queue messages accepted by this node.",
                self.queue_accepted.load(Ordering::Relaxed),
            ),
            (
                "relay_queue_delivered_total",
                "counter",
                "Queue messages this node delivered.",
                self.queue_delivered.load(Ordering::Relaxed),
            ),
            (
                "relay_queue_retries_total",
                "counter",
                "Queue delivery attempts this node will retry.",
                self.queue_retries.load(Ordering::Relaxed),
            ),
            (
                "relay_queue_failed_total",
                "counter",
                "Queue messages this node gave up on.",
                self.queue_failed.load(Ordering::Relaxed),
            ),
            (
                "relay_queue_expired_total",
                "counter",
                "Queue messages this node moved to expired.",
                self.queue_expired.load(Ordering::Relaxed),
            ),
            (
                "relay_visitor_connections_parked",
                "gauge",
                "Idle HTTP/1 visitor connections parked, holding no HTTP state or buffer.",
                self.visitors_parked.load(Ordering::Relaxed) as u64,
            ),
            (
                "relay_pairing_peers",
                "gauge",
                "Pairing peers online on this node (introduction sockets).",
                self.pairing_peers.load(Ordering::Relaxed) as u64,
            ),
            (
                "relay_pairing_connections",
                "gauge",
                "Pairing connection sockets on this node, held or piped.",
                self.pairing_connections.load(Ordering::Relaxed) as u64,
            ),
            (
                "relay_pairing_pairings_total",
                "counter",
                "Pairing connections matched with their partner on this node.",
                self.pairing_pairings.load(Ordering::Relaxed),
            ),
            (
                "relay_pairing_bytes_total",
                "counter",
                "Message bytes piped between paired connections.",
                self.pairing_bytes.load(Ordering::Relaxed),
            ),
            (
                "relay_pairing_refusals_total",
                "counter",
                "Pairing sockets closed by a refusal or a limit.",
                self.pairing_refusals.load(Ordering::Relaxed),
            ),
        ] {
            let _ = writeln!(out, "# HELP {metric} {help}");
            let _ = writeln!(out, "# TYPE {metric} {kind}");
            let _ = writeln!(out, "{metric} {v}");
        }
        let _ = writeln!(
            out,
            "# HELP relay_policy_refusals_total Requests refused by an access policy, by rule kind and status."
        );
        let _ = writeln!(out, "# TYPE relay_policy_refusals_total counter");
        for ((rule, status), n) in self
            .policy_refusals
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "relay_policy_refusals_total{{rule=\"{rule}\",status=\"{status}\"}} {n}"
            );
        }
        let depth = self
            .queue_depth
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if !depth.is_empty() {
            let _ = writeln!(
                out,
                "# HELP relay_queue_messages Queue messages by state, all tenants and nodes."
            );
            let _ = writeln!(out, "# TYPE relay_queue_messages gauge");
            for (state, n) in depth {
                let _ = writeln!(out, "relay_queue_messages{{state=\"{state}\"}} {n}");
            }
            let oldest = self.queue_oldest_ms.load(Ordering::Relaxed);
            let age = if oldest == 0 {
                0.0
            } else {
                (relay_store::now_ms().max(0) as u64).saturating_sub(oldest) as f64 / 1000.0
            };
            let _ = writeln!(
                out,
                "# HELP relay_queue_oldest_age_seconds Age of the oldest queued message."
            );
            let _ = writeln!(out, "# TYPE relay_queue_oldest_age_seconds gauge");
            let _ = writeln!(out, "relay_queue_oldest_age_seconds {age}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_a_cumulative_histogram() {
        let m = Metrics::default();
        let acme = m.tenant("acme");
        m.record(&acme, 200, Duration::from_millis(3));
        m.record(&acme, 503, Duration::from_secs(2));
        acme.response_bytes.fetch_add(42, Ordering::Relaxed);
        let text = m.render();
        assert!(
            text.contains("relay_requests_total{tenant=\"acme\",class=\"2xx\"} 1"),
            "{text}"
        );
        assert!(text.contains("relay_requests_total{tenant=\"acme\",class=\"5xx\"} 1"));
        assert!(text.contains("relay_response_body_bytes_total{tenant=\"acme\"} 42"));
        assert!(text.contains("relay_response_head_duration_seconds_bucket{le=\"0.005\"} 1"));
        assert!(text.contains("relay_response_head_duration_seconds_bucket{le=\"5\"} 2"));
        assert!(text.contains("relay_response_head_duration_seconds_count 2"));
        m.policy_refusal("api-key", 401);
        m.policy_refusal("api-key", 401);
        m.policy_refusal("ip-deny", 403);
        let text = m.render();
        assert!(
            text.contains("relay_policy_refusals_total{rule=\"api-key\",status=\"401\"} 2"),
            "{text}"
        );
        assert!(text.contains("relay_policy_refusals_total{rule=\"ip-deny\",status=\"403\"} 1"));
    }
}
