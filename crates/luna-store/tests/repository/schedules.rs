//! Schedules: kept, listed, changed and deleted; each firing handled by one
//! instance alone; a firing skipped while its job runs; missed firings
//! caught up once.

use luna_domain::query::ScheduleFilters;
use luna_domain::schedule::{RunOutcome, Schedule, ScheduleRequest, SynchronizationParams};

use super::*;

/// A schedule of `run_at` over `partitions` (every one when empty), made at `at`.
fn schedule(name: &str, run_at: &str, partitions: &[Uuid], at: OffsetDateTime) -> Schedule {
    ScheduleRequest {
        name: Some(name.into()),
        operation: Some("cckm_synchronization".into()),
        run_at: Some(run_at.into()),
        params: Some(SynchronizationParams {
            cloud_name: Some("luna".into()),
            partitions: (!partitions.is_empty()).then(|| partitions.iter().map(Uuid::to_string).collect()),
            synchronize_all: partitions.is_empty().then_some(true),
            ..SynchronizationParams::default()
        }),
        ..ScheduleRequest::default()
    }
    .create(Uuid::new_v4(), at)
    .unwrap()
}

/// Fires the schedule (as stored now) at `at` on `store`, if it is due then.
fn fire(store: &Store, id: Uuid, at: OffsetDateTime) -> Option<RunOutcome> {
    let stored = store.get_schedule(id).unwrap().unwrap();
    let firing = stored.due(at)?;
    store
        .fire_schedule(&stored, firing, Uuid::new_v4(), now(), &test_audit())
        .unwrap()
        .map(|run| run.outcome)
}

