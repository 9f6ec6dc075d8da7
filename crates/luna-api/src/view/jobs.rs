//! Refresh and synchronize jobs, as the API shows them.

use super::*;

#[derive(Debug, Serialize, ToSchema)]
pub struct JobView {
    #[serde(flatten)]
    pub resource: Resource,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<String>,
    pub overall_status: &'static str,
    pub detailed_status: BTreeMap<String, String>,
    pub cloud: &'static str,
    pub partitions: Vec<String>,
    pub abort: bool,
    pub job_type: &'static str,
    /// The schedule (CipherTrust's job config) whose firing started the
    /// job; absent when a user started it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_config_id: Option<String>,
    /// That schedule's name when it fired.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_config_name: Option<String>,
}

impl JobView {
    pub fn new(job: &luna_domain::Job, tenancy: &Tenancy) -> JobView {
        JobView {
            resource: Resource::new("synchronize", job.id, job.created_at, job.updated_at, tenancy),
            completed_at: job.completed_at.map(timestamp),
            overall_status: job.lifecycle().status().as_str(),
            detailed_status: job
                .detailed_status
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            cloud: "hsm-luna",
            partitions: job.partitions.iter().map(Uuid::to_string).collect(),
            abort: job.lifecycle().cancel_requested(),
            job_type: job.job_type.as_str(),
            job_config_id: job.scheduled_by.as_ref().map(|s| s.id.to_string()),
            job_config_name: job.scheduled_by.as_ref().map(|s| s.name.clone()),
        }
    }
}
