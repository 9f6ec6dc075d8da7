//! Creates through real `luna-server` processes, this build beside main at
//! the commit the issue measured (`LUNA_BENCH_BASE`, a4771b1; its sources
//! taken with `git archive` and built once under `target/bench-base/`), in
//! the same run, against the raw token. `just bench-api` runs it.
//!
//! For each module (SoftHSM2, openCryptoki), database (SQLite, PostgreSQL)
//! and concurrency (1 and 8 keep-alive Rust clients, threads of this process:
//! the client is not the bottleneck): the raw rate of AES-256 creates
//! straight through luna-pkcs11 on a fresh token, then each server on a fresh
//! token and a fresh database, `n` creates posted until every key is
//! AVAILABLE; main, this build, this build again, main again (each follows
//! the other once), then the means (keys/s, the ratios to the raw token and
//! to main, CPU). Printed for each server run: keys/s and the ratio to the
//! raw token, POST p50/p99, the server process's CPU per key made (user
//! and system time from `/proc`, over the keys; the clients are another
//! process's threads, the token's own work is the server's), and for this
//! build, from its `/metrics`: serial database time per key (inside the group
//! commit's batches and commits) and statements sent per key (each a round
//! trip on PostgreSQL).
//!
//! `LUNA_BENCH_PROFILE_DIR` names a directory where `perf record` keeps a
//! profile of this build's server for each row (`perf report -i …`), and
//! `LUNA_BENCH_THIS_BINARY` another build of it to run (one built with
//! `RUSTFLAGS="-C force-frame-pointers=yes"` gives call graphs).
//!
//! `LUNA_BENCH_CREATES_ON` limits the rows (a comma list such as
//! `openCryptoki/SQLite`), `LUNA_BENCH_CONCURRENCY` the concurrency, and
//! `LUNA_BENCH_CREATES` the keys per run (2,000 on openCryptoki, whose soft
//! token holds at most 2,048 objects; 400 on SoftHSM2).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use luna_pkcs11::testing::{TestModule, USER_PIN};
use luna_store::testing::ScratchDatabase;
use serde_json::json;
use support::{call, login, softhsm2_operator_tokens, Server};

/// The code the issue measured, which this build is held against.
const BASE_COMMIT: &str = "a4771b1";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The base commit's `luna-server`, built once (its sources from `git
/// archive`, its own target directory) and kept for later runs.
fn base_binary() -> (String, PathBuf) {
    let commit = std::env::var("LUNA_BENCH_BASE").unwrap_or_else(|_| BASE_COMMIT.into());
    let dir = workspace().join("target/bench-base").join(&commit);
    let binary = dir.join("target/release/luna-server");
    if binary.exists() {
        return (commit, binary);
    }
    let sources = dir.join("src");
    if !sources.join("Cargo.toml").exists() {
        std::fs::create_dir_all(&sources).unwrap();
        println!("bench: taking {commit}'s sources into {}", sources.display());
        let archive = Command::new("git")
            .current_dir(workspace())
            .args(["archive", "--format=tar", &commit])
            .output()
            .expect("git archive");
        assert!(
            archive.status.success(),
            "git archive {commit}: {}",
            String::from_utf8_lossy(&archive.stderr)
        );
        let mut untar = Command::new("tar")
            .arg("-x")
            .arg("-C")
            .arg(&sources)
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(untar.stdin.as_mut().unwrap(), &archive.stdout).unwrap();
        assert!(untar.wait().unwrap().success());
    }
    println!(
        "bench: building luna-server at {commit} (once; kept in {})",
        dir.display()
    );
    let built = Command::new("cargo")
        .args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "luna-server",
            "--manifest-path",
        ])
        .arg(sources.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(dir.join("target"))
        .status()
        .unwrap();
    assert!(built.success(), "building {commit}");
    (commit, binary)
}

