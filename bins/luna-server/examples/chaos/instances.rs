//! The server instances chaos runs: started, supervised, asked for their health, called and logged in to.

use super::*;

/// One luna-server process and how to start it again.
pub(crate) struct Instance {
    pub(crate) data: PathBuf,
    pub(crate) args: Vec<String>,
    pub(crate) env: Vec<(String, PathBuf)>,
    pub(crate) server: Option<Server>,
    pub(crate) base: Arc<Mutex<String>>,
}

impl Instance {
    /// Starts the release build, as the tests start theirs (`support::Launch`).
    pub(crate) fn start(&mut self) {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &Path)> = self.env.iter().map(|(k, v)| (k.as_str(), v.as_path())).collect();
        let server = Server::launch(&self.data)
            .binary(&server_binary())
            .args(&args)
            .env(&env)
            .log("error", Stdio::null())
            .start();
        *self.base.lock().unwrap() = server.base.clone();
        self.server = Some(server);
    }

    pub(crate) fn kill_9(&mut self) {
        if let Some(server) = self.server.take() {
            server.kill_9();
        }
    }

    /// SIGTERM; a graceful stop must exit 0.
    pub(crate) fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.stop();
        }
    }
}

/// Does what a supervisor (systemd, Kubernetes) does with a health check
/// that says `stuck`: kills the instance and starts it again. Returns how
/// many times it did.
pub(crate) fn supervise(
    instances: &Arc<Mutex<Vec<Instance>>>,
    supervising: &Arc<AtomicBool>,
) -> std::thread::JoinHandle<usize> {
    let (instances, supervising) = (Arc::clone(instances), Arc::clone(supervising));
    std::thread::spawn(move || {
        let mut restarts = 0;
        while supervising.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_secs(1));
            let bases: Vec<String> = instances
                .lock()
                .unwrap()
                .iter()
                .map(|i| i.base.lock().unwrap().clone())
                .collect();
            for (i, base) in bases.iter().enumerate() {
                let health = match ureq::get(&format!("{base}/healthz"))
                    .timeout(Duration::from_secs(2))
                    .call()
                {
                    Err(ureq::Error::Status(503, r)) => r.into_json::<Value>().unwrap_or(Value::Null),
                    _ => continue,
                };
                if health["status"] == "stuck" {
                    println!(
                        "  supervisor: instance {} says \"{}\"; restarted",
                        ["A", "B"][i],
                        health["detail"].as_str().unwrap_or_default()
                    );
                    let mut instances = instances.lock().unwrap();
                    instances[i].kill_9();
                    instances[i].start();
                    restarts += 1;
                }
            }
        }
        restarts
    })
}

/// What an instance's health check answers: its status and code.
pub(crate) fn health_of(base: &str) -> String {
    match ureq::get(&format!("{base}/healthz"))
        .timeout(Duration::from_secs(2))
        .call()
    {
        Ok(r) | Err(ureq::Error::Status(_, r)) => {
            let code = r.status();
            let body = r.into_json::<Value>().unwrap_or(Value::Null);
            format!("{} ({code})", body["status"].as_str().unwrap_or("?"))
        }
        Err(e) => format!("nothing ({e})"),
    }
}

pub(crate) fn server_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/examples/chaos → target/<profile>/luna-server
    exe.parent().unwrap().parent().unwrap().join("luna-server")
}

pub(crate) fn call(
    base: &str,
    token: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
    key: Option<&str>,
) -> Option<(u16, Value)> {
    let mut request = ureq::request(method, &format!("{base}{path}"))
        .timeout(Duration::from_secs(10))
        .set("Authorization", &format!("Bearer {token}"));
    if let Some(key) = key {
        request = request.set("Idempotency-Key", key);
    }
    let response = match body {
        Some(b) => request.send_json(b.clone()),
        None => request.call(),
    };
    match response {
        Ok(r) | Err(ureq::Error::Status(_, r)) => {
            let status = r.status();
            Some((status, r.into_json().unwrap_or(Value::Null)))
        }
        Err(_) => None,
    }
}

pub(crate) fn login(base: &str) -> Option<String> {
    let response = ureq::post(&format!("{base}/auth/tokens"))
        .timeout(Duration::from_secs(10))
        .send_json(json!({"grant_type": "password", "username": "admin", "password": ADMIN}))
        .ok()?;
    response.into_json::<Value>().ok()?["jwt"]
        .as_str()
        .map(str::to_owned)
}
