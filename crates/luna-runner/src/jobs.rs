//! Running refresh and ha_synchronize jobs: partition by partition, each
//! member enumerated in batches, stopping at the next batch once cancelled.

use std::collections::BTreeSet;
use std::ops::ControlFlow;

use luna_domain::refresh::{first_sight, plan, BeforeScan, MemberScan, ObservedObject, RefreshScope};
use luna_domain::{Job, JobEvent, JobStatus, JobType, Key, KeyStatus, Partition};
use luna_pkcs11::ObjectDescription;
use uuid::Uuid;

use crate::failure::Failure;
use crate::runner::{Hook, Runner};
use crate::transfer::TransferRefused;

/// Objects described per `C_GetAttributeValue` round of a scan.
const BATCH: usize = 256;

/// What one member holds (its key objects), or why it could not be read.
type MemberObjects = Result<Vec<ObjectDescription>, String>;

/// How a partition's part of a job ended.
enum PartitionOutcome {
    Completed,
    Cancelled,
    Failed(String),
    /// A member's token is away (or went away during the scan): the job
    /// waits for it, this partition still to do.
    Waiting(Failure),
}

fn refresh_scope(partition: &Partition) -> RefreshScope {
    RefreshScope {
        partition_id: partition.id,
        partition_label: partition.partition_label.clone(),
        ha_enabled: partition.ha_enabled,
        members: partition
            .members
            .iter()
            .map(|m| m.serial_number.clone())
            .collect(),
    }
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
        wrap_with_trusted: d.wrap_with_trusted,
        fingerprint: d.fingerprint_hex(),
    })
}