on_both_backends! {
    fn a_schedule_is_kept_listed_changed_and_deleted(store: &Store, _db: &TestDatabase) {
        let t0 = now();
        let nightly = schedule("nightly", "0 2 * * *", &[], t0);
        store.insert_schedule(&nightly, &test_audit()).unwrap();
        assert_eq!(store.get_schedule(nightly.id).unwrap().as_ref(), Some(&nightly));
        let again = schedule("nightly", "0 3 * * *", &[], t0);
        assert!(matches!(store.insert_schedule(&again, &test_audit()), Err(StoreError::Conflict(m)) if m.contains("\"nightly\"")));
        let weekly = schedule("weekly", "0 2 * * sat", &[Uuid::new_v4()], t0);
        store.insert_schedule(&weekly, &test_audit()).unwrap();

        let listed = |q: &str| store.list_schedules(&query::<ScheduleFilters>(q)).unwrap();
        assert_eq!(listed("").total, 2);
        assert_eq!(listed("sort=name").items[0].name, "nightly");
        assert_eq!(listed("name=weekly").items, vec![weekly.clone()]);
        assert_eq!(listed("operation=cckm_key_rotation").total, 0);
        assert_eq!(listed("operation=cckm_synchronization").total, 2);

        let later = t0 + Duration::minutes(5);
        let disable = |s: &Schedule| ScheduleRequest { disabled: Some(true), ..ScheduleRequest::default() }.change(s, later);
        let disabled = store.update_schedule(weekly.id, disable, &test_audit()).unwrap().unwrap();
        assert!(disabled.timetable.disabled && disabled.next_run_at().is_none());
        assert_eq!(store.get_schedule(weekly.id).unwrap(), Some(disabled));
        assert_eq!(listed("disabled=true").items[0].id, weekly.id);
        let rename = |s: &Schedule| ScheduleRequest { name: Some("nightly".into()), ..ScheduleRequest::default() }.change(s, later);
        assert!(matches!(store.update_schedule(weekly.id, rename, &test_audit()), Err(StoreError::Conflict(_))));
        assert_eq!(store.update_schedule(Uuid::new_v4(), disable, &test_audit()).unwrap(), None);
        // Nothing is due: neither is disabled... nor at 02:00 yet, at the earliest.
        assert!(store.due_schedules(t0, "an-instance", 10).unwrap().is_empty());
        assert_eq!(store.next_schedule_run("an-instance").unwrap(), nightly.next_run_at());

        assert!(store.delete_schedule(weekly.id, &test_audit()).unwrap());
        assert!(!store.delete_schedule(weekly.id, &test_audit()).unwrap());
        assert_eq!(listed("").total, 1);
    }

    fn a_firing_while_its_job_runs_is_skipped_and_missed_firings_run_once(store: &Store, _db: &TestDatabase) {
        let partition = registered_partition(store, "hsm-scheduled");
        let t0 = OffsetDateTime::from_unix_timestamp(1_796_000_000).unwrap(); // 2026-11-30 00:53:20 UTC
        let every5 = schedule("every-5", "*/5 * * * *", &[partition.id], t0);
        store.insert_schedule(&every5, &test_audit()).unwrap();
        assert_eq!(fire(store, every5.id, t0 + Duration::minutes(1)), None, "not due before 00:55");

        let Some(RunOutcome::Started(first)) = fire(store, every5.id, t0 + Duration::minutes(2)) else {
            panic!("the 00:55 firing starts a job");
        };
        let started = store.get_job(first).unwrap().unwrap();
        assert_eq!(started.scheduled_by.as_ref().map(|s| (s.id, s.name.as_str())), Some((every5.id, "every-5")));
        assert_eq!(started.partitions, vec![partition.id]);

        let Some(RunOutcome::Skipped(why)) = fire(store, every5.id, t0 + Duration::minutes(7)) else {
            panic!("the 01:00 firing is skipped while the first job runs");
        };
        assert!(why.contains(&first.to_string()), "{why}");
        let stored = store.get_schedule(every5.id).unwrap().unwrap();
        assert_eq!(stored.last_run.map(|r| r.outcome), Some(RunOutcome::Skipped(why)));

        // The job ends; every instance is then down for a day.
        let mut ended = store.get_job(first).unwrap().unwrap();
        ended.apply(JobEvent::Complete, now()).unwrap();
        assert!(store.save_job(&ended).unwrap());
        let a_day_later = t0 + Duration::days(1) + Duration::minutes(3);
        let Some(RunOutcome::Started(caught_up)) = fire(store, every5.id, a_day_later) else {
            panic!("the firings missed give one run");
        };
        let stored = store.get_schedule(every5.id).unwrap().unwrap();
        assert_eq!(stored.fired_through, t0 + Duration::days(1) + Duration::seconds(100), "the latest missed firing, 00:55 a day later");
        assert_eq!(fire(store, every5.id, a_day_later), None, "one run, not one per missed firing");
        assert_eq!(store.job_statuses(&[first, caught_up]).unwrap().len(), 2);

        // Another job of the type on the partition: skipped, saying which.
        let mut running = store.get_job(caught_up).unwrap().unwrap();
        running.apply(JobEvent::Complete, now()).unwrap();
        store.save_job(&running).unwrap();
        let (manual, op) = job(JobType::Refresh, vec![partition.id]);
        store.insert_job_with_operation(&manual, &op, &test_audit()).unwrap();
        let Some(RunOutcome::Skipped(why)) = fire(store, every5.id, a_day_later + Duration::minutes(5)) else {
            panic!("skipped while another refresh runs on the partition");
        };
        assert!(why.contains(&manual.id.to_string()) && why.contains(&partition.id.to_string()), "{why}");

        // A partition named that no longer exists: the firing fails, saying so.
        let gone = schedule("gone", "*/5 * * * *", &[Uuid::new_v4()], t0);
        store.insert_schedule(&gone, &test_audit()).unwrap();
        let Some(RunOutcome::Failed(why)) = fire(store, gone.id, t0 + Duration::minutes(2)) else {
            panic!("a firing over a partition that is gone fails");
        };
        assert!(why.contains("no longer exists"), "{why}");
    }

    // A change that lands between an instance's read and its firing wins:
    // the firing starts nothing from the old settings, and the next look
    // fires the new ones. A change of the description after a firing is no
    // conflict; a schedule pinned to another instance is not this one's.
    fn a_firing_never_starts_a_job_from_settings_changed_since_it_read_them(store: &Store, _db: &TestDatabase) {
        let t0 = OffsetDateTime::from_unix_timestamp(1_796_000_000).unwrap();
        let first = registered_partition(store, "hsm-first");
        let second = registered_partition(store, "hsm-second");
        let s = schedule("moving", "*/5 * * * *", &[first.id], t0);
        store.insert_schedule(&s, &test_audit()).unwrap();
        let at = t0 + Duration::minutes(2);
        let read = store.due_schedules(at, "a", 10).unwrap().remove(0);
        let move_to_second = |stored: &Schedule| {
            ScheduleRequest {
                params: Some(SynchronizationParams { partitions: Some(vec![second.id.to_string()]), ..SynchronizationParams::default() }),
                ..ScheduleRequest::default()
            }
            .change(stored, t0 + Duration::minutes(1))
        };
        store.update_schedule(s.id, move_to_second, &test_audit()).unwrap().unwrap();
        let stale = store.fire_schedule(&read, read.due(at).unwrap(), Uuid::new_v4(), now(), &test_audit()).unwrap();
        assert_eq!(stale, None, "read before the change: no job from the old partitions");
        let Some(RunOutcome::Started(job)) = fire(store, s.id, at) else { panic!("the next look fires") };
        assert_eq!(store.get_job(job).unwrap().unwrap().partitions, vec![second.id]);

        let describe = |stored: &Schedule| ScheduleRequest { description: Some("moved".into()), ..ScheduleRequest::default() }.change(stored, now());
        assert!(store.update_schedule(s.id, describe, &test_audit()).unwrap().is_some(), "after a firing, a description is no conflict");

        let pinned = ScheduleRequest { run_on: Some("b".into()), ..ScheduleRequest::default() };
        store.update_schedule(s.id, |stored: &Schedule| pinned.clone().change(stored, now()), &test_audit()).unwrap();
        let later = t0 + Duration::hours(1);
        assert!(store.due_schedules(later, "a", 10).unwrap().is_empty(), "pinned to b");
        assert_eq!(store.due_schedules(later, "b", 10).unwrap().len(), 1);
        assert_eq!(store.next_schedule_run("a").unwrap(), None);
    }

    // A write whose work panics (a bug) leaves no batch half-formed: the
    // next write of the process goes through, and the panicked one's
    // change is not kept.
    fn a_write_that_panics_does_not_hold_up_the_writes_after_it(store: &Store, _db: &TestDatabase) {
        let kept = schedule("kept", "0 2 * * *", &[], now());
        store.insert_schedule(&kept, &test_audit()).unwrap();
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| store.write_that_panics()));
        assert!(panicked.is_err());
        let (done, finished) = std::sync::mpsc::channel();
        let writer = store.clone();
        // Detached: a write held up forever fails the test instead of hanging it.
        std::thread::spawn(move || {
            let next = schedule("next", "0 3 * * *", &[], now());
            let _ = done.send(writer.insert_schedule(&next, &test_audit()));
        });
        let written = finished.recv_timeout(std::time::Duration::from_secs(20)).expect("the write after a panic went through");
        written.unwrap();
        assert!(store.get_schedule(kept.id).unwrap().is_some(), "the panicked write's delete was rolled back");
    }

    fn each_firing_is_handled_by_one_instance_alone(store: &Store, db: &TestDatabase) {
        let other = db.second_store().unwrap();
        let t0 = OffsetDateTime::from_unix_timestamp(1_796_000_000).unwrap();
        let ids: Vec<Uuid> = (0..8)
            .map(|i| {
                let partition = registered_partition(store, &format!("hsm-race-{i}"));
                let s = schedule(&format!("race-{i}"), "* * * * *", &[partition.id], t0);
                store.insert_schedule(&s, &test_audit()).unwrap();
                s.id
            })
            .collect();
        for round in 1..=3 {
            let at = t0 + Duration::minutes(round);
            let both_read = std::sync::Barrier::new(2);
            let handled: Vec<Vec<Uuid>> = std::thread::scope(|s| {
                let runs: Vec<_> = [store, &other]
                    .into_iter()
                    .map(|instance| {
                        let both_read = &both_read;
                        s.spawn(move || {
                            let due = instance.due_schedules(at, "an-instance", 100).unwrap();
                            both_read.wait();
                            due.iter()
                                .filter_map(|schedule| {
                                    let firing = schedule.due(at).unwrap();
                                    instance
                                        .fire_schedule(schedule, firing, Uuid::new_v4(), now(), &test_audit())
                                        .unwrap()
                                        .map(|_| schedule.id)
                                })
                                .collect()
                        })
                    })
                    .collect();
                runs.into_iter().map(|r| r.join().unwrap()).collect()
            });
            let mut all: Vec<Uuid> = handled.concat();
            all.sort();
            let mut expected = ids.clone();
            expected.sort();
            assert_eq!(all, expected, "round {round}: each schedule's firing handled once, by one of the two");
        }
        let jobs = store.list_jobs(JobType::Refresh, &query::<JobFilters>("limit=100")).unwrap();
        assert_eq!(jobs.total, 8, "one job per schedule; the next rounds skipped while it ran");
    }
}