fn count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A process's user + system CPU time so far, from `/proc/<pid>/stat`.
fn cpu_of(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The fields after the command's name (in parentheses, which may hold spaces).
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_secs_f64(ticks as f64 / clock_ticks_per_second())
}

fn clock_ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        let out = Command::new("getconf").arg("CLK_TCK").output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    })
}

/// The figures this build's `/metrics` keeps of its database (none in
/// main's): serial write time, writes and commits, statements.
#[derive(Debug, Default, Clone, Copy)]
struct Database {
    /// The writes' work and their commits: serial database time.
    serial_seconds: f64,
    /// The batches' turns, waits for writers to join included.
    turn_seconds: f64,
    writes: f64,
    commits: f64,
    statements: f64,
}

fn database_figures(base: &str) -> Option<Database> {
    let text = ureq::get(&format!("{}/metrics", base.trim_end_matches("/api/v1")))
        .call()
        .ok()?
        .into_string()
        .ok()?;
    let value = |line: &str| -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(line))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    };
    Some(Database {
        serial_seconds: value("luna_db_write_seconds_total{span=\"work\"}")?
            + value("luna_db_write_seconds_total{span=\"commit\"}")?,
        turn_seconds: value("luna_db_write_seconds_total{span=\"batch\"}")?,
        writes: value("luna_db_writes_total{counted=\"committed\"}")?,
        commits: value("luna_db_writes_total{counted=\"commits\"}")?,
        statements: value("luna_db_statements_total")?,
    })
}

struct Run {
    keys_per_second: f64,
    post_p50: Duration,
    post_p99: Duration,
    cpu_per_key: Duration,
    /// This build's database figures over the run.
    database: Option<Database>,
}