impl Runner {
    /// Runs (or, after a crash, resumes) a job to its end. The job's own status
    /// says how it went; the operation fails only if the job cannot be run at all.
    pub(crate) fn run_job(&self, job_id: Uuid) -> Result<(), Failure> {
        let read = Failure::store("the job record could not be read or written");
        let mut job = self
            .store
            .get_job(job_id)
            .map_err(read)?
            .ok_or("the job no longer exists")?;
        if job.lifecycle().status() != JobStatus::InProgress {
            return Ok(());
        }
        self.sees_every_token(&job)?;
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
            let state = match outcome {
                PartitionOutcome::Completed => JobStatus::Completed.as_str().to_owned(),
                PartitionOutcome::Failed(reason) => reason,
                PartitionOutcome::Cancelled => return self.end_cancelled(job_id).map_err(read),
                PartitionOutcome::Waiting(failure) => return Err(failure),
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
        if self.store.save_job(&job).map_err(read)? && failed {
            if let Some(schedule) = &job.scheduled_by {
                self.tokens.metrics().schedule_fired(&schedule.name, "job_failed");
            }
        }
        Ok(())
    }

    /// A job runs on an instance whose module lists, for each partition it
    /// has yet to do, at least one member's token; another instance's may
    /// (`Failure::NotHere`). A member missing beside listed ones is read as
    /// unreachable, as before, and so is one this module listed before (it
    /// is away: the run waits for it).
    fn sees_every_token(&self, job: &Job) -> Result<(), Failure> {
        for partition_id in &job.partitions {
            let done = job
                .detailed_status
                .get(partition_id)
                .is_some_and(|s| s != JobStatus::InProgress.as_str());
            let Ok(Some(partition)) = self.store.get_partition(*partition_id) else {
                continue;
            };
            if done {
                continue;
            }
            let mut missing = Vec::new();
            for member in &partition.members {
                let listed = self
                    .tokens
                    .module()
                    .describe_token(&member.partition_label, Some(&member.serial_number));
                if let Err(e @ luna_pkcs11::TokenError::TokenNotFound { .. }) = listed {
                    // Listed before in this process: away, not unknown here;
                    // the partition's run waits for it.
                    let module = self.tokens.module();
                    if module.has_listed(&member.partition_label, &member.serial_number) {
                        continue;
                    }
                    missing.push(format!(
                        "partition {:?} (serial {}) is not listed by this instance's module: {e}",
                        member.partition_label, member.serial_number
                    ));
                }
            }
            if missing.len() == partition.members.len() {
                return Err(Failure::NotHere(missing.join("; ")));
            }
        }
        Ok(())
    }

    /// Ends a job whose operation could not run (or was given up): every
    /// partition not yet done carries the reason. Nothing is left in progress.
    pub(crate) fn fail_job(&self, job_id: Uuid, reason: &str) -> luna_store::Result<()> {
        self.end_job(job_id, JobEvent::Fail, reason)
    }

    fn end_cancelled(&self, job_id: Uuid) -> luna_store::Result<()> {
        self.end_job(job_id, JobEvent::StopCancelled, JobStatus::Cancelled.as_str())
    }

    /// Ends a job still in progress with `event`; its partitions not yet done
    /// get `leftover` as their state.
    fn end_job(&self, job_id: Uuid, event: JobEvent, leftover: &str) -> luna_store::Result<()> {
        let Some(mut job) = self.store.get_job(job_id)? else {
            return Ok(());
        };
        if job.lifecycle().status() != JobStatus::InProgress {
            return Ok(());
        }
        for state in job.detailed_status.values_mut() {
            if state == JobStatus::InProgress.as_str() {
                *state = leftover.to_owned();
            }
        }
        job.apply(event, luna_store::now())?;
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
        // The records as the scan begins: what changes after is not judged by it.
        let started = luna_store::now();
        let before = match self.store.keys_of_partition(partition.id) {
            Ok(records) => records,
            Err(e) => return PartitionOutcome::Failed(format!("the key records could not be read: {e}")),
        };
        let known: Option<BTreeSet<String>> =
            (job.job_type == JobType::Refresh).then(|| before.iter().map(|k| k.object_uid.clone()).collect());
        let before = BeforeScan::of(&before, started, self.settings.refresh_settle);
        let mut surveyed = match self.survey(&partition, &stop, known.as_ref()) {
            Ok(Some(surveyed)) => surveyed,
            Ok(None) => return PartitionOutcome::Cancelled,
            Err(away) => return PartitionOutcome::Waiting(away),
        };
        let mut failures = Vec::new();
        if job.job_type == JobType::HaSynchronize && partition.members.len() > 1 {
            match self.clone_missing(&partition, &surveyed, &stop) {
                None => return PartitionOutcome::Cancelled,
                Some(problems) => failures = problems,
            }
            // The records are refreshed from what the members hold now.
            match self.survey(&partition, &stop, None) {
                Ok(Some(again)) => surveyed = again,
                Ok(None) => return PartitionOutcome::Cancelled,
                Err(away) => return PartitionOutcome::Waiting(away),
            }
        }
        if let Some(Hook(hook)) = &self.settings.after_scan {
            hook();
        }
        let views: Vec<MemberScan> = surveyed
            .iter()
            .map(|s| match s {
                Ok(objects) => MemberScan::Read(objects.iter().filter_map(observed).collect()),
                Err(reason) => MemberScan::Away(reason.clone()),
            })
            .collect();
        if let Err(reason) = self.reconcile(&partition, &before, &views) {
            failures.push(reason);
        }
        if failures.is_empty() {
            PartitionOutcome::Completed
        } else {
            PartitionOutcome::Failed(failures.join("; "))
        }
    }

    /// Clones every key object some member holds to each member that lacks
    /// it; returns what could not be cloned, or `None` if cancelled.
    fn clone_missing(
        &self,
        partition: &Partition,
        surveyed: &[MemberObjects],
        stop: &dyn Fn() -> bool,
    ) -> Option<Vec<String>> {
        let mut problems = Vec::new();
        for (m, member) in partition.members.iter().enumerate() {
            let held: BTreeSet<String> = match &surveyed[m] {
                Ok(objects) => objects.iter().map(ObjectDescription::object_uid).collect(),
                Err(reason) => {
                    problems.push(format!("{}: {reason}", member.partition_label));
                    continue;
                }
            };
            let mut cloned: BTreeSet<String> = BTreeSet::new();
            for (h, holder) in partition.members.iter().enumerate() {
                let Ok(objects) = &surveyed[h] else { continue };
                for object in objects {
                    let uid = object.object_uid();
                    if h == m || held.contains(&uid) || cloned.contains(&uid) {
                        continue;
                    }
                    if stop() {
                        return None;
                    }
                    let copied = self
                        .tokens
                        .member(partition.connection_id, holder)
                        .map_err(TransferRefused::from)
                        .and_then(|source| {
                            let target = self.tokens.member(partition.connection_id, member)?;
                            crate::transfer::transfer(
                                source.as_ref(),
                                &holder.serial_number,
                                target.as_ref(),
                                &member.serial_number,
                                object,
                            )
                        });
                    match copied {
                        Ok(_) => {
                            cloned.insert(uid);
                        }
                        Err(reason) => problems.push(format!(
                            "{} could not get {:?} ({uid}): {reason}",
                            member.partition_label, object.label
                        )),
                    }
                }
            }
        }
        Some(problems)
    }

    /// What every member holds (its key objects, or why it could not be
    /// read); `None` if the job was cancelled meanwhile; the failure to wait
    /// on if a member's token is away, or went away while it was scanned
    /// (what such a scan saw proves nothing: SoftHSM2 answers a scan of a
    /// token whose store went away with fewer objects, or none). With `known` (a
    /// refresh: the objects the records named before the scan), objects on
    /// the first member that no record knows are recorded while the scan goes
    /// on (a writer thread beside the token's), so a refresh costs little more
    /// than the scan; the plan made afterwards completes and corrects them.
    fn survey(
        &self,
        partition: &Partition,
        stop: &dyn Fn() -> bool,
        known: Option<&BTreeSet<String>>,
    ) -> Result<Option<Vec<MemberObjects>>, Failure> {
        let scope = refresh_scope(partition);
        let mut views = Vec::with_capacity(partition.members.len());
        for (m, member) in partition.members.iter().enumerate() {
            let token = match self.tokens.member(partition.connection_id, member) {
                Ok(token) => token,
                Err(away @ Failure::Away { .. }) => return Err(away),
                Err(failure) => {
                    views.push(Err(failure.reason().to_owned()));
                    continue;
                }
            };
            let outages = token.reachability().outages;
            let mut objects = Vec::new();
            let mut cancelled = false;
            let stream = known.filter(|_| m == 0);
            let scanned = std::thread::scope(|threads| {
                let (early, writes) = std::sync::mpsc::channel::<Vec<luna_domain::Key>>();
                let writer = stream.map(|_| {
                    let store = self.store.clone();
                    threads.spawn(move || {
                        for batch in writes {
                            // Only an optimisation: what fails here, the plan writes later.
                            // A create accepted since `known` was read has its record.
                            if let Err(error) = store.insert_unrecorded_keys(scope.partition_id, &batch) {
                                tracing::warn!(%error, "recording objects during a refresh failed");
                            }
                        }
                    })
                });
                let scanned = token.scan_described(BATCH, &mut |described| {
                    // Keys only, and never a cloning domain key (CKA_TRUSTED).
                    let keys: Vec<ObjectDescription> = described
                        .into_iter()
                        .filter(|d| d.object_type.is_some() && !d.trusted)
                        .collect();
                    if let Some(known) = stream {
                        let now = luna_store::now();
                        let fresh: Vec<luna_domain::Key> = keys
                            .iter()
                            .filter_map(observed)
                            .filter(|o| !known.contains(&o.object_uid))
                            .map(|o| first_sight(&scope, &o, Uuid::now_v7(), now))
                            .collect();
                        if !fresh.is_empty() {
                            let _ = early.send(fresh);
                        }
                    }
                    objects.extend(keys);
                    if stop() {
                        cancelled = true;
                        return ControlFlow::Break(());
                    }
                    ControlFlow::Continue(())
                });
                drop(early);
                if let Some(writer) = writer {
                    let _ = writer.join();
                }
                scanned
            });
            if cancelled {
                return Ok(None);
            }
            let scanned = match scanned {
                Err(e) if e.away().is_some() || e.is_interrupted() => return Err(Failure::token(e)),
                scanned => scanned,
            };
            // A token whose store went away can still answer a scan, with
            // fewer objects or none (SoftHSM2 does): a scan counts only if the
            // token answers a look after it, and did not go away meanwhile.
            let after = token.probe();
            if !after.is_reachable() || after.outages != outages {
                return Err(Failure::Interrupted(format!(
                    "partition {:?} (serial {}) went away during the scan{}; the scan starts again",
                    member.partition_label,
                    member.serial_number,
                    after.last_error.map(|e| format!(" ({e})")).unwrap_or_default()
                )));
            }
            views.push(match scanned {
                Err(e) => Err(format!("the member could not be read: {e}")),
                Ok(_) => Ok(objects),
            });
        }
        Ok(Some(views))
    }

    fn reconcile(
        &self,
        partition: &Partition,
        before: &BeforeScan,
        views: &[MemberScan],
    ) -> Result<(), String> {
        let scope = refresh_scope(partition);
        let records = self
            .store
            .keys_of_partition(partition.id)
            .map_err(|e| format!("the key records could not be read: {e}"))?;
        let mut planned = plan(&scope, before, &records, views, luna_store::now(), Uuid::now_v7);
        // A second look before a key ends DELETED: a scan can miss an object
        // another process was writing as it read the token (two instances on
        // one SoftHSM2 token did); looked up by its CKA_ID, it is found.
        planned.updated.retain(|(key, _)| {
            key.lifecycle().status() != KeyStatus::Deleted || !self.still_held(partition, key)
        });
        // And only from tokens the module still lists (a store gone away
        // answers a lookup with nothing, too).
        let vanishing = planned
            .updated
            .iter()
            .any(|(k, _)| k.lifecycle().status() == KeyStatus::Deleted);
        if vanishing && !self.every_member_answers(partition) {
            planned
                .updated
                .retain(|(k, _)| k.lifecycle().status() != KeyStatus::Deleted);
        }
        self.store
            .apply_refresh(&planned.inserted, &planned.updated)
            .map_err(|e| format!("the key records could not be written: {e}"))?;
        Ok(())
    }

    /// Whether every member's token answers a look now.
    fn every_member_answers(&self, partition: &Partition) -> bool {
        partition.members.iter().all(|m| {
            self.tokens
                .member(partition.connection_id, m)
                .is_ok_and(|token| token.probe().is_reachable())
        })
    }

    /// Whether any member still holds the key's object, by a lookup of its
    /// `CKA_ID`; a member that cannot be asked counts as holding it (nothing
    /// is concluded from silence). Objects without a `CKA_ID` have no second
    /// look.
    fn still_held(&self, partition: &Partition, key: &Key) -> bool {
        if key.cka_id.is_empty() {
            return false;
        }
        partition.members.iter().any(|member| {
            self.tokens
                .member(partition.connection_id, member)
                .ok()
                .and_then(|token| token.find_by_id(&key.cka_id).ok())
                .is_none_or(|found| found.iter().any(|d| d.object_type == key.object_type))
        })
    }
}
