//! Audit forwarding: every record of the trail, in order, at least once, to
//! each configured sink (syslog over TCP or TLS, RFC 5424 with octet-counted
//! framing as RFC 5425 has it; or a JSON-lines file), from a cursor kept in
//! the database (`audit_sinks`: the last record delivered).
//!
//! One forwarder a sink across every instance on the database: each instance
//! runs a thread per sink that sends only while it holds the sink's lease
//! (`Store::hold_audit_sink`), and moves the cursor only while it holds it.
//!
//! What "delivered" means: for a file, written and synced; for syslog, which
//! has no acknowledgement, sent on a connection that was still open `settle`
//! later (a receiver that stops or drops the connection within that time
//! gets those records again on the next connection). So a receiver that is
//! down, a restart of the service or a lease that passes to another
//! instance loses nothing; duplicates are only of records the cursor had not
//! passed, and carry the same `seq`.

use std::collections::VecDeque;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use luna_store::{AuditRecord, Store};

use crate::metrics::EdgeMetrics;
use crate::view::AuditView;

/// Where records go.
#[derive(Debug, Clone)]
pub enum Destination {
    /// JSON Lines, appended; a file moved away (rotated) is followed by a new one at the path.
    File(PathBuf),
    /// Syslog, RFC 5424 messages framed by their length.
    Syslog {
        host: String,
        port: u16,
        /// TLS (RFC 5425), checking the server against these roots.
        tls: Option<Arc<rustls::ClientConfig>>,
    },
}

/// A sink: its name (the URL it was configured by: its cursor's key, and
/// its label in `/metrics`) and where it sends.
#[derive(Debug, Clone)]
pub struct Sink {
    pub name: String,
    pub destination: Destination,
}

impl Sink {
    /// A sink from its URL: `file:///absolute/path`, `syslog+tcp://host:port`
    /// or `syslog+tls://host:port` (the server checked against `ca_file`).
    pub fn parse(url: &str, ca_file: Option<&Path>) -> Result<Sink, String> {
        let destination = if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(format!("{url}: a file sink is file:///absolute/path"));
            }
            Destination::File(PathBuf::from(path))
        } else if let Some((scheme, address)) = url.split_once("://") {
            let tls = match scheme {
                "syslog+tcp" => None,
                "syslog+tls" => {
                    let ca = ca_file.ok_or_else(|| {
                        format!("{url}: syslog over TLS needs the server's CA (--audit-forward-ca)")
                    })?;
                    Some(client_config(ca)?)
                }
                other => {
                    return Err(format!(
                        "{url}: {other:?} is not a sink; use syslog+tcp://, syslog+tls:// or file:///"
                    ))
                }
            };
            let (host, port) = address
                .rsplit_once(':')
                .and_then(|(host, port)| Some((host, port.parse::<u16>().ok()?)))
                .filter(|(host, port)| !host.is_empty() && *port > 0)
                .ok_or_else(|| format!("{url}: write the receiver as host:port"))?;
            Destination::Syslog {
                host: host.trim_start_matches('[').trim_end_matches(']').to_owned(),
                port,
                tls,
            }
        } else {
            return Err(format!(
                "{url}: use syslog+tcp://host:port, syslog+tls://host:port or file:///path"
            ));
        };
        Ok(Sink {
            name: url.to_owned(),
            destination,
        })
    }
}

