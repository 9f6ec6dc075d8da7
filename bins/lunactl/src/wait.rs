//! `--wait`: polls a key's operation or a job until it ends, showing progress
//! on stderr, and turns a failure or cancellation into an error.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use luna_domain::JobStatus;
use serde_json::Value;

use crate::client::Client;

const POLL: Duration = Duration::from_millis(250);

/// Shows one progress line: rewritten in place on a terminal, printed when it
/// changes otherwise (a CI log keeps each step once).
#[derive(Debug)]
struct Progress {
    terminal: bool,
    last: String,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            terminal: std::io::stderr().is_terminal(),
            last: String::new(),
        }
    }

    fn show(&mut self, line: String) {
        if line == self.last {
            return;
        }
        let mut stderr = std::io::stderr();
        if self.terminal {
            let _ = write!(stderr, "\r\x1b[2K{line}");
        } else {
            let _ = writeln!(stderr, "{line}");
        }
        let _ = stderr.flush();
        self.last = line;
    }

    fn done(&self) {
        if self.terminal && !self.last.is_empty() {
            let _ = writeln!(std::io::stderr());
        }
    }
}

/// Waits for the key's current operation; returns the final record.
pub fn key(client: &mut Client, id: &str) -> Result<Value> {
    let started = Instant::now();
    let mut progress = Progress::new();
    let path = format!("/api/v1/cckm/hsm/luna/keys/{id}");
    loop {
        let key = client.call("GET", &path, &[], None)?;
        let operation = key["operation"].as_str().unwrap_or("");
        // A create reports "" while it runs and "created" when done.
        let state = key["operation_status"].as_str().unwrap_or("");
        progress.show(format!(
            "key {id}: {operation} {} ({:.1} s)",
            if state.is_empty() { "in_progress" } else { state },
            started.elapsed().as_secs_f64()
        ));
        match state {
            "" | "in_progress" => std::thread::sleep(POLL),
            "failed" => {
                progress.done();
                bail!(
                    "{operation} of key {id} failed: {}",
                    key["operation_error"].as_str().unwrap_or("no reason given")
                );
            }
            _ => {
                progress.done();
                return Ok(key);
            }
        }
    }
}

/// Waits for a job (`collection` is its list path) to end; returns how it
/// ended and its final record.
pub fn job(client: &mut Client, collection: &str, id: &str) -> Result<(JobStatus, Value)> {
    let started = Instant::now();
    let mut progress = Progress::new();
    let path = format!("{collection}/{id}");
    loop {
        let job = client.call("GET", &path, &[], None)?;
        let text = job["overall_status"].as_str().unwrap_or("");
        let status: JobStatus = match text.parse() {
            Ok(status) => status,
            Err(_) => bail!("the server reported job status {text:?}, which lunactl does not know"),
        };
        let partitions: Vec<String> = job["detailed_status"]
            .as_object()
            .map(|d| {
                d.iter()
                    .map(|(partition, state)| format!("{partition}: {}", state.as_str().unwrap_or("")))
                    .collect()
            })
            .unwrap_or_default();
        progress.show(format!(
            "job {id}: {text} ({:.1} s){}{}",
            started.elapsed().as_secs_f64(),
            if partitions.is_empty() { "" } else { " | " },
            partitions.join(" | ")
        ));
        if status == JobStatus::InProgress {
            std::thread::sleep(POLL);
        } else {
            progress.done();
            return Ok((status, job));
        }
    }
}
