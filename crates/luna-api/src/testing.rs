//! An in-process luna-cckm server on real SoftHSM2 tokens and a real database,
//! spoken to over HTTP, for this crate's tests and benchmarks.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a harness that cannot start should fail loudly

use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::auth::Auth;
use crate::server::{bootstrap_admin, start, Config};
use crate::view::Tenancy;
use luna_pkcs11::testing::{fresh_token_label, module, USER_PIN};
use luna_pkcs11::Module;
use luna_runner::RunnerSettings;
use luna_store::testing::TestDatabase;
use secrecy::SecretString;
use serde_json::{json, Value};

/// Declares each test once and runs it on SQLite and on PostgreSQL, each on a
/// database of its own.
#[macro_export]
macro_rules! on_both_backends {
    ($(fn $name:ident($db:ident: TestDatabase) $body:block)+) => {
        $(fn $name($db: luna_store::testing::TestDatabase) $body)+
        mod sqlite { $(#[test] fn $name() { super::$name(luna_store::testing::TestDatabase::sqlite().unwrap()) })+ }
        mod postgres { $(#[test] fn $name() { super::$name(luna_store::testing::TestDatabase::postgres().unwrap()) })+ }
    };
}

pub const SIGNING_KEY: [u8; 64] = [0x5a; 64];
/// Test servers' request deadline: short, for the slow-body test.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(3);
pub const ADMIN_PASSWORD: &str = "admin-password-for-tests";
/// The instance name of the servers tests start.
pub const TEST_INSTANCE: &str = "test-instance";

#[derive(Debug)]
pub struct Api {
    pub base: String,
    pub token: String,
    handle: actix_web::dev::ServerHandle,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Taken by `stop`; present for the server's whole life.
    db: Option<TestDatabase>,
    store: luna_store::Store,
    runner: Arc<luna_runner::Runner>,
    /// The instance's own files (the audit checkpoint), for its whole life.
    _data: tempfile::TempDir,
}

/// The runner settings of test servers: short leases and polls.
pub fn runner_settings(workers: usize) -> RunnerSettings {
    RunnerSettings {
        workers,
        token_concurrency: 8,
        lease: time::Duration::seconds(5),
        poll: Duration::from_millis(200),
        retry_base: time::Duration::milliseconds(100),
        // Tests destroy objects behind the service's back and refresh at once.
        refresh_settle: time::Duration::ZERO,
        pass_on_for: time::Duration::seconds(1),
        stuck_after: Duration::from_secs(60),
        token_outage: Duration::from_secs(60),
        ..RunnerSettings::default()
    }
}

impl Api {
    pub fn start(db: TestDatabase) -> Api {
        Api::start_with(db, 2)
    }

    /// `workers: 0` runs no operations: they stay in progress.
    pub fn start_with(db: TestDatabase, workers: usize) -> Api {
        Api::start_on(db, module(), workers)
    }

    /// A server whose runner has these settings.
    pub fn start_with_settings(db: TestDatabase, runner: RunnerSettings) -> Api {
        let store = db.store.clone();
        Api::launch(store, Some(db), module(), runner, None, Vec::new())
    }

    /// A server on another PKCS#11 module (`TestModule::module`).
    pub fn start_on(db: TestDatabase, module: &Arc<Module>, workers: usize) -> Api {
        let store = db.store.clone();
        Api::launch(
            store,
            Some(db),
            module,
            runner_settings(workers),
            None,
            Vec::new(),
        )
    }

    /// A server on `module` with these runner settings, whose member tokens
    /// `opener` opens (a stand-in token, for benchmarks).
    pub fn start_opening(
        db: TestDatabase,
        module: &Arc<Module>,
        runner: RunnerSettings,
        opener: Option<luna_runner::tokens::TokenOpener>,
    ) -> Api {
        let store = db.store.clone();
        Api::launch(store, Some(db), module, runner, opener, Vec::new())
    }

    /// A server on a store the test opened itself (a private PostgreSQL server,
    /// say); the test keeps what it needs to clean up.
    pub fn start_on_store(store: luna_store::Store, runner: RunnerSettings) -> Api {
        Api::launch(store, None, module(), runner, None, Vec::new())
    }

    /// A second server instance on this one's database (its own store, pool,
    /// open tokens and runner), as several instances share one database.
    pub fn beside(&self, settings: RunnerSettings) -> Api {
        self.beside_opening(settings, None)
    }

    /// `beside`, its member tokens opened by `opener` (a stand-in token).
    pub fn beside_opening(
        &self,
        settings: RunnerSettings,
        opener: Option<luna_runner::tokens::TokenOpener>,
    ) -> Api {
        Api::launch(self.second_store(), None, module(), settings, opener, Vec::new())
    }

    /// A server forwarding its audit trail to `sinks` (short leases and
    /// settling, for tests).
    pub fn start_forwarding(db: TestDatabase, sinks: Vec<crate::forward::Sink>) -> Api {
        let store = db.store.clone();
        Api::launch(store, Some(db), module(), runner_settings(2), None, sinks)
    }

    /// A second instance on this one's database, forwarding to `sinks`.
    pub fn beside_forwarding(&self, sinks: Vec<crate::forward::Sink>) -> Api {
        Api::launch(
            self.second_store(),
            None,
            module(),
            runner_settings(2),
            None,
            sinks,
        )
    }

    /// Another store on this server's database (a second instance's).
    fn second_store(&self) -> luna_store::Store {
        self.db
            .as_ref()
            .expect("the first instance holds the database")
            .second_store()
            .unwrap()
    }

    fn launch(
        store: luna_store::Store,
        db: Option<TestDatabase>,
        module: &Arc<Module>,
        runner: RunnerSettings,
        token_opener: Option<luna_runner::tokens::TokenOpener>,
        audit_sinks: Vec<crate::forward::Sink>,
    ) -> Api {
        let dir = tempfile::tempdir().unwrap();
        // The audit trail's head, kept outside the database as the server keeps it.
        let store = store
            .with_audit_checkpoint(&dir.path().join("audit.head"))
            .unwrap();
        bootstrap_admin(
            &store,
            TEST_INSTANCE,
            Some(&SecretString::from(ADMIN_PASSWORD)),
            &dir.path().join("pw"),
        )
        .unwrap();
        let config = Config {
            store: store.clone(),
            instance: TEST_INSTANCE.into(),
            module: Arc::clone(module),
            auth: Auth::new(&SIGNING_KEY, 300),
            tenancy: Tenancy::default(),
            runner,
            tls: None,
            xks_client_subject: None,
            http_workers: 2,
            request_deadline: REQUEST_DEADLINE,
            token_opener,
            audit_sinks,
            forward: crate::forward::ForwardSettings {
                settle: Duration::from_millis(500),
                poll: Duration::from_millis(50),
                retry: Duration::from_millis(200),
                lease: Duration::from_secs(3),
                ..Default::default()
            },
            audit_lag_bound: 50,
        };
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}/api/v1", listener.local_addr().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let running = start(config, listener).unwrap();
                tx.send((running.server.handle(), Arc::clone(&running.runner)))
                    .unwrap();
                running.run().await.unwrap();
            })
        });
        let (handle, runner) = rx.recv().unwrap();
        let mut api = Api {
            base,
            token: String::new(),
            handle,
            thread: Some(thread),
            db,
            store,
            runner,
            _data: dir,
        };
        api.log_in();
        api
    }

    /// Logs in as the admin again, for a fresh `token` (it lasts 300 s).
    pub fn log_in(&mut self) {
        let (status, body) = self.call(
            "POST",
            "/auth/tokens",
            None,
            Some(
                &json!({"grant_type": "password", "username": "admin", "password": ADMIN_PASSWORD})
                    .to_string(),
            ),
        );
        assert_eq!(status, 200, "{body}");
        self.token = body["jwt"].as_str().unwrap().to_owned();
    }

    /// Any request; `token: None` sends no Authorization header.
    pub fn call(&self, method: &str, path: &str, token: Option<&str>, body: Option<&str>) -> (u16, Value) {
        self.raw(
            method,
            path,
            token.map(|t| format!("Bearer {t}")).as_deref(),
            body,
            Some("application/json"),
        )
    }

    pub fn raw(
        &self,
        method: &str,
        path: &str,
        authorization: Option<&str>,
        body: Option<&str>,
        content_type: Option<&str>,
    ) -> (u16, Value) {
        let mut request = ureq::request(method, &format!("{}{path}", self.base));
        if let Some(a) = authorization {
            request = request.set("Authorization", a);
        }
        if let Some(c) = content_type {
            request = request.set("Content-Type", c);
        }
        let response = match body {
            Some(b) => request.send_string(b),
            None => request.call(),
        };
        let response = match response {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("{method} {path}: {e}"),
        };
        let status = response.status();
        let text = response.into_string().unwrap();
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, value)
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        self.call("GET", path, Some(&self.token), None)
    }

    pub fn send(&self, method: &str, path: &str, body: &Value) -> (u16, Value) {
        self.call(method, path, Some(&self.token), Some(&body.to_string()))
    }

    pub fn post_empty(&self, path: &str) -> (u16, Value) {
        self.call("POST", path, Some(&self.token), None)
    }

    /// Registers fresh tokens as a connection and a partition; returns the partition.
    pub fn partition(&self, name: &str, members: usize) -> Value {
        self.partition_with(name, members, false)
    }

    /// The same, with `so_password`: an HA partition whose members share a cloning domain.
    pub fn partition_with_domain(&self, name: &str, members: usize) -> Value {
        self.partition_with(name, members, true)
    }

    fn partition_with(&self, name: &str, members: usize, cloning_domain: bool) -> Value {
        let labels: Vec<String> = (0..members)
            .map(|i| fresh_token_label(&format!("{name}-{i}")))
            .collect();
        self.register(name, &labels, cloning_domain)
    }

    /// Registers tokens that exist (with `USER_PIN`) as a connection and a
    /// partition; returns the partition.
    pub fn register(&self, name: &str, labels: &[String], cloning_domain: bool) -> Value {
        let members = labels.len();
        let mut body = json!({
            "name": format!("{name}-{}", uuid::Uuid::new_v4().simple()),
            "password": USER_PIN,
            "is_ha_enabled": members > 1,
            "partitions": labels.iter().map(|l| json!({"hostname": "softhsm", "partition_label": l})).collect::<Vec<_>>(),
            "description": "test",
        });
        if cloning_domain {
            body["so_password"] = json!(luna_pkcs11::testing::SO_PIN);
        }
        let (status, connection) =
            self.send("POST", "/connectionmgmt/services/luna-network/connections", &body);
        assert_eq!(status, 201, "{connection}");
        let (status, partition) = self.send(
            "POST",
            "/cckm/hsm/luna/add-partition",
            &json!({"connection": connection["id"]}),
        );
        assert_eq!(status, 201, "{partition}");
        partition
    }

    /// Polls a key until its operation is no longer in progress.
    pub fn settled(&self, id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (status, key) = self.get(&format!("/cckm/hsm/luna/keys/{id}"));
            assert_eq!(status, 200, "{key}");
            let running = key["status"] == "in_progress" || key["operation_status"] == "in_progress";
            if !running {
                return key;
            }
            assert!(Instant::now() < deadline, "key {id} still in progress: {key}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Api {
    /// Stops gracefully (as SIGTERM does): requests in flight and the
    /// operations the workers hold finish first.
    fn shut_down(&mut self) {
        let handle = self.handle.clone();
        let _ = std::thread::spawn(move || actix_web::rt::System::new().block_on(handle.stop(true))).join();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }

    /// Stops gracefully and hands back the database, to look at what was left.
    pub fn stop(mut self) -> TestDatabase {
        self.shut_down();
        self.db.take().unwrap()
    }

    /// Destroys a key's objects on the partition's token without the service knowing.
    pub fn destroy_behind_the_back(&self, partition: &Value, key_id: &str) {
        use luna_pkcs11::Token as _;
        let key = self
            .store()
            .get_key(uuid::Uuid::parse_str(key_id).unwrap())
            .unwrap()
            .unwrap();
        let token = module()
            .open_token(
                partition["partition_label"].as_str().unwrap(),
                None,
                SecretString::from(USER_PIN),
            )
            .unwrap();
        let objects = token.find_by_id(&key.cka_id).unwrap();
        assert!(!objects.is_empty(), "the token holds key {key_id}");
        for object in objects {
            token.destroy(object.handle).unwrap();
        }
    }

    pub fn store(&self) -> &luna_store::Store {
        &self.store
    }

    /// The server's runner: tests fire schedules through it at times of their choosing.
    pub fn runner(&self) -> &luna_runner::Runner {
        &self.runner
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// An HSM's server certificate, PEM, as an operator exports it from the HSM.
pub fn hsm_certificate(host: &str) -> String {
    let mut params = rcgen::CertificateParams::new(vec![host.to_owned()]).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, host);
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "Thales");
    params
        .self_signed(&rcgen::KeyPair::generate().unwrap())
        .unwrap()
        .pem()
}

/// A reference example, from testdata/reference.
pub fn reference(name: &str) -> Value {
    let path = format!(
        "{}/../../testdata/reference/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

const MAPS: &[&str] = &["replication_info", "detailed_status"];

/// Every field of the reference example is in ours, with the same JSON type.
pub fn assert_shaped_like(ours: &Value, reference: &Value, at: &str) {
    match reference {
        Value::Object(fields) => {
            let ours_fields = ours
                .as_object()
                .unwrap_or_else(|| panic!("{at}: expected an object, got {ours}"));
            for (name, expected) in fields {
                let got = ours_fields
                    .get(name)
                    .unwrap_or_else(|| panic!("{at}.{name} is missing from {ours}"));
                if MAPS.contains(&name.as_str()) {
                    // Keyed by member serial or partition id: a map of strings, not fixed fields.
                    let map = got
                        .as_object()
                        .unwrap_or_else(|| panic!("{at}.{name}: expected an object, got {got}"));
                    assert!(map.values().all(Value::is_string), "{at}.{name}: {got}");
                    continue;
                }
                assert_shaped_like(got, expected, &format!("{at}.{name}"));
            }
        }
        Value::Array(items) => {
            let ours_items = ours
                .as_array()
                .unwrap_or_else(|| panic!("{at}: expected an array, got {ours}"));
            if let (Some(expected), Some(got)) = (items.first(), ours_items.first()) {
                assert_shaped_like(got, expected, &format!("{at}[0]"));
            }
        }
        Value::String(_) => assert!(ours.is_string(), "{at}: expected a string, got {ours}"),
        Value::Number(n) if n.is_u64() => {
            assert!(ours.is_u64(), "{at}: expected an unsigned integer, got {ours}")
        }
        Value::Number(_) => assert!(ours.is_number(), "{at}: expected a number, got {ours}"),
        Value::Bool(_) => assert!(ours.is_boolean(), "{at}: expected a boolean, got {ours}"),
        Value::Null => {}
    }
}

/// The fields whose values the reference's examples fix, compared as values.
pub fn assert_same_values(ours: &Value, reference: &Value, fields: &[&str]) {
    for field in fields {
        assert_eq!(ours[field], reference[field], "field {field} of {ours}");
    }
}

/// The contract's error body.
pub fn assert_error(status: u16, body: &Value, expected_status: u16, code: u64) {
    assert_eq!(status, expected_status, "{body}");
    assert_eq!(body["code"], code, "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(!message.is_empty(), "{body}");
    assert!(
        body["codeDesc"].as_str().unwrap_or_default().ends_with(message),
        "{body}"
    );
}

mod xks;
pub use xks::*;
