//! lunactl's commands and flags, as clap parses them; main.rs runs them.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use luna_domain::query::{
    AuditFilters, ConnectionFilters, JobFilters, KeyFilters, PartitionFilters, ScheduleFilters,
    ServerFilters, UserFilters,
};

use crate::list_args::ListArgs;
use crate::output::Format;

#[derive(Debug, Parser)]
#[command(name = "lunactl", version, about = "The luna-cckm command line")]
pub(crate) struct Cli {
    /// The server; defaults to the one of the saved login, else https://127.0.0.1:8443.
    #[arg(long, global = true, env = "LUNACTL_SERVER")]
    pub(crate) server: Option<String>,
    /// PEM file of the CA (or the self-signed certificate) the server's certificate chains to.
    #[arg(long, global = true, env = "LUNACTL_CA_FILE")]
    pub(crate) ca_file: Option<PathBuf>,
    /// Do not check the server's certificate (as curl -k).
    #[arg(long, global = true)]
    pub(crate) insecure: bool,
    /// Output: a readable table, or the server's JSON.
    #[arg(short, long, global = true, value_enum, default_value_t = Format::Table)]
    pub(crate) output: Format,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Logs in; the password comes from LUNACTL_PASSWORD or the first line of stdin.
    Login {
        #[arg(long, default_value = "admin")]
        username: String,
    },
    /// Ends the saved login on the server and forgets it here.
    Logout,
    /// The server's health (no login needed).
    Health,
    /// Luna HSM keys: create, list, get, update, replicate, destroy, forget.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Refresh jobs: read what the tokens hold into CCKM.
    #[command(subcommand)]
    Refresh(JobCommand),
    /// Synchronize jobs: copy keys between the members of HA partitions.
    #[command(subcommand)]
    Synchronize(JobCommand),
    /// Refresh and synchronize on a timetable (CipherTrust's scheduler job configs).
    #[command(subcommand)]
    Schedules(SchedulesCommand),
    /// AWS KMS external key stores served by this XKS proxy, and their credentials (admin only).
    #[command(subcommand)]
    Keystores(KeystoresCommand),
    /// CCKM partitions.
    #[command(subcommand)]
    Partitions(PartitionsCommand),
    /// Luna Network HSM servers, which connections may name (admin only).
    #[command(subcommand)]
    Servers(ServersCommand),
    /// Luna network connections (admin only).
    #[command(subcommand)]
    Connections(ConnectionsCommand),
    /// Users and their groups (admin only).
    #[command(subcommand)]
    Users(UsersCommand),
    /// The audit trail (admin only).
    #[command(subcommand)]
    Audit(AuditCommand),
}

