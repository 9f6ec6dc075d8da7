//! The health check's answer, and the policy that sets it: what makes an instance `ok`, `degraded` or failing.

use super::*;

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok`; `degraded` (200: a token this instance uses is away, and its
    /// work waits for it, or an audit sink is behind; a restart would not
    /// help); `unavailable` (503: the
    /// database does not answer); or `stuck` (503: an operation's token call
    /// has hung: restart this instance).
    status: &'static str,
    /// What is wrong, when something is.
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
    /// The tokens that are away, while `degraded`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    unreachable: Vec<UnreachableToken>,
    /// The audit sinks further behind than `--audit-forward-lag-bound`
    /// records, while `degraded`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    audit_lagging: Vec<LaggingSink>,
}

/// An audit sink that is behind.
#[derive(Debug, Serialize, ToSchema)]
pub struct LaggingSink {
    sink: String,
    /// Records not yet delivered to it.
    lag: i64,
}

/// A token this instance uses that does not answer now.
#[derive(Debug, Serialize, ToSchema)]
pub struct UnreachableToken {
    partition_label: String,
    serial_number: String,
    /// Since when (RFC 3339).
    unreachable_since: String,
    /// Why it was found unreachable.
    error: String,
}

impl Health {
    /// `ok`, or `degraded` naming every token that is away.
    pub fn of_tokens(watched: &[luna_runner::tokens::WatchedToken]) -> Health {
        let unreachable: Vec<UnreachableToken> = watched
            .iter()
            .filter_map(|token| {
                let since = token.reachability.away_since?;
                Some(UnreachableToken {
                    partition_label: token.partition_label.clone(),
                    serial_number: token.serial_number.clone(),
                    unreachable_since: wall_clock(since),
                    error: token.reachability.last_error.clone().unwrap_or_default(),
                })
            })
            .collect();
        if unreachable.is_empty() {
            return Health {
                status: "ok",
                detail: None,
                unreachable,
                audit_lagging: Vec::new(),
            };
        }
        let names: Vec<String> = unreachable
            .iter()
            .map(|t| {
                format!(
                    "{:?} (serial {}) since {}",
                    t.partition_label, t.serial_number, t.unreachable_since
                )
            })
            .collect();
        Health {
            status: "degraded",
            detail: Some(format!(
                "{} unreachable: {}; their work waits for them, and they are looked at every half second",
                if names.len() == 1 {
                    "a token is"
                } else {
                    "tokens are"
                },
                names.join(", ")
            )),
            unreachable,
            audit_lagging: Vec::new(),
        }
    }

    /// This health, `degraded` too if a sink in `lags` is more than `bound`
    /// records behind.
    pub fn with_audit_lags(mut self, lags: &[(String, i64)], bound: i64) -> Health {
        self.audit_lagging = lags
            .iter()
            .filter(|(_, lag)| *lag > bound)
            .map(|(sink, lag)| LaggingSink {
                sink: sink.clone(),
                lag: *lag,
            })
            .collect();
        if !self.audit_lagging.is_empty() {
            let behind: Vec<String> = self
                .audit_lagging
                .iter()
                .map(|s| format!("{} is {} records behind", s.sink, s.lag))
                .collect();
            let lagging = format!(
                "audit forwarding: {} (more than {bound}); records wait in the database, none is lost",
                behind.join(", ")
            );
            self.status = "degraded";
            self.detail = Some(match self.detail.take() {
                Some(tokens) => format!("{tokens}; {lagging}"),
                None => lagging,
            });
        }
        self
    }

    /// 503's body: `status` and what is wrong.
    pub fn unhealthy(status: &'static str, detail: String) -> Health {
        Health {
            status,
            detail: Some(detail),
            unreachable: Vec::new(),
            audit_lagging: Vec::new(),
        }
    }
}
