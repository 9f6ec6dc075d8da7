//! luna-server under a `Type=notify` supervisor, as systemd runs it: ready
//! once listening, the watchdog fed only while healthy, stopping.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::{Duration, Instant};

use support::Server;

/// The states received within `within`, in order.
fn heard(socket: &UnixDatagram, within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut states = Vec::new();
    let mut buf = [0u8; 256];
    while let Some(left) = deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
    {
        socket.set_read_timeout(Some(left)).unwrap();
        match socket.recv(&mut buf) {
            Ok(n) => states.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(_) => break,
        }
    }
    states
}

/// Whether `state` is heard within `within` (what comes before it is read).
fn hears(socket: &UnixDatagram, state: &str, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 256];
    while let Some(left) = deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
    {
        socket.set_read_timeout(Some(left)).unwrap();
        match socket.recv(&mut buf) {
            Ok(n) if &buf[..n] == state.as_bytes() => return true,
            Ok(_) => {}
            Err(_) => return false,
        }
    }
    false
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