/// A TLS client configuration trusting the certificates in `ca` (PEM).
fn client_config(ca: &Path) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::{pem::PemObject as _, CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    let certificates = CertificateDer::pem_file_iter(ca)
        .map_err(|e| format!("{}: {e}", ca.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", ca.display()))?;
    if certificates.is_empty() {
        return Err(format!("{} holds no certificate", ca.display()));
    }
    for certificate in certificates {
        roots
            .add(certificate)
            .map_err(|e| format!("{}: {e}", ca.display()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// How far each of `sinks` is behind the trail's end, in records, from the
/// cursors in the database (so whichever instance forwards to a sink).
pub fn lags(store: &Store, sinks: &[String]) -> luna_store::Result<Vec<(String, i64)>> {
    if sinks.is_empty() {
        return Ok(Vec::new());
    }
    let last = store.last_audit_seq()?;
    let cursors: std::collections::HashMap<String, i64> = store.audit_sink_cursors()?.into_iter().collect();
    Ok(sinks
        .iter()
        .map(|sink| (sink.clone(), last - cursors.get(sink).copied().unwrap_or(0)))
        .collect())
}

/// How forwarders pace themselves.
#[derive(Debug, Clone)]
pub struct ForwardSettings {
    /// How long a sink's lease runs; renewed at a third of it.
    pub lease: Duration,
    /// How long a syslog connection must stay open after a send for its
    /// records to count as delivered.
    pub settle: Duration,
    /// How often an idle forwarder looks for new records.
    pub poll: Duration,
    /// The wait after a failure (a receiver away) before trying again.
    pub retry: Duration,
    /// Records read and sent at a time.
    pub batch: i64,
}

impl Default for ForwardSettings {
    fn default() -> Self {
        ForwardSettings {
            lease: Duration::from_secs(15),
            settle: Duration::from_secs(2),
            poll: Duration::from_millis(250),
            retry: Duration::from_secs(1),
            batch: 500,
        }
    }
}

/// This instance's forwarders: stopped with `stop`.
#[derive(Debug, Default)]
pub struct Forwarders {
    stopping: Arc<AtomicBool>,
    threads: parking_lot::Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl Forwarders {
    /// A forwarder thread for each sink, as instance `instance`.
    pub fn start(
        store: &Store,
        sinks: &[Sink],
        instance: &str,
        settings: &ForwardSettings,
        metrics: &Arc<EdgeMetrics>,
    ) -> std::io::Result<Forwarders> {
        let forwarders = Forwarders::default();
        for sink in sinks {
            let forwarder = Forwarder {
                store: store.clone(),
                sink: sink.clone(),
                owner: format!("{instance}/{}", uuid::Uuid::new_v4().simple()),
                host: syslog_hostname(instance),
                settings: settings.clone(),
                metrics: Arc::clone(metrics),
                stopping: Arc::clone(&forwarders.stopping),
            };
            let thread = std::thread::Builder::new()
                .name("audit-forward".into())
                .spawn(move || forwarder.run())?;
            forwarders.threads.lock().push(thread);
        }
        Ok(forwarders)
    }

    /// Stops every forwarder after its current send.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        for thread in self.threads.lock().drain(..) {
            let _ = thread.join();
        }
    }
}

/// The hostname field of a syslog header: the instance's host, in the
/// characters RFC 5424 allows (printable ASCII, no space), or `-`.
fn syslog_hostname(instance: &str) -> String {
    let host: String = instance
        .split(':')
        .next()
        .unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(255)
        .collect();
    if host.is_empty() {
        "-".into()
    } else {
        host
    }
}

struct Forwarder {
    store: Store,
    sink: Sink,
    /// This forwarder's name in the sink's lease.
    owner: String,
    host: String,
    settings: ForwardSettings,
    metrics: Arc<EdgeMetrics>,
    stopping: Arc<AtomicBool>,
}

/// A sink held: what was delivered, sent, and not yet confirmed.
struct Held {
    delivered: i64,
    sent: i64,
    /// Sends not yet confirmed: (last record's seq, when it was sent).
    unconfirmed: VecDeque<(i64, Instant)>,
    renew_at: Instant,
}

/// An open destination.
enum Open {
    File { file: std::fs::File, path: PathBuf },
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Forwarder {
    fn run(self) {
        let mut held: Option<Held> = None;
        let mut open: Option<Open> = None;
        while !self.stopping.load(Ordering::SeqCst) {
            match self.turn(&mut held, &mut open) {
                Ok(true) => {}
                // Another instance forwards to this sink: ask again when its
                // lease could have run out, not every poll.
                Ok(false) if held.is_none() => self.pause(self.settings.lease / 3),
                Ok(false) => std::thread::sleep(self.settings.poll),
                Err(error) => {
                    self.metrics.audit_forward_failed(&self.sink.name);
                    tracing::warn!(sink = %self.sink.name, %error, "audit forwarding failed; trying again");
                    // Whatever was not confirmed is sent again, on a new connection.
                    open = None;
                    if let Some(held) = &mut held {
                        held.sent = held.delivered;
                        held.unconfirmed.clear();
                    }
                    std::thread::sleep(self.settings.retry);
                }
            }
        }
    }

    /// Waits `wait`, or less if the forwarders are stopping.
    fn pause(&self, wait: Duration) {
        let until = Instant::now() + wait;
        while Instant::now() < until && !self.stopping.load(Ordering::SeqCst) {
            std::thread::sleep(self.settings.poll);
        }
    }

    /// One step: hold the sink, confirm what has settled, send what is new.
    /// `Ok(true)` if it sent something (look again at once).
    fn turn(&self, held: &mut Option<Held>, open: &mut Option<Open>) -> Result<bool, String> {
        let now = Instant::now();
        if held.as_ref().is_none_or(|h| now >= h.renew_at) {
            let wall = luna_store::now();
            let lease = time::Duration::try_from(self.settings.lease).unwrap_or(time::Duration::SECOND);
            match self
                .store
                .hold_audit_sink(&self.sink.name, &self.owner, wall, wall + lease)
                .map_err(|e| format!("the sink's lease: {e}"))?
            {
                Some(delivered) => {
                    let renew_at = now + self.settings.lease / 3;
                    match held {
                        Some(h) => h.renew_at = renew_at,
                        None => {
                            *held = Some(Held {
                                delivered,
                                sent: delivered,
                                unconfirmed: VecDeque::new(),
                                renew_at,
                            })
                        }
                    }
                }
                None => {
                    // Another instance forwards to this sink.
                    *held = None;
                    *open = None;
                    return Ok(false);
                }
            }
        }
        let Some(h) = held.as_mut() else {
            return Ok(false);
        };
        if let Some(connection) = open.as_mut() {
            if !connection.still_open() {
                return Err("the receiver closed the connection".into());
            }
        }
        // A file's records are delivered once synced; syslog's once their
        // connection has stayed open long enough.
        let settle = match &self.sink.destination {
            Destination::File(_) => Duration::ZERO,
            Destination::Syslog { .. } => self.settings.settle,
        };
        if !self.confirm(h, settle)? {
            *held = None;
            *open = None;
            return Ok(false);
        }
        let records = self
            .store
            .audit_records_after(h.sent, self.settings.batch)
            .map_err(|e| format!("reading the trail: {e}"))?;
        let Some(last) = records.last().map(|r| r.seq) else {
            return Ok(false);
        };
        if open.is_none() {
            *open = Some(
                self.open()
                    .map_err(|e| format!("opening {}: {e}", self.sink.name))?,
            );
        }
        if let Some(connection) = open.as_mut() {
            connection
                .send(&records, &self.host)
                .map_err(|e| format!("sending to {}: {e}", self.sink.name))?;
        }
        self.metrics.audit_forwarded(&self.sink.name, records.len());
        h.sent = last;
        h.unconfirmed.push_back((last, Instant::now()));
        if settle.is_zero() && !self.confirm(h, settle)? {
            *held = None;
            *open = None;
        }
        Ok(true)
    }

    /// Moves the cursor past the sends that have settled; false if the sink
    /// is no longer this forwarder's.
    fn confirm(&self, h: &mut Held, settle: Duration) -> Result<bool, String> {
        let mut confirmed = h.delivered;
        while let Some((seq, _)) = h.unconfirmed.front().filter(|(_, at)| at.elapsed() >= settle) {
            confirmed = *seq;
            h.unconfirmed.pop_front();
        }
        if confirmed > h.delivered {
            let still_ours = self
                .store
                .advance_audit_sink(&self.sink.name, &self.owner, confirmed)
                .map_err(|e| format!("moving the cursor: {e}"))?;
            if !still_ours {
                return Ok(false);
            }
            h.delivered = confirmed;
        }
        Ok(true)
    }

    fn open(&self) -> std::io::Result<Open> {
        match &self.sink.destination {
            Destination::File(path) => Ok(Open::File {
                file: open_append(path)?,
                path: path.clone(),
            }),
            Destination::Syslog { host, port, tls } => {
                let address = std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), *port))?
                    .next()
                    .ok_or_else(|| std::io::Error::other(format!("{host} has no address")))?;
                let stream = TcpStream::connect_timeout(&address, Duration::from_secs(5))?;
                stream.set_write_timeout(Some(Duration::from_secs(10)))?;
                stream.set_nodelay(true)?;
                match tls {
                    None => Ok(Open::Plain(stream)),
                    Some(config) => {
                        let name = rustls::pki_types::ServerName::try_from(host.clone())
                            .map_err(std::io::Error::other)?;
                        let connection = rustls::ClientConnection::new(Arc::clone(config), name)
                            .map_err(std::io::Error::other)?;
                        let mut tls = rustls::StreamOwned::new(connection, stream);
                        // The handshake now, so that a refused certificate is this open's error.
                        while tls.conn.is_handshaking() {
                            tls.conn.complete_io(&mut tls.sock)?;
                        }
                        Ok(Open::Tls(Box::new(tls)))
                    }
                }
            }
        }
    }
}

fn open_append(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.append(true).create(true);
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

impl Open {
    /// Writes the records (and syncs a file): one JSON line each to a file,
    /// one framed RFC 5424 message each to syslog.
    fn send(&mut self, records: &[AuditRecord], host: &str) -> std::io::Result<()> {
        let mut out = Vec::with_capacity(records.len() * 512);
        for record in records {
            let json = serde_json::to_string(&AuditView::from(record)).map_err(std::io::Error::other)?;
            match self {
                Open::File { .. } => {
                    out.extend_from_slice(json.as_bytes());
                    out.push(b'\n');
                }
                Open::Plain(_) | Open::Tls(_) => {
                    let message = syslog_message(record, host, &json);
                    out.extend_from_slice(format!("{} ", message.len()).as_bytes());
                    out.extend_from_slice(message.as_bytes());
                }
            }
        }
        match self {
            Open::File { file, path } => {
                // Rotated (moved away or deleted): a new file at the path.
                let here = std::fs::metadata(&*path)
                    .ok()
                    .map(|m| std::os::unix::fs::MetadataExt::ino(&m));
                if here != Some(std::os::unix::fs::MetadataExt::ino(&file.metadata()?)) {
                    *file = open_append(path)?;
                }
                file.write_all(&out)?;
                file.sync_data()
            }
            Open::Plain(stream) => {
                stream.write_all(&out)?;
                stream.flush()
            }
            Open::Tls(stream) => {
                stream.write_all(&out)?;
                stream.flush()
            }
        }
    }

    /// Whether the receiver has not closed the connection (a look that
    /// does not wait: a receiver sends nothing, so anything read is its
    /// close or a TLS message of the session).
    fn still_open(&mut self) -> bool {
        fn open_after(read: std::io::Result<usize>) -> bool {
            match read {
                Ok(0) => false,
                Ok(_) => true,
                Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
            }
        }
        let mut buffer = [0u8; 512];
        match self {
            Open::File { .. } => true,
            Open::Plain(stream) => {
                if stream.set_nonblocking(true).is_err() {
                    return false;
                }
                let open = open_after(stream.read(&mut buffer));
                open && stream.set_nonblocking(false).is_ok()
            }
            Open::Tls(stream) => {
                if stream.sock.set_nonblocking(true).is_err() {
                    return false;
                }
                let open = open_after(stream.read(&mut buffer));
                open && stream.sock.set_nonblocking(false).is_ok()
            }
        }
    }
}

/// The SD-ID of a record's structured data: `audit` under the enterprise
/// number RFC 5612 sets aside for documentation (luna-cckm has none of its own).
const SD_ID: &str = "audit@32473";

/// A record as an RFC 5424 message: facility authpriv (10), severity notice
/// (5), or warning (4) for a refusal or a failure; the record's fields as
/// structured data, and the record's JSON (as the API shows it) as the message.
fn syslog_message(record: &AuditRecord, host: &str, json: &str) -> String {
    let e = &record.entry;
    let refused = e.outcome.starts_with('4') || e.outcome.starts_with('5') || e.outcome.starts_with("failed");
    let priority = 10 * 8 + if refused { 4 } else { 5 };
    let at =
        e.at.format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|_| "-".into());
    let mut sd = format!("[{SD_ID} format=\"{}\" seq=\"{}\"", record.format, record.seq);
    for (name, value) in [
        ("user_id", &e.user_id),
        ("username", &e.username),
        ("action", &e.action),
        ("resource_type", &e.resource_type),
        ("resource_id", &e.resource_id),
        ("outcome", &e.outcome),
        ("request_id", &e.request_id),
        ("source", &e.source),
        ("instance", &e.instance),
    ] {
        sd.push_str(&format!(" {name}=\"{}\"", sd_escape(value)));
    }
    sd.push(']');
    format!("<{priority}>1 {at} {host} luna-cckm - audit {sd} {json}")
}

/// A structured-data parameter value: `"`, `\` and `]` escaped (RFC 5424
/// section 6.3.3); line breaks, which no field should hold, as spaces.
fn sd_escape(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '"' | '\\' | ']' => {
                escaped.push('\\');
                escaped.push(c);
            }
            '\n' | '\r' => escaped.push(' '),
            other => escaped.push(other),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sinks_are_parsed_from_urls_and_bad_ones_say_why() {
        assert!(matches!(
            Sink::parse("syslog+tcp://siem.example:6514", None).unwrap().destination,
            Destination::Syslog { ref host, port: 6514, tls: None } if host == "siem.example"
        ));
        assert!(matches!(
            Sink::parse("file:///var/log/luna/audit.jsonl", None).unwrap().destination,
            Destination::File(ref p) if p == Path::new("/var/log/luna/audit.jsonl")
        ));
        for (url, says) in [
            ("syslog+tls://siem:6514", "needs the server's CA"),
            ("file://relative.jsonl", "absolute"),
            ("syslog+tcp://siem", "host:port"),
            ("syslog+tcp://:514", "host:port"),
            ("http://siem:80", "is not a sink"),
            ("siem:514", "use syslog+tcp"),
        ] {
            let error = Sink::parse(url, None).unwrap_err();
            assert!(error.contains(says), "{url}: {error}");
        }
    }

    #[test]
    fn structured_data_values_are_escaped() {
        assert_eq!(sd_escape(r#"a"b\c]d"#), r#"a\"b\\c\]d"#);
        assert_eq!(sd_escape("two\nlines"), "two lines");
        assert_eq!(syslog_hostname("host-1.example:8443"), "host-1.example");
        assert_eq!(syslog_hostname(""), "-");
    }
}