#[derive(Debug, Subcommand)]
pub(crate) enum KeysCommand {
    /// Creates a key (or an RSA pair) on a partition.
    Create {
        #[arg(long)]
        partition_id: String,
        #[arg(long, help = "CKM_AES_KEY_GEN, CKM_RSA_PKCS_KEY_PAIR_GEN, …")]
        mechanism: String,
        #[arg(long)]
        size: i64,
        #[arg(long)]
        label: String,
        /// A PKCS#11 attribute to set true (CKA_ENCRYPT, …); repeat for more.
        #[arg(long = "attribute")]
        attributes: Vec<String>,
        #[arg(long)]
        wait: bool,
    },
    /// Lists keys; every filter of the API is a flag.
    List(ListArgs<KeyFilters>),
    Get {
        id: String,
    },
    /// Changes boolean attributes: --set CKA_SIGN=true (repeat for more).
    Update {
        id: String,
        #[arg(long = "set", value_name = "CKA_NAME=true|false", required = true)]
        changes: Vec<String>,
        #[arg(long)]
        wait: bool,
    },
    /// Copies the key to the HA members that lack it.
    Replicate {
        id: String,
        #[arg(long)]
        wait: bool,
    },
    /// Forgets the key's records here; its objects stay on the tokens
    /// (`DELETE /keys/{id}`).
    Forget {
        id: String,
    },
    /// Destroys the key's objects on the tokens (`POST /{id}/delete`); the
    /// record then says DELETED.
    Destroy {
        id: String,
        #[arg(long)]
        wait: bool,
    },
    /// Not a command: "delete" meant either; it says which to use.
    #[command(hide = true)]
    Delete {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        rest: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum JobCommand {
    /// Starts a job over the partitions named, or all of them.
    Start {
        #[arg(long = "partition", required_unless_present = "all", conflicts_with = "all")]
        partitions: Vec<String>,
        #[arg(long)]
        all: bool,
        #[arg(long)]
        wait: bool,
    },
    List(ListArgs<JobFilters>),
    Get {
        id: String,
    },
    /// Asks the job to stop at its next batch.
    Cancel {
        id: String,
        #[arg(long)]
        wait: bool,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum PartitionsCommand {
    /// Adds the partition of a connection (id or name).
    Add {
        #[arg(long)]
        connection: String,
    },
    List(ListArgs<PartitionFilters>),
    Get {
        id: String,
    },
    /// Forgets the partition and its keys here; the tokens are not touched.
    Forget {
        id: String,
    },
    /// Not a command: it says to use forget.
    #[command(hide = true)]
    Delete {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        rest: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum ConnectionsCommand {
    /// Registers a connection; its partitions' PIN comes from LUNACTL_PIN or the
    /// first line of stdin, a cloning domain's SO PIN from LUNACTL_SO_PIN.
    Create {
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "")]
        description: String,
        /// A member token: LABEL:SERIAL or LABEL:SERIAL@HOST; repeat for an HA group.
        #[arg(long = "member", required = true)]
        members: Vec<String>,
        #[arg(long)]
        ha: bool,
        #[arg(long)]
        remap_rsa_mechanisms: bool,
    },
    List(ListArgs<ConnectionFilters>),
    Get {
        id: String,
    },
    Delete {
        id: String,
    },
    /// Logs in to every member now with the stored PIN; exits non-zero if one fails.
    Test {
        id: String,
    },
    /// Changes the description, or (with --rotate-pin) the PIN after the
    /// HSM's was changed: the new one comes from LUNACTL_PIN or stdin.
    Update {
        id: String,
        #[arg(long)]
        description: Option<String>,
        #[arg(long)]
        rotate_pin: bool,
    },
    /// Adds a member token to an HA connection: LABEL:SERIAL or LABEL:SERIAL@HOST;
    /// the cloning domain's SO PIN from LUNACTL_SO_PIN.
    AddMember {
        id: String,
        member: String,
    },
    /// Removes the member token with this serial number from a connection.
    RemoveMember {
        id: String,
        serial: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum ServersCommand {
    /// Registers an HSM: its hostname and its server certificate (a PEM file).
    Add {
        #[arg(long)]
        hostname: String,
        /// The HSM's server certificate, PEM (as `scp admin@hsm:server.pem` fetches it).
        #[arg(long)]
        certificate: std::path::PathBuf,
        #[arg(long, default_value = "")]
        description: String,
    },
    List(ListArgs<ServerFilters>),
    Get {
        id: String,
    },
    Delete {
        id: String,
    },
}

/// What a schedule does and when: the fields `create` needs and `update` may change.
#[derive(Debug, clap::Args)]
pub(crate) struct ScheduleFields {
    /// Five-field cron, read in UTC: minute hour day-of-month month day-of-week ("0 2 * * sat").
    #[arg(long)]
    pub(crate) run_at: Option<String>,
    /// A partition id each firing covers; repeat for more.
    #[arg(long = "partition", conflicts_with = "all")]
    pub(crate) partitions: Vec<String>,
    /// Every partition registered when it fires.
    #[arg(long)]
    pub(crate) all: bool,
    /// refresh (the default) or ha_synchronize.
    #[arg(long)]
    pub(crate) job_type: Option<String>,
    /// RFC 3339: no firing before it ("" clears it).
    #[arg(long)]
    pub(crate) start_date: Option<String>,
    /// RFC 3339: no firing after it ("" clears it).
    #[arg(long)]
    pub(crate) end_date: Option<String>,
    #[arg(long)]
    pub(crate) description: Option<String>,
    /// any (the default), or the --instance-name of the one server that fires it.
    #[arg(long)]
    pub(crate) run_on: Option<String>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum SchedulesCommand {
    /// Makes a schedule: its name, --run-at, and --all or --partition.
    Create {
        #[arg(long)]
        name: String,
        #[command(flatten)]
        fields: ScheduleFields,
        /// Made disabled: it fires once enabled.
        #[arg(long)]
        disabled: bool,
    },
    List(ListArgs<ScheduleFilters>),
    /// A schedule, with its next run and its last run's outcome.
    Get {
        id: String,
    },
    /// Changes the fields given; a new timetable counts firings from now.
    Update {
        id: String,
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        fields: ScheduleFields,
    },
    /// Stops its firings until enabled.
    Disable {
        id: String,
    },
    /// Lets it fire again, from now on.
    Enable {
        id: String,
    },
    /// Deletes it; the jobs it started stay.
    Delete {
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum KeystoresCommand {
    /// Makes a keystore and its first credential, whose secret is printed once.
    Create {
        #[arg(long)]
        name: String,
        /// The path before /kms/xks/v1/ that AWS KMS is given ("" for the host's root).
        #[arg(long)]
        uri_path_prefix: String,
        /// The AWS region of the KMS that calls it (us-east-1).
        #[arg(long)]
        region: String,
        /// The partition whose AES-256 keys are its external keys.
        #[arg(long)]
        partition: String,
    },
    /// Every keystore and its credentials (never their secrets).
    List,
    /// One keystore and its credentials.
    Get { id: String },
    /// A new credential (its secret printed once); the newest before it stays valid for the overlap.
    Rotate {
        id: String,
        /// Hours the previous credential stays valid (24 when not given, at most 720).
        #[arg(long)]
        overlap_hours: Option<u32>,
    },
    /// Deletes the keystore: AWS KMS's calls to its path are refused from now on.
    Delete { id: String },
}

#[derive(Debug, Subcommand)]
pub(crate) enum UsersCommand {
    /// Creates a user; the password comes from LUNACTL_NEW_PASSWORD or the first line of stdin.
    Create {
        #[arg(long)]
        username: String,
        /// admin, CCKM Admins or CCKM Users; repeat for more.
        #[arg(long = "group")]
        groups: Vec<String>,
    },
    List(ListArgs<UserFilters>),
    Get {
        id: String,
    },
    Delete {
        id: String,
    },
    /// Changes a password. Your own (the logged-in user's, or --username's):
    /// the current password from LUNACTL_PASSWORD or stdin's first line, the
    /// new one from LUNACTL_NEW_PASSWORD or the next line. Another user's, by
    /// an administrator: --id, and only the new password. Either way the
    /// user's sessions end.
    Passwd {
        #[arg(long, conflicts_with = "id")]
        username: Option<String>,
        /// The user whose password an administrator resets.
        #[arg(long)]
        id: Option<String>,
    },
    /// Adds a user to a group (admin, CCKM Admins or CCKM Users); the user's sessions end.
    AddGroup {
        id: String,
        group: String,
    },
    /// Takes a user out of a group; the user's sessions end.
    RemoveGroup {
        id: String,
        group: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum AuditCommand {
    List(ListArgs<AuditFilters>),
    /// Prints the newest records, oldest first, then each new one as it is
    /// written, until interrupted (one line each; `-o json`: JSON Lines).
    Tail {
        /// How many of the existing records to print first.
        #[arg(long, short = 'n', default_value_t = 10, value_parser = clap::value_parser!(u32).range(0..=1000))]
        lines: u32,
        /// How often to look for new records, in milliseconds.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(100..=60_000))]
        interval_ms: u64,
    },
    /// Checks that every record follows from the one before.
    Verify,
}
