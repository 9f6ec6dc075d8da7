//! The instance's figures in Prometheus' text format, as `GET /metrics`
//! serves them (luna-api `handlers/health.rs`): token calls by function with
//! latency and errors, tokens' reachability, operations by kind and state,
//! the progress of running jobs, the database's writes, each partition's
//! queue. luna-api registers its own (requests, audit forwarding) in the
//! same registry.

use std::collections::HashMap;
use std::sync::Arc;
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use luna_domain::{Job, JobStatus, JobType, OperationState};
use luna_pkcs11::{CallObserver, Reachability, TokenError};
use prometheus::{
    CounterVec, Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::error::RunnerError;

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    token_calls: HistogramVec,
    token_errors: IntCounterVec,
    operations: IntGaugeVec,
    jobs: IntGaugeVec,
    /// This instance's schedule firings, by schedule name and outcome.
    schedule_firings: IntCounterVec,
    token_reachable: IntGaugeVec,
    token_recoveries: IntCounterVec,
    module_reinitialisations: IntCounter,
    /// This instance's database writes (luna-store's group commit).
    db_writes: IntCounterVec,
    db_seconds: CounterVec,
    db_statements: IntCounter,
    /// The work waiting for each partition's tokens.
    queue_depth: IntGaugeVec,
    queue_drain: GaugeVec,
    queue_limit: IntGaugeVec,
    /// The token call each thread is in, and since when: the runner's
    /// watchdog asks how long the call on an operation's thread has run.
    in_flight: parking_lot::Mutex<HashMap<ThreadId, (&'static str, Instant)>>,
}

fn register<M: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: M,
) -> Result<M, prometheus::Error> {
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

impl Metrics {
    pub fn new() -> Result<Arc<Metrics>, prometheus::Error> {
        let registry = Registry::new();
        let token_calls = register(
            &registry,
            HistogramVec::new(
                HistogramOpts::new(
                    "luna_token_call_duration_seconds",
                    "PKCS#11 token calls by function",
                )
                .buckets(vec![0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0]),
                &["function"],
            )?,
        )?;
        let token_errors = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "luna_token_call_errors_total",
                    "Failed token calls by function and code",
                ),
                &["function", "code"],
            )?,
        )?;
        let operations = register(
            &registry,
            IntGaugeVec::new(
                Opts::new("luna_operations", "Durable operations by kind and state"),
                &["kind", "state"],
            )?,
        )?;
        let jobs = register(
            &registry,
            IntGaugeVec::new(
                Opts::new(
                    "luna_job_partitions",
                    "Partitions of running jobs, done or pending, by job type",
                ),
                &["job_type", "progress"],
            )?,
        )?;
        let schedule_firings = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "luna_schedule_firings_total",
                    "Schedule firings this instance handled, by schedule and outcome: started, skipped, failed (no job started) and job_failed (a job it started ended failed)",
                ),
                &["schedule", "outcome"],
            )?,
        )?;
        let token_labels = ["partition_label", "serial_number"];
        let token_reachable = register(
            &registry,
            IntGaugeVec::new(
                Opts::new(
                    "luna_token_reachable",
                    "1 while a token this instance uses answers, 0 while it is away",
                ),
                &token_labels,
            )?,
        )?;
        let token_recoveries = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "luna_token_recoveries_total",
                    "Times a token that was away came back (sessions opened and logged in again)",
                ),
                &token_labels,
            )?,
        )?;
        let module_reinitialisations = register(
            &registry,
            IntCounter::new(
                "luna_pkcs11_module_reinitialisations_total",
                "Times the PKCS#11 module was finalised and initialised again to recover a token",
            )?,
        )?;
        let db_writes = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "luna_db_writes_total",
                    "Database writes by what became of them: committed, the commits they shared \
                     (synced or not), those run again after a deadlock, and batches rolled back \
                     because one of their writes failed",
                ),
                &["counted"],
            )?,
        )?;
        let db_seconds = register(
            &registry,
            CounterVec::new(
                Opts::new(
                    "luna_db_write_seconds_total",
                    "Time of this instance's writes: its batches' turns (begin to the end of the \
                     commit, waits for writers to join included), and within them the serial database \
                     time: the writes' work, and writing counts and audit and committing",
                ),
                &["span"],
            )?,
        )?;
        let db_statements = register(
            &registry,
            IntCounter::new(
                "luna_db_statements_total",
                "Statements this instance sent to the database (each a round trip)",
            )?,
        )?;
        let queue_depth = register(
            &registry,
            IntGaugeVec::new(
                Opts::new(
                    "luna_queue_depth",
                    "Key operations waiting for a partition's tokens (queued, running or parked)",
                ),
                &["partition_id"],
            )?,
        )?;
        let queue_drain = register(
            &registry,
            GaugeVec::new(
                Opts::new(
                    "luna_queue_drain_per_second",
                    "Key operations leaving a partition's queue per second, lately (every instance's work)",
                ),
                &["partition_id"],
            )?,
        )?;
        let queue_limit = register(
            &registry,
            IntGaugeVec::new(
                Opts::new(
                    "luna_queue_limit",
                    "The depth past which creates are refused: per partition, and in all",
                ),
                &["scope"],
            )?,
        )?;
        Ok(Arc::new(Metrics {
            registry,
            queue_depth,
            queue_drain,
            queue_limit,
            db_writes,
            db_seconds,
            db_statements,
            token_calls,
            token_errors,
            operations,
            jobs,
            schedule_firings,
            token_reachable,
            token_recoveries,
            module_reinitialisations,
            in_flight: parking_lot::Mutex::default(),
        }))
    }

    /// Registers another layer's figure (luna-api's requests and audit
    /// forwarding) beside the runner's, so that `render` encodes it too.
    pub fn register<M: prometheus::core::Collector + Clone + 'static>(
        &self,
        metric: M,
    ) -> Result<M, prometheus::Error> {
        register(&self.registry, metric)
    }

    /// The token call `thread` is in, and how long it has run.
    pub(crate) fn call_in_flight(&self, thread: ThreadId) -> Option<(&'static str, Duration)> {
        self.in_flight
            .lock()
            .get(&thread)
            .map(|(function, since)| (*function, since.elapsed()))
    }

    /// Sets the token gauges and counters from what the open tokens say now:
    /// (partition label, serial number, reachability) each.
    pub fn observe_tokens<'a>(
        &self,
        tokens: impl IntoIterator<Item = (&'a str, &'a str, &'a Reachability)>,
        reinitialisations: u64,
    ) {
        self.token_reachable.reset();
        for (label, serial, reachability) in tokens {
            let labels = [label, serial];
            self.token_reachable
                .with_label_values(&labels)
                .set(i64::from(reachability.is_reachable()));
            catch_up(
                &self.token_recoveries.with_label_values(&labels),
                reachability.recoveries,
            );
        }
        catch_up(&self.module_reinitialisations, reinitialisations);
    }

    /// Brings the database counters up to what the store counted.
    pub fn observe_database(&self, writes: &luna_store::WriteStats, statements: u64) {
        for (counted, total) in [
            ("committed", writes.writes),
            ("commits", writes.commits),
            ("synced_commits", writes.synced_commits),
            ("retried", writes.retried),
            ("rolled_back_batches", writes.rolled_back),
        ] {
            catch_up(&self.db_writes.with_label_values(&[counted]), total);
        }
        for (span, nanos) in [
            ("batch", writes.batch_nanos),
            ("work", writes.work_nanos),
            ("commit", writes.commit_nanos),
        ] {
            let counter = self.db_seconds.with_label_values(&[span]);
            let total = nanos as f64 / 1e9;
            if total > counter.get() {
                counter.inc_by(total - counter.get());
            }
        }
        catch_up(&self.db_statements, statements);
    }

    /// Sets the gauges of the work waiting for each partition's tokens:
    /// (partition, depth, drain per second) each, and the bounds.
    pub fn observe_queues(
        &self,
        queues: impl IntoIterator<Item = (uuid::Uuid, i64, f64)>,
        per_partition_limit: i64,
        total_limit: i64,
    ) {
        self.queue_depth.reset();
        self.queue_drain.reset();
        for (partition, depth, drain) in queues {
            let partition = partition.to_string();
            self.queue_depth.with_label_values(&[&partition]).set(depth);
            self.queue_drain.with_label_values(&[&partition]).set(drain);
        }
        self.queue_limit
            .with_label_values(&["partition"])
            .set(per_partition_limit);
        self.queue_limit.with_label_values(&["total"]).set(total_limit);
    }

    /// Sets the queue's gauges (operations by kind and state) and the
    /// running jobs' progress (partitions done and pending, by job type).
    pub fn observe_work(
        &self,
        operations: &[(String, OperationState, i64)],
        running: &[(JobType, Vec<Job>)],
    ) {
        self.operations.reset();
        for (kind, op_state, n) in operations {
            self.operations
                .with_label_values(&[kind.as_str(), op_state.as_str()])
                .set(*n);
        }
        self.jobs.reset();
        for (job_type, jobs) in running {
            let (mut done, mut pending) = (0, 0);
            for job in jobs {
                for state in job.detailed_status.values() {
                    if state == JobStatus::InProgress.as_str() {
                        pending += 1;
                    } else {
                        done += 1;
                    }
                }
            }
            self.jobs
                .with_label_values(&[job_type.as_str(), "done"])
                .set(done);
            self.jobs
                .with_label_values(&[job_type.as_str(), "pending"])
                .set(pending);
        }
    }

    /// Counts one firing of schedule `schedule` with `outcome`.
    pub(crate) fn schedule_fired(&self, schedule: &str, outcome: &str) {
        self.schedule_firings
            .with_label_values(&[schedule, outcome])
            .inc();
    }

    /// Everything in Prometheus' text format.
    pub fn render(&self) -> Result<Vec<u8>, RunnerError> {
        let mut text = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut text)
            .map_err(|e| RunnerError::Metrics(e.to_string()))?;
        Ok(text)
    }
}

