//! Running refresh and ha_synchronize jobs: partition by partition, each
//! member enumerated in batches, stopping at the next batch once cancelled.

use std::collections::BTreeSet;
use std::ops::ControlFlow;

use luna_domain::refresh::{plan, MemberView, ObservedObject, RefreshScope};
use luna_domain::{Job, JobEvent, JobStatus, JobType, Partition};
use luna_pkcs11::ObjectDescription;
use uuid::Uuid;

use super::Runner;

/// Objects described per `C_GetAttributeValue` round of a scan.
const BATCH: usize = 256;

/// How a partition's part of a job ended.
enum PartitionOutcome {
    Completed,
    Cancelled,
    Failed(String),
}

fn observed(d: &ObjectDescription) -> Option<ObservedObject> {
    Some(ObservedObject {
        object_uid: d.object_uid(),
        object_type: d.object_type?,
        algorithm: d.algorithm,
        label: d.label.clone(),
        cka_id: d.cka_id.clone(),
        size: d.size_bits,
        modulus: d.modulus_hex(),
        exponent: d.public_exponent,
        attributes: d.attributes,
        fingerprint: d.fingerprint_hex(),
    })
}

impl Runner {
    /// Runs (or, after a crash, resumes) a job to its end. The job's own status
    /// says how it went; the operation fails only if the job cannot be run at all.
    pub(super) fn run_job(&self, job_id: Uuid) -> Result<(), String> {
        let read = |e: luna_store::StoreError| format!("the job record could not be read or written: {e}");
        let mut job = self
            .store
            .get_job(job_id)
            .map_err(read)?
            .ok_or("the job no longer exists")?;
        if job.lifecycle.status != JobStatus::InProgress {
            return Ok(());
        }
        for partition_id in job.partitions.clone() {
            let done = job
                .detailed_status
                .get(&partition_id)
                .is_some_and(|s| s != JobStatus::InProgress.as_str());
            if done {
                continue;
            }
            let outcome = if self.store.job_abort_requested(job_id).map_err(read)? {
                PartitionOutcome::Cancelled
            } else {
                self.run_partition(&job, partition_id)
            };
            if let PartitionOutcome::Cancelled = outcome {
                return self.end_cancelled(job_id).map_err(read);
            }
            let state = match outcome {
                PartitionOutcome::Completed => JobStatus::Completed.as_str().to_owned(),
                PartitionOutcome::Failed(reason) => reason,
                PartitionOutcome::Cancelled => JobStatus::Cancelled.as_str().to_owned(),
            };
            // Re-read: a cancel may have set the abort flag meanwhile.
            job = self
                .store
                .get_job(job_id)
                .map_err(read)?
                .ok_or("the job no longer exists")?;
            job.detailed_status.insert(partition_id, state);
            job.updated_at = luna_store::now();
            self.store.save_job(&job).map_err(read)?;
        }
        let failed = job
            .detailed_status
            .values()
            .any(|s| s != JobStatus::Completed.as_str());
        job.apply(
            if failed {
                JobEvent::Fail
            } else {
                JobEvent::Complete
            },
            luna_store::now(),
        )
        .map_err(|e| e.to_string())?;
        self.store.save_job(&job).map_err(read)?;
        Ok(())
    }

    /// Ends a job whose operation could not run (or was given up): every
    /// partition not yet done carries the reason. Nothing is left in progress.
    pub(super) fn fail_job(&self, job_id: Uuid, reason: &str) -> luna_store::Result<()> {
        let Some(mut job) = self.store.get_job(job_id)? else {
            return Ok(());
        };
        if job.lifecycle.status != JobStatus::InProgress {
            return Ok(());
        }
        for state in job.detailed_status.values_mut() {
            if state == JobStatus::InProgress.as_str() {
                *state = reason.to_owned();
            }
        }
        job.apply(JobEvent::Fail, luna_store::now())?;
        self.store.save_job(&job)?;
        Ok(())
    }

    fn end_cancelled(&self, job_id: Uuid) -> luna_store::Result<()> {
        let Some(mut job) = self.store.get_job(job_id)? else {
            return Ok(());
        };
        for state in job.detailed_status.values_mut() {
            if state == JobStatus::InProgress.as_str() {
                *state = JobStatus::Cancelled.as_str().to_owned();
            }
        }
        job.apply(JobEvent::StopCancelled, luna_store::now())?;
        self.store.save_job(&job)?;
        Ok(())
    }

