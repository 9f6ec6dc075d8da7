//! Audit forwarding against real receivers: rsyslog (Debian's, started by
//! the test with a TCP and a TLS input, parsing RFC 5424) and a JSON-lines
//! file that is rotated under it. Every record arrives, in order of `seq`,
//! with its structured data intact; a receiver stopped 30 s under load loses
//! nothing; two instances forward each record once between them; no record
//! carries a password or a token.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use luna_api::forward::Sink;
use luna_api::on_both_backends;
use luna_api::testing::{Api, ADMIN_PASSWORD};
use luna_store::testing::TestDatabase;
use serde_json::{json, Value};

/// A port nobody listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// rsyslogd in the foreground, with one TCP input (TLS if given the CA,
/// certificate and key), writing what luna-cckm sends to `received.log`,
/// one line a message: app name, msgid, structured data, message.
struct Rsyslog {
    dir: PathBuf,
    port: u16,
    tls: Option<(PathBuf, PathBuf, PathBuf)>,
    child: Option<Child>,
}

impl Rsyslog {
    fn start(dir: &Path, tls: Option<(PathBuf, PathBuf, PathBuf)>) -> Rsyslog {
        let mut rsyslog = Rsyslog {
            dir: dir.to_owned(),
            port: free_port(),
            tls,
            child: None,
        };
        rsyslog.run();
        rsyslog
    }

    fn run(&mut self) {
        let dir = self.dir.display();
        let (global, module) = match &self.tls {
            None => (String::new(), r#"module(load="imtcp")"#.to_owned()),
            Some((ca, cert, key)) => (
                format!(
                    r#" DefaultNetstreamDriver="gtls" DefaultNetstreamDriverCAFile="{}" DefaultNetstreamDriverCertFile="{}" DefaultNetstreamDriverKeyFile="{}""#,
                    ca.display(),
                    cert.display(),
                    key.display()
                ),
                r#"module(load="imtcp" StreamDriver.Name="gtls" StreamDriver.Mode="1" StreamDriver.AuthMode="anon")"#.to_owned(),
            ),
        };
        let conf = format!(
            "global(workDirectory=\"{dir}\"{global})\n{module}\ninput(type=\"imtcp\" port=\"{}\")\n\
             template(name=\"audit\" type=\"string\" string=\"%app-name%\\t%msgid%\\t%structured-data%\\t%msg%\\n\")\n\
             if $app-name == \"luna-cckm\" then {{ action(type=\"omfile\" file=\"{dir}/received.log\" template=\"audit\") }}\n",
            self.port
        );
        std::fs::write(self.dir.join("rsyslog.conf"), conf).unwrap();
        let child = Command::new("rsyslogd")
            .args(["-n", "-f"])
            .arg(self.dir.join("rsyslog.conf"))
            .arg("-i")
            .arg(self.dir.join("rsyslog.pid"))
            .stdout(std::process::Stdio::null())
            // Its complaints (a refused TLS handshake is one the test makes) kept beside it.
            .stderr(std::fs::File::create(self.dir.join("rsyslog.err")).unwrap())
            .spawn()
            .expect("rsyslogd (Debian's rsyslog; scripts/bootstrap installs it)");
        self.child = Some(child);
        // Listening once a connection is taken.
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "rsyslogd did not listen on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops it as an operator would (SIGTERM), and waits for it.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let _ = child.wait();
        }
    }