/// A fresh token of `module` for a server process: its label, the
/// environment the server needs for it, and what must live as long as it.
fn token_for_server(
    module: TestModule,
    dir: &Path,
) -> (String, Vec<(&'static str, PathBuf)>, Box<dyn std::any::Any>) {
    match module {
        TestModule::SoftHsm2 => {
            let conf = softhsm2_operator_tokens(&dir.join("softhsm"), &["bench"], "bench-so-1", USER_PIN);
            ("bench".into(), vec![("SOFTHSM2_CONF", conf)], Box::new(()))
        }
        TestModule::OpenCryptoki => {
            let token = module.fresh_tokens("bench", 1).pop().unwrap();
            (token.label.clone(), Vec::new(), Box::new(token))
        }
    }
}

fn module_path(module: TestModule) -> PathBuf {
    match module {
        TestModule::SoftHsm2 => luna_pkcs11::softhsm::find_module().unwrap(),
        TestModule::OpenCryptoki => luna_pkcs11::testing::opencryptoki_module_path().to_path_buf(),
    }
}

/// `n` creates posted by `clients` through the server `binary` until every
/// key is AVAILABLE, on a fresh token of `module` and a fresh database.
/// With `profile`, `perf record` samples the server process meanwhile into that file.
fn server_run(
    binary: &Path,
    module: TestModule,
    postgres: bool,
    n: usize,
    clients: usize,
    profile: Option<&Path>,
) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let (label, env, _token) = token_for_server(module, dir.path());
    let scratch = postgres.then(|| ScratchDatabase::postgres().unwrap());
    let module_path = module_path(module);
    let mut args = vec![
        "--insecure-http",
        "--pkcs11-module",
        module_path.to_str().unwrap(),
    ];
    if let Some(scratch) = &scratch {
        args.extend(["--database-url", scratch.url.as_str()]);
    }
    let env: Vec<(&str, &Path)> = env.iter().map(|(k, v)| (*k, v.as_path())).collect();
    let server = Server::launch(&dir.path().join("data"))
        .binary(binary)
        .args(&args)
        .env(&env)
        .log("error", Stdio::null())
        .start();
    let base = server.base.clone();
    let token = login(&base, &server.admin_password_shown().unwrap());
    let (status, body) = call(
        "POST",
        &format!("{base}/connectionmgmt/services/luna-network/connections"),
        Some(&token),
        Some(
            &json!({"name": "bench", "password": USER_PIN, "partitions": [{"hostname": "localhost", "partition_label": label}]}),
        ),
    );
    assert_eq!(status, 201, "{body}");
    let (status, partition) = call(
        "POST",
        &format!("{base}/cckm/hsm/luna/add-partition"),
        Some(&token),
        Some(&json!({"connection": "bench"})),
    );
    assert_eq!(status, 201, "{partition}");
    let partition_id = partition["id"].as_str().unwrap().to_owned();
    let body = json!({"label": "bench", "size": 256, "partition_id": partition_id, "mechanism": "CKM_AES_KEY_GEN", "attributes": ["CKA_ENCRYPT", "CKA_DECRYPT"]});
    let url = format!("{base}/cckm/hsm/luna/keys");
    let auth = format!("Bearer {token}");
    let database_before = database_figures(&base);
    let cpu_before = cpu_of(server.pid());
    let profile = profile.map(|path| {
        Command::new("perf")
            .args(["record", "-e", "cpu-clock", "-F", "999", "-g", "-o"])
            .arg(path)
            .args(["-p", &server.pid().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("perf (linux-perf) is installed")
    });
    let start = Instant::now();
    let mut posts: Vec<Duration> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|t| {
                let (url, auth, body) = (&url, &auth, &body);
                s.spawn(move || {
                    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(60)).build();
                    (0..(n / clients + usize::from(t < n % clients)))
                        .map(|_| {
                            let began = Instant::now();
                            let answer = agent
                                .post(url)
                                .set("Authorization", auth)
                                .send_json(body.clone())
                                .unwrap();
                            assert_eq!(answer.status(), 201);
                            let _ = answer.into_string().unwrap();
                            began.elapsed()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let pending = format!("{base}/cckm/hsm/luna/keys?partition_id={partition_id}&status=in_progress&limit=1");
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let (status, page) = call("GET", &pending, Some(&token), None);
        assert_eq!(status, 200, "{page}");
        if page["total"] == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "keys still in progress after 4 minutes: {page}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let elapsed = start.elapsed();
    let cpu = cpu_of(server.pid()) - cpu_before;
    if let Some(mut perf) = profile {
        let _ = Command::new("kill")
            .args(["-INT", &perf.id().to_string()])
            .status();
        let _ = perf.wait();
    }
    let database_after = database_figures(&base);
    let available = format!("{base}/cckm/hsm/luna/keys?partition_id={partition_id}&status=AVAILABLE&limit=1");
    assert_eq!(
        call("GET", &available, Some(&token), None).1["total"],
        n,
        "every key ended AVAILABLE"
    );
    server.stop();
    posts.sort();
    let at = |q: f64| posts[((posts.len() as f64 * q) as usize).min(posts.len() - 1)];
    Run {
        keys_per_second: n as f64 / elapsed.as_secs_f64(),
        post_p50: at(0.50),
        post_p99: at(0.99),
        cpu_per_key: cpu / n as u32,
        database: database_before.zip(database_after).map(|(b, a)| Database {
            serial_seconds: a.serial_seconds - b.serial_seconds,
            turn_seconds: a.turn_seconds - b.turn_seconds,
            writes: a.writes - b.writes,
            commits: a.commits - b.commits,
            statements: a.statements - b.statements,
        }),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The two builds' means over their runs: keys/s, the ratio to main and to
/// the raw token, CPU per key.
fn print_means(this: &[&Run], main: &[&Run], raw: f64) {
    let mean =
        |runs: &[&Run], of: fn(&Run) -> f64| runs.iter().map(|r| of(r)).sum::<f64>() / runs.len() as f64;
    let rate = |r: &Run| r.keys_per_second;
    let cpu = |r: &Run| ms(r.cpu_per_key);
    println!(
        "    {:<14} {:>7.1} keys/s  {:>4.2} × raw  {:.2} × main ({:.1} keys/s)   CPU {:.2} ms/key (main {:.2})",
        "mean",
        mean(this, rate),
        mean(this, rate) / raw,
        mean(this, rate) / mean(main, rate),
        mean(main, rate),
        mean(this, cpu),
        mean(main, cpu),
    );
}

fn print_run(name: &str, run: &Run, raw: f64, n: usize) {
    println!(
        "    {name:<14} {:>7.1} keys/s  {:>4.2} × raw   POST p50 {:>6.2} ms  p99 {:>6.2} ms   CPU {:>5.2} ms/key",
        run.keys_per_second,
        run.keys_per_second / raw,
        ms(run.post_p50),
        ms(run.post_p99),
        ms(run.cpu_per_key),
    );
    if let Some(db) = run.database {
        println!(
            "    {:<14} database {:>5.3} ms/key (turns {:.3}) in {:.0} commits ({:.1} writes a commit), {:.1} statements/key",
            "",
            db.serial_seconds * 1000.0 / n as f64,
            db.turn_seconds * 1000.0 / n as f64,
            db.commits,
            db.writes / db.commits.max(1.0),
            db.statements / n as f64,
        );
    }
}

fn main() {
    let (commit, base) = base_binary();
    // Another build of this code (one with frame pointers, for a profile's call graph).
    let this = std::env::var_os("LUNA_BENCH_THIS_BINARY")
        .map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_luna-server")), PathBuf::from);
    println!(
        "luna-server creates, this build against main at {commit} ({} cores)",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let only = std::env::var("LUNA_BENCH_CREATES_ON").unwrap_or_default();
    let concurrency: Option<usize> = std::env::var("LUNA_BENCH_CONCURRENCY")
        .ok()
        .and_then(|c| c.parse().ok());
    let profiles = std::env::var_os("LUNA_BENCH_PROFILE_DIR").map(PathBuf::from);
    for module in TestModule::ALL {
        let n = count(
            "LUNA_BENCH_CREATES",
            match module {
                TestModule::SoftHsm2 => 400,
                TestModule::OpenCryptoki => 2000,
            },
        );
        for (database, postgres) in [("SQLite", false), ("PostgreSQL", true)] {
            let name = format!("{module}/{database}");
            if !only.is_empty() && !only.split(',').any(|o| o == name) {
                continue;
            }
            for clients in [1, 8].into_iter().filter(|c| concurrency.is_none_or(|o| o == *c)) {
                let cpu_before = cpu_of(std::process::id());
                let raw = module.raw_aes_creates(n, clients);
                let raw_cpu = (cpu_of(std::process::id()) - cpu_before) / n as u32;
                println!(
                    "  {name}, concurrency {clients}, {n} AES-256 creates until AVAILABLE (raw token {raw:.1} keys/s, CPU {:.2} ms/key):",
                    ms(raw_cpu)
                );
                // main, this, this, main: each build follows the other once.
                // What a run leaves behind weighs on the next one (openCryptoki
                // makes a file per object, and ext4 skips the inodes of files
                // deleted in the last seconds when it makes new ones: about a
                // fifth of the server's samples in a profile), so a fixed order
                // favoured whichever build went first.
                let main_name = format!("main {commit}");
                let main_first = server_run(&base, module, postgres, n, clients, None);
                print_run(&main_name, &main_first, raw, n);
                let profile = profiles
                    .as_ref()
                    .map(|dir| dir.join(format!("{module}-{database}-c{clients}.perf.data")));
                let this_first = server_run(&this, module, postgres, n, clients, profile.as_deref());
                print_run("this build", &this_first, raw, n);
                let this_second = server_run(&this, module, postgres, n, clients, None);
                print_run("this build", &this_second, raw, n);
                let main_second = server_run(&base, module, postgres, n, clients, None);
                print_run(&main_name, &main_second, raw, n);
                print_means(&[&this_first, &this_second], &[&main_first, &main_second], raw);
            }
        }
    }
}