/// Brings a counter up to `total`, a count kept elsewhere (it never goes down).
fn catch_up(counter: &IntCounter, total: u64) {
    let seen = counter.get();
    if total > seen {
        counter.inc_by(total - seen);
    }
}

/// Every call on an open token is timed into `luna_token_call_duration_seconds`, its
/// error counted by code, and listed in flight on its thread for the
/// runner's watchdog (`call_in_flight`).
impl CallObserver for Metrics {
    fn started(&self, function: &'static str) {
        // A call made inside another (none today) keeps the outer one's start.
        self.in_flight
            .lock()
            .entry(std::thread::current().id())
            .or_insert((function, Instant::now()));
    }

    fn ended(&self, function: &'static str, elapsed: Duration, error: Option<&TokenError>) {
        let thread = std::thread::current().id();
        let mut calls = self.in_flight.lock();
        if calls.get(&thread).is_some_and(|(outer, _)| *outer == function) {
            calls.remove(&thread);
        }
        drop(calls);
        self.token_calls
            .with_label_values(&[function])
            .observe(elapsed.as_secs_f64());
        if let Some(error) = error {
            self.token_errors
                .with_label_values(&[function, error.code()])
                .inc();
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn metrics_are_defined() {
        let metrics = super::Metrics::new().unwrap();
        metrics.observe_database(&luna_store::WriteStats::default(), 3);
        let names: Vec<String> = metrics
            .registry
            .gather()
            .iter()
            .map(|f| f.name().to_owned())
            .collect();
        assert!(
            names.contains(&"luna_db_statements_total".to_owned()),
            "{names:?}"
        );
    }
}
