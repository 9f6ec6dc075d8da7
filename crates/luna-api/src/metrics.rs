//! The figures of the HTTP edge, registered in the instance's registry
//! (`luna_runner::Metrics::register`) beside the runner's: requests by route,
//! method and status with latency histograms, and audit forwarding by sink
//! (records sent, failures, records behind).

use std::sync::Arc;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts};

#[derive(Debug)]
pub struct EdgeMetrics {
    requests: HistogramVec,
    xks_calls: HistogramVec,
    audit_forwarded: IntCounterVec,
    audit_forward_failures: IntCounterVec,
    audit_forward_lag: IntGaugeVec,
}

impl EdgeMetrics {
    /// The edge's figures, registered beside the runner's `metrics`.
    pub fn new(metrics: &luna_runner::Metrics) -> Result<Arc<EdgeMetrics>, prometheus::Error> {
        let requests = metrics.register(HistogramVec::new(
            HistogramOpts::new(
                "luna_http_request_duration_seconds",
                "HTTP requests by route, method and status",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
            &["route", "method", "status"],
        )?)?;
        let xks_calls = metrics.register(HistogramVec::new(
            HistogramOpts::new(
                "luna_xks_call_duration_seconds",
                "XKS proxy calls by keystore, call (GetHealthStatus, GetKeyMetadata, Encrypt, Decrypt) and outcome (ok, or the spec's errorName)",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
            ]),
            &["keystore", "call", "outcome"],
        )?)?;
        let audit_forwarded = metrics.register(IntCounterVec::new(
            Opts::new(
                "luna_audit_forwarded_total",
                "Audit records this instance sent to each sink (a record sent again counts again)",
            ),
            &["sink"],
        )?)?;
        let audit_forward_failures = metrics.register(IntCounterVec::new(
            Opts::new(
                "luna_audit_forward_failures_total",
                "Failed attempts of this instance to forward to each sink (the receiver away, say)",
            ),
            &["sink"],
        )?)?;
        let audit_forward_lag = metrics.register(IntGaugeVec::new(
            Opts::new(
                "luna_audit_forward_lag",
                "Audit records not yet delivered to each sink (by whichever instance forwards to it)",
            ),
            &["sink"],
        )?)?;
        Ok(Arc::new(EdgeMetrics {
            requests,
            xks_calls,
            audit_forwarded,
            audit_forward_failures,
            audit_forward_lag,
        }))
    }

    pub fn observe_request(&self, route: &str, method: &str, status: u16, seconds: f64) {
        self.requests
            .with_label_values(&[route, method, &status.to_string()])
            .observe(seconds);
    }

    pub fn observe_xks(&self, keystore: &str, call: &str, outcome: &str, seconds: f64) {
        self.xks_calls
            .with_label_values(&[keystore, call, outcome])
            .observe(seconds);
    }

    pub fn audit_forwarded(&self, sink: &str, records: usize) {
        self.audit_forwarded
            .with_label_values(&[sink])
            .inc_by(records as u64);
    }

    pub fn audit_forward_failed(&self, sink: &str) {
        self.audit_forward_failures.with_label_values(&[sink]).inc();
    }

    /// Sets each sink's lag: (sink, records behind).
    pub fn observe_audit_lag(&self, lags: &[(String, i64)]) {
        for (sink, lag) in lags {
            self.audit_forward_lag.with_label_values(&[sink]).set(*lag);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_edges_figures_are_rendered_with_the_runners() {
        let runner = luna_runner::Metrics::new().unwrap();
        let edge = super::EdgeMetrics::new(&runner).unwrap();
        edge.observe_request("/api/v1/healthz", "GET", 200, 0.001);
        runner.observe_database(&luna_store::WriteStats::default(), 3);
        let text = String::from_utf8(runner.render().unwrap()).unwrap();
        assert!(
            text.contains("luna_http_request_duration_seconds_bucket"),
            "{text}"
        );
        assert!(text.contains("luna_db_statements_total 3"), "{text}");
    }
}
