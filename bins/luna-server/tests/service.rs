//! luna-server under a `Type=notify` supervisor, as systemd runs it: ready
//! once listening, the watchdog fed only while healthy, stopping; SIGHUP
//! reading the TLS certificate again.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::{Duration, Instant};

use support::Server;

/// The next state the supervisor's socket receives before `deadline`.
fn next_state(socket: &UnixDatagram, deadline: Instant) -> Option<String> {
    let left = deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())?;
    socket.set_read_timeout(Some(left)).unwrap();
    let mut buf = [0u8; 256];
    let n = socket.recv(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// The states received within `within`, in order.
fn heard(socket: &UnixDatagram, within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    std::iter::from_fn(|| next_state(socket, deadline)).collect()
}

/// Whether `state` is heard within `within` (what comes before it is read).
fn hears(socket: &UnixDatagram, state: &str, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    std::iter::from_fn(|| next_state(socket, deadline)).any(|heard| heard == state)
}

#[test]
fn the_supervisor_hears_ready_the_watchdog_only_while_the_database_answers_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    let pg = luna_store::testing::PrivatePostgres::start();
    let server = Server::launch(&dir.path().join("data"))
        .args(&["--insecure-http", "--database-url", &pg.url])
        .env(&[("NOTIFY_SOCKET", &path), ("WATCHDOG_USEC", Path::new("300000"))])
        .start();
    let first = heard(&socket, Duration::from_secs(2));
    assert_eq!(first.first().map(String::as_str), Some("READY=1"), "{first:?}");
    assert!(
        first.iter().filter(|s| *s == "WATCHDOG=1").count() >= 5,
        "fed every 150 ms: {first:?}"
    );

    pg.stop();
    // What was sent before the database went is read, then nothing comes.
    heard(&socket, Duration::from_secs(1));
    let away = heard(&socket, Duration::from_secs(2));
    assert!(
        !away.contains(&"WATCHDOG=1".to_owned()),
        "fed while the database is away: {away:?}"
    );

    pg.start_again();
    assert!(
        hears(&socket, "WATCHDOG=1", Duration::from_secs(10)),
        "fed again once it answers"
    );
    server.stop();
    assert!(
        hears(&socket, "STOPPING=1", Duration::from_secs(5)),
        "told it is stopping"
    );
}

/// The SHA-256 fingerprint of the certificate a server at `port` presents,
/// read by openssl (an independent client).
fn served_fingerprint(port: &str) -> String {
    let shown = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect 127.0.0.1:{port} </dev/null 2>/dev/null | openssl x509 -noout -fingerprint -sha256"
        ))
        .output()
        .unwrap();
    String::from_utf8_lossy(&shown.stdout).trim().to_owned()
}

fn file_fingerprint(cert: &Path) -> String {
    let shown = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(cert)
        .output()
        .unwrap();
    String::from_utf8_lossy(&shown.stdout).trim().to_owned()
}

/// A TLS connection kept open (openssl's client), for requests sent on it one after another.
struct LiveConnection {
    client: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl LiveConnection {
    fn open(port: &str) -> LiveConnection {
        use std::io::BufRead as _;
        let mut client = std::process::Command::new("openssl")
            .args(["s_client", "-quiet", "-connect", &format!("127.0.0.1:{port}")])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let stdout = client.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        LiveConnection { client, lines }
    }

    /// The status line of a health check sent on this connection.
    fn health(&mut self) -> String {
        use std::io::Write as _;
        let stdin = self.client.stdin.as_mut().unwrap();
        stdin
            .write_all(b"GET /api/v1/healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .unwrap();
        stdin.flush().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                // A body ends without a newline: the next status line follows it on its line.
                Ok(line) if line.contains("HTTP/1.1 ") => {
                    return line[line.find("HTTP/1.1 ").unwrap_or(0)..].trim().to_owned()
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        "no answer".to_owned()
    }
}

impl Drop for LiveConnection {
    fn drop(&mut self) {
        let _ = self.client.kill();
        let _ = self.client.wait();
    }
}

fn hang_up(server: &Server) {
    let sent = std::process::Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
}

/// SIGHUP reads the certificate and key again: the next handshake presents
/// the new certificate, a pair that does not fit together leaves the one in
/// use, and a connection made before the reload goes on serving.
#[test]
fn sighup_serves_a_renewed_certificate_and_keeps_the_old_one_when_the_new_pair_is_broken() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    luna_api::tls::ensure_self_signed(&cert, &key).unwrap();
    let renewed = tempfile::tempdir().unwrap();
    let (new_cert, new_key) = (renewed.path().join("cert.pem"), renewed.path().join("key.pem"));
    luna_api::tls::ensure_self_signed(&new_cert, &new_key).unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    let port = server.port();
    let first = file_fingerprint(&cert);
    assert_eq!(served_fingerprint(&port), first);
    let mut live = LiveConnection::open(&port);
    assert_eq!(live.health(), "HTTP/1.1 200 OK");

    // Half renewed (the new certificate, the old key): refused, the old pair stays.
    std::fs::copy(&new_cert, &cert).unwrap();
    hang_up(&server);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        served_fingerprint(&port),
        first,
        "a pair that does not fit is not served"
    );

    std::fs::copy(&new_key, &key).unwrap();
    hang_up(&server);
    let renewed_print = file_fingerprint(&new_cert);
    let deadline = Instant::now() + Duration::from_secs(10);
    while served_fingerprint(&port) != renewed_print {
        assert!(
            Instant::now() < deadline,
            "the renewed certificate was not served"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        live.health(),
        "HTTP/1.1 200 OK",
        "the connection from before the reload still serves"
    );
    drop(live);
    server.stop();
}
