-- Schedules: CipherTrust's scheduler job configs (/api/v1/scheduler/job-configs),
-- each starting a refresh or ha_synchronize job on a five-field cron timetable.
CREATE TABLE schedules (
    id TEXT PRIMARY KEY NOT NULL,
    name TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL,
    run_at TEXT NOT NULL,
    start_date BIGINT,
    end_date BIGINT,
    disabled BOOLEAN NOT NULL,
    run_on TEXT NOT NULL,
    job_type TEXT NOT NULL,
    -- A JSON list of partition ids; NULL: every partition, when it fires.
    partitions TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    -- Every firing up to here has been handled: the column instances
    -- compare-and-set, so that one alone handles each firing.
    fired_through BIGINT NOT NULL,
    -- The next firing not handled yet (past while firings were missed);
    -- NULL when there is none (disabled, past its end_date).
    next_run_at BIGINT,
    last_run_at BIGINT,
    last_job_id TEXT,
    -- 'started', 'skipped: <why>' or 'failed: <why>'.
    last_outcome TEXT
);
CREATE INDEX schedules_next_run ON schedules (next_run_at);
CREATE INDEX schedules_created ON schedules (created_at, id);

-- The schedule whose firing started a job, and its name then.
ALTER TABLE jobs ADD COLUMN schedule_id TEXT;
ALTER TABLE jobs ADD COLUMN schedule_name TEXT;