    fn run_partition(&self, job: &Job, partition_id: Uuid) -> PartitionOutcome {
        let partition = match self.store.get_partition(partition_id) {
            Ok(Some(p)) => p,
            Ok(None) => return PartitionOutcome::Failed("the partition no longer exists".into()),
            Err(e) => {
                return PartitionOutcome::Failed(format!("the partition record could not be read: {e}"))
            }
        };
        let stop = || self.store.job_abort_requested(job.id).unwrap_or(false);
        let Some(views) = self.survey(&partition, &stop) else {
            return PartitionOutcome::Cancelled;
        };
        let missing = match job.job_type {
            JobType::Refresh => None,
            JobType::HaSynchronize => missing_somewhere(&partition, &views),
        };
        match self.reconcile(&partition, &views) {
            Err(reason) => PartitionOutcome::Failed(reason),
            Ok(()) => match missing {
                Some(reason) => PartitionOutcome::Failed(reason),
                None => PartitionOutcome::Completed,
            },
        }
    }

    /// What every member holds; `None` if the job was cancelled meanwhile.
    fn survey(&self, partition: &Partition, stop: &dyn Fn() -> bool) -> Option<Vec<MemberView>> {
        let mut views = Vec::with_capacity(partition.members.len());
        for member in &partition.members {
            let token = match self.tokens.member(partition.connection_id, member) {
                Ok(token) => token,
                Err(reason) => {
                    views.push(MemberView::Unreachable(reason));
                    continue;
                }
            };
            let mut objects = Vec::new();
            let mut failure = None;
            let mut cancelled = false;
            let scanned = token.scan(BATCH, &mut |batch| {
                match token.describe_many(batch) {
                    Ok(described) => objects.extend(described.iter().filter_map(observed)),
                    Err(e) => {
                        failure = Some(e.to_string());
                        return ControlFlow::Break(());
                    }
                }
                if stop() {
                    cancelled = true;
                    return ControlFlow::Break(());
                }
                ControlFlow::Continue(())
            });
            if cancelled {
                return None;
            }
            match (scanned, failure) {
                (Err(e), _) => views.push(MemberView::Unreachable(format!(
                    "the member could not be read: {e}"
                ))),
                (Ok(_), Some(e)) => views.push(MemberView::Unreachable(format!(
                    "the member could not be read: {e}"
                ))),
                (Ok(_), None) => views.push(MemberView::Read(objects)),
            }
        }
        Some(views)
    }

    fn reconcile(&self, partition: &Partition, views: &[MemberView]) -> Result<(), String> {
        let scope = RefreshScope {
            partition_id: partition.id,
            partition_label: partition.partition_label.clone(),
            ha_enabled: partition.ha_enabled,
            members: partition
                .members
                .iter()
                .map(|m| m.serial_number.clone())
                .collect(),
        };
        let records = self
            .store
            .keys_of_partition(partition.id)
            .map_err(|e| format!("the key records could not be read: {e}"))?;
        let planned = plan(&scope, &records, views, luna_store::now());
        self.store
            .apply_refresh(&planned.inserted, &planned.updated)
            .map_err(|e| format!("the key records could not be written: {e}"))?;
        Ok(())
    }
}

/// Synchronize makes every member hold every key; until members can clone
/// (issue 4's cloning domain), it can only say which member lacks what.
fn missing_somewhere(partition: &Partition, views: &[MemberView]) -> Option<String> {
    let held: Vec<BTreeSet<&str>> = views
        .iter()
        .map(|v| match v {
            MemberView::Read(objects) => objects.iter().map(|o| o.object_uid.as_str()).collect(),
            MemberView::Unreachable(_) => BTreeSet::new(),
        })
        .collect();
    let all: BTreeSet<&str> = held.iter().flatten().copied().collect();
    let mut lacking = Vec::new();
    for (member, (have, view)) in partition.members.iter().zip(held.iter().zip(views)) {
        match view {
            MemberView::Unreachable(reason) => lacking.push(format!("{}: {reason}", member.partition_label)),
            MemberView::Read(_) if have.len() < all.len() => lacking.push(format!(
                "{} lacks {} key object(s)",
                member.partition_label,
                all.len() - have.len()
            )),
            MemberView::Read(_) => {}
        }
    }
    (!lacking.is_empty()).then(|| {
        format!(
            "{}; cloning keys between members is not available yet",
            lacking.join("; ")
        )
    })
}