    /// What it wrote: each message's `seq` and the record its message holds.
    fn received(&self) -> Vec<(i64, Value)> {
        let text = std::fs::read_to_string(self.dir.join("received.log")).unwrap_or_default();
        text.lines()
            .map(|line| {
                let fields: Vec<&str> = line.splitn(4, '\t').collect();
                assert_eq!(fields.len(), 4, "{line}");
                assert_eq!((fields[0], fields[1]), ("luna-cckm", "audit"), "{line}");
                let sd = fields[2];
                assert!(
                    sd.starts_with("[audit@32473 format=\"3\" seq=\""),
                    "structured data intact: {line}"
                );
                let seq: i64 = sd["[audit@32473 format=\"3\" seq=\"".len()..]
                    .split('"')
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap();
                let record: Value =
                    serde_json::from_str(fields[3].trim()).unwrap_or_else(|e| panic!("{e}: {line}"));
                assert_eq!(record["seq"], seq, "{line}");
                for field in [
                    "user_id",
                    "username",
                    "action",
                    "resource_type",
                    "resource_id",
                    "outcome",
                    "request_id",
                    "source",
                    "instance",
                ] {
                    let value = record[field].as_str().unwrap();
                    assert!(
                        sd.contains(&format!(" {field}=\"{value}\"")),
                        "{field} in the structured data: {line}"
                    );
                }
                (seq, record)
            })
            .collect()
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Every record from 1 to the trail's end, as the API lists them.
fn trail(api: &Api) -> BTreeMap<i64, Value> {
    let mut records = BTreeMap::new();
    for skip in (0..).step_by(1000) {
        let (status, list) = api.get(&format!("/audit/records?limit=1000&skip={skip}"));
        assert_eq!(status, 200, "{list}");
        let page = list["resources"].as_array().unwrap();
        records.extend(page.iter().map(|r| (r["seq"].as_i64().unwrap(), r.clone())));
        if page.len() < 1000 {
            return records;
        }
    }
    unreachable!("the pages run out")
}

/// Waits until every record of the trail arrived (`received` says what did),
/// and returns those that arrived more than once.
fn all_arrive(api: &Api, received: impl Fn() -> Vec<(i64, Value)>) -> Vec<i64> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let expected = trail(api);
        let got = received();
        let mut seen = BTreeMap::new();
        for (seq, _) in &got {
            *seen.entry(*seq).or_insert(0) += 1;
        }
        if expected.keys().all(|seq| seen.contains_key(seq)) {
            for (seq, record) in &got {
                assert_eq!(&expected[seq], record, "record {seq} arrived as the API shows it");
            }
            return seen
                .into_iter()
                .filter(|(_, n)| *n > 1)
                .map(|(seq, _)| seq)
                .collect();
        }
        assert!(
            Instant::now() < deadline,
            "records missing at the receiver: {:?}",
            expected
                .keys()
                .filter(|seq| !seen.contains_key(seq))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A few changes and refusals, each a record.
fn some_changes(api: &Api, n: usize) {
    for i in 0..n {
        let (status, _) = api.send("POST", "/usermgmt/users", &json!({"username": format!("u-{}", uuid::Uuid::new_v4().simple()), "password": "a-long-password"}));
        assert_eq!(status, 201, "change {i}");
        let (status, _) = api.call("GET", "/cckm/hsm/luna/keys", Some("not-a-token"), None);
        assert_eq!(status, 401);
    }
}

fn no_secrets(text: &str, api: &Api) {
    for secret in [ADMIN_PASSWORD, "a-long-password", api.token.as_str()] {
        assert!(!text.contains(secret), "a secret reached the receiver");
    }
}

#[test]
fn rsyslog_receives_every_record_over_tcp_even_when_stopped_30_s_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let mut rsyslog = Rsyslog::start(dir.path(), None);
    let sink = Sink::parse(&format!("syslog+tcp://127.0.0.1:{}", rsyslog.port), None).unwrap();
    let db = TestDatabase::sqlite().unwrap();
    let cursor = {
        let url = db.url.clone();
        move || -> i64 {
            luna_store::testing::select_texts(
                &url,
                "SELECT CAST(delivered_seq AS TEXT) AS value FROM audit_sinks",
            )
            .unwrap()[0]
                .parse()
                .unwrap()
        }
    };
    let api = Api::start_forwarding(db, vec![sink]);
    some_changes(&api, 5);
    assert_eq!(
        all_arrive(&api, || rsyslog.received()),
        Vec::<i64>::new(),
        "nothing sent twice while the receiver was up"
    );

    // Stopped while records keep coming, for 30 s, then started again.
    let load = std::sync::atomic::AtomicBool::new(true);
    let passed = std::cell::Cell::new(0);
    std::thread::scope(|s| {
        s.spawn(|| {
            // Refusals: a record each, at the rate a client can send them.
            while load.load(std::sync::atomic::Ordering::SeqCst) {
                let (status, _) = api.call("GET", "/cckm/hsm/luna/keys", Some("not-a-token"), None);
                assert_eq!(status, 401);
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        std::thread::sleep(Duration::from_millis(300));
        passed.set(cursor());
        rsyslog.stop();
        std::thread::sleep(Duration::from_secs(30));
        let (_, health) = api.get("/healthz");
        assert_eq!(health["status"], "degraded", "the lag shows: {health}");
        rsyslog.run();
        std::thread::sleep(Duration::from_millis(500));
        load.store(false, std::sync::atomic::Ordering::SeqCst);
    });
    let duplicates = all_arrive(&api, || rsyslog.received());
    assert!(
        duplicates.iter().all(|seq| *seq > passed.get()),
        "only records the cursor had not passed ({}) arrive twice: {duplicates:?}",
        passed.get()
    );
    let metrics = ureq::get(&format!("{}/metrics", api.base.trim_end_matches("/api/v1")))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    let failures = metrics
        .lines()
        .find(|l| l.starts_with("luna_audit_forward_failures_total{"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(failures >= 1.0, "the receiver's absence is counted: {metrics}");
    assert!(
        metrics.contains("luna_audit_forwarded_total{") && metrics.contains("luna_audit_forward_lag{"),
        "{metrics}"
    );
    let text = std::fs::read_to_string(dir.path().join("received.log")).unwrap();
    no_secrets(&text, &api);
    eprintln!(
        "records: {}, arrived twice: {}, the cursor at the stop: {}",
        trail(&api).len(),
        duplicates.len(),
        passed.get()
    );
}

#[test]
fn rsyslog_receives_every_record_over_tls_checked_against_the_configured_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "luna-cckm test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let server_key = rcgen::KeyPair::generate().unwrap();
    let server = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&server_key, &ca, &ca_key)
        .unwrap();
    let (ca_file, cert_file, key_file) = (
        dir.path().join("ca.pem"),
        dir.path().join("cert.pem"),
        dir.path().join("key.pem"),
    );
    std::fs::write(&ca_file, ca.pem()).unwrap();
    std::fs::write(&cert_file, server.pem()).unwrap();
    std::fs::write(&key_file, server_key.serialize_pem()).unwrap();
    let rsyslog = Rsyslog::start(dir.path(), Some((ca_file.clone(), cert_file, key_file)));
    let url = format!("syslog+tls://localhost:{}", rsyslog.port);
    // Another CA: the receiver is refused, and nothing is delivered.
    let other_ca = dir.path().join("other-ca.pem");
    std::fs::write(&other_ca, luna_api::testing::hsm_certificate("elsewhere")).unwrap();
    let untrusted = Sink::parse(&url, Some(&other_ca)).unwrap();
    let refused = Api::start_forwarding(TestDatabase::sqlite().unwrap(), vec![untrusted]);
    some_changes(&refused, 1);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        rsyslog.received().is_empty(),
        "a receiver the CA does not vouch for gets nothing"
    );
    drop(refused);

    let api = Api::start_forwarding(
        TestDatabase::sqlite().unwrap(),
        vec![Sink::parse(&url, Some(&ca_file)).unwrap()],
    );
    some_changes(&api, 10);
    assert_eq!(all_arrive(&api, || rsyslog.received()), Vec::<i64>::new());
    no_secrets(
        &std::fs::read_to_string(dir.path().join("received.log")).unwrap(),
        &api,
    );
}

/// The JSON lines of every file at `path` and rotated beside it (`.1`).
fn lines_of(paths: &[PathBuf]) -> Vec<(i64, Value)> {
    paths
        .iter()
        .flat_map(|p| {
            std::fs::read_to_string(p)
                .unwrap_or_default()
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .map(|line| {
            let record: Value = serde_json::from_str(&line).unwrap();
            (record["seq"].as_i64().unwrap(), record)
        })
        .collect()
}

on_both_backends! {
    fn a_file_sink_gets_every_record_once_across_a_rotation_and_two_instances(db: TestDatabase) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let rotated = dir.path().join("audit.jsonl.1");
        let sink = || Sink::parse(&format!("file://{}", path.display()), None).unwrap();
        let api = Api::start_forwarding(db, vec![sink()]);
        let second = api.beside_forwarding(vec![sink()]);
        some_changes(&api, 5);
        some_changes(&second, 5);
        let files = [rotated.clone(), path.clone()];
        assert_eq!(all_arrive(&api, || lines_of(&files)), Vec::<i64>::new(), "each record once between the two instances");
        // Rotated as logrotate does (moved away); the forwarder opens a new file.
        std::fs::rename(&path, &rotated).unwrap();
        some_changes(&api, 5);
        assert_eq!(all_arrive(&api, || lines_of(&files)), Vec::<i64>::new());
        let got = lines_of(&files);
        assert!(got.windows(2).all(|w| w[0].0 + 1 == w[1].0), "in order, no gap: {:?}", got.iter().map(|g| g.0).collect::<Vec<_>>());
        assert!(std::fs::metadata(&path).unwrap().len() > 0, "the new file has the records after the rotation");
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        no_secrets(&std::fs::read_to_string(&rotated).unwrap(), &api);
        // One instance stops: the other takes the sink over from its cursor,
        // once the lease has run out, and sends nothing twice.
        drop(second);
        some_changes(&api, 5);
        assert_eq!(all_arrive(&api, || lines_of(&files)), Vec::<i64>::new(), "the hand-over repeats nothing");
    }
}
