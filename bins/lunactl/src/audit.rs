//! `lunactl audit tail`: the audit trail's new records, followed as they are
//! written.

use super::*;

/// The records the trail holds past `after` (all of them, however many were
/// written since: newest-first pages are read back until `after` is reached),
/// oldest first.
fn audit_records_after(client: &mut Client, after: i64) -> Result<Vec<Value>> {
    const PAGE: i64 = 500;
    let mut newer = Vec::new();
    for skip in (0..).step_by(PAGE as usize) {
        let query = [
            ("limit".to_owned(), PAGE.to_string()),
            ("skip".to_owned(), skip.to_string()),
        ];
        let page = client.call("GET", "/api/v1/audit/records", &query, None)?;
        let records = page["resources"].as_array().cloned().unwrap_or_default();
        let reached = records.len() < PAGE as usize
            || records
                .iter()
                .any(|r| r["seq"].as_i64().is_some_and(|seq| seq <= after));
        newer.extend(
            records
                .into_iter()
                .filter(|r| r["seq"].as_i64().is_some_and(|seq| seq > after)),
        );
        if reached {
            break;
        }
    }
    // Records written between two pages push the next page down: one may
    // be read twice, none missed.
    newer.sort_by_key(|r| r["seq"].as_i64());
    newer.dedup_by_key(|r| r["seq"].as_i64());
    Ok(newer)
}

/// `audit tail`: the last `lines` records, then every new one, until
/// interrupted or the server cannot be asked.
pub(crate) fn tail(
    client: &mut Client,
    lines: u32,
    interval: std::time::Duration,
    format: Format,
) -> Result<String> {
    let newest = client.call(
        "GET",
        "/api/v1/audit/records",
        &[("limit".to_owned(), "1".to_owned())],
        None,
    )?;
    let head = newest["resources"][0]["seq"].as_i64().unwrap_or(0);
    let mut after = (head - i64::from(lines)).max(0);
    loop {
        for record in audit_records_after(client, after)? {
            // A reader that has gone (a closed pipe) ends the tail.
            writeln!(
                std::io::stdout(),
                "{}",
                output::line(&record, Kind::Audit, format)
            )
            .context("writing to standard output")?;
            after = record["seq"].as_i64().unwrap_or(after);
        }
        std::thread::sleep(interval);
    }
}
