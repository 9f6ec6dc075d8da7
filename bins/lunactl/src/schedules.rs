//! `lunactl schedules`: CipherTrust's scheduler job configs, as this
//! service runs them (a Luna refresh or ha_synchronize on a timetable).

use anyhow::Result;
use serde_json::{json, Map, Value};

use crate::cli::{ScheduleFields, SchedulesCommand};
use crate::client::Client;
use crate::output::{self, Format, Kind};

const SCHEDULES: &str = "/api/v1/scheduler/job-configs";

/// The body fields `fields` gives (those not given are left out: on an
/// update, they stay as they are).
fn body(fields: ScheduleFields) -> Map<String, Value> {
    let mut body = Map::new();
    for (name, given) in [
        ("run_at", fields.run_at),
        ("start_date", fields.start_date),
        ("end_date", fields.end_date),
        ("description", fields.description),
        ("run_on", fields.run_on),
    ] {
        if let Some(value) = given {
            body.insert(name.into(), json!(value));
        }
    }
    let mut params = Map::new();
    if let Some(job_type) = fields.job_type {
        params.insert("job_type".into(), json!(job_type));
    }
    if fields.all {
        params.insert("synchronize_all".into(), json!(true));
    } else if !fields.partitions.is_empty() {
        params.insert("partitions".into(), json!(fields.partitions));
    }
    if !params.is_empty() {
        params.insert("cloud_name".into(), json!("luna"));
        body.insert("cckm_synchronization_params".into(), Value::Object(params));
    }
    body
}

pub(crate) fn run(client: &mut Client, command: SchedulesCommand, format: Format) -> Result<String> {
    let patch = |client: &mut Client, id: &str, body: Value| {
        client.call("PATCH", &format!("{SCHEDULES}/{id}"), &[], Some(&body))
    };
    let answer = match command {
        SchedulesCommand::Create {
            name,
            fields,
            disabled,
        } => {
            if !fields.all && fields.partitions.is_empty() {
                anyhow::bail!(
                    "give --all (every partition when it fires) or --partition ID (repeat for more)"
                );
            }
            let mut body = body(fields);
            body.insert("name".into(), json!(name));
            body.insert("operation".into(), json!("cckm_synchronization"));
            body.insert("disabled".into(), json!(disabled));
            client.call("POST", SCHEDULES, &[], Some(&Value::Object(body)))?
        }
        SchedulesCommand::List(list) => {
            return crate::list_page(client, SCHEDULES, &list, Kind::Schedule, format)
        }
        SchedulesCommand::Get { id } => crate::get(client, SCHEDULES, &id)?,
        SchedulesCommand::Update { id, name, fields } => {
            let mut body = body(fields);
            if let Some(name) = name {
                body.insert("name".into(), json!(name));
            }
            patch(client, &id, Value::Object(body))?
        }
        SchedulesCommand::Disable { id } => patch(client, &id, json!({"disabled": true}))?,
        SchedulesCommand::Enable { id } => patch(client, &id, json!({"disabled": false}))?,
        SchedulesCommand::Delete { id } => {
            crate::delete(client, SCHEDULES, &id)?;
            return Ok(format!("schedule {id} deleted\n"));
        }
    };
    Ok(output::record(&answer, format))
}
