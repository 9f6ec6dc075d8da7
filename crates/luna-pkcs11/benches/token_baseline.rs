//! The raw token's rates through luna-pkcs11: the physical limits the API is
//! held against. `just bench-token`, or
//! `cargo bench -p luna-pkcs11 --bench token_baseline`.
//!
//! Sizes: LUNA_BENCH_AES (default 500), LUNA_BENCH_RSA (16), LUNA_BENCH_OBJECTS (10000),
//! LUNA_BENCH_MEMORY_KEYS (5000), LUNA_BENCH_GCM (2000 AES-GCM calls).
//! SoftHSM2 fills a token slowly (every call walks the token's objects), so the
//! big token is built once and kept under `target/tmp/bench-softhsm/`; later
//! runs copy it. Delete that folder to rebuild it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use luna_domain::{AttributeSet, Mechanism};
use luna_pkcs11::softhsm::SoftHsmHome;
use luna_pkcs11::{GenerateRequest, Module, ObjectRef, Pkcs11Token, Token};
use secrecy::SecretString;
use uuid::Uuid;

const PIN: &str = "bench-user-pin";
const SO_PIN: &str = "bench-so-pin";

fn count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn request(mechanism: Mechanism, size: u32) -> GenerateRequest {
    GenerateRequest {
        cka_id: Uuid::new_v4().as_bytes().to_vec(),
        label: "bench".into(),
        mechanism,
        size,
        attributes: AttributeSet::parse_names(&["CKA_ENCRYPT", "CKA_DECRYPT", "CKA_SIGN"]).unwrap(),
        remap: true,
        retry: false,
        wrap_with_trusted: false,
    }
}

fn open(module: &std::sync::Arc<Module>, label: &str) -> Pkcs11Token {
    module.open_token(label, None, SecretString::from(PIN)).unwrap()
}

fn fresh(module: &std::sync::Arc<Module>, label: &str) -> Pkcs11Token {
    module
        .init_token(label, &SecretString::from(SO_PIN), &SecretString::from(PIN))
        .unwrap();
    open(module, label)
}

/// Generates `n` keys over `threads` threads (tokens round robin); returns keys/s.
fn generate(tokens: &[&Pkcs11Token], threads: usize, n: usize, mechanism: Mechanism, size: u32) -> f64 {
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let token = tokens[t % tokens.len()];
            let share = n / threads + usize::from(t < n % threads);
            s.spawn(move || {
                for _ in 0..share {
                    token.generate(&request(mechanism, size)).unwrap();
                }
            });
        }
    });
    n as f64 / start.elapsed().as_secs_f64()
}

fn line(what: &str, value: f64, unit: &str, note: &str) {
    println!("{what:<52} {value:>10.1} {unit:<10}{note}");
}

fn ratio(rate: f64, base: f64) -> String {
    format!(" ({:.2}x one thread)", rate / base)
}

fn copy_dir(from: &Path, to: &Path) {
    let status = Command::new("cp").arg("-a").arg(from).arg(to).status().unwrap();
    assert!(status.success(), "copying {} to {}", from.display(), to.display());
}

fn main() {
    let aes = count("LUNA_BENCH_AES", 500);
    let rsa = count("LUNA_BENCH_RSA", 16);
    let objects = count("LUNA_BENCH_OBJECTS", 10_000);
    let big_label = format!("bench-big-{objects}");
    let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("bench-softhsm")
        .join(&big_label);

    // A home of our own; the cached big token (if any) is copied in before the
    // module starts, since SoftHSM2 reads its token directory at C_Initialize.
    let home_dir = tempfile::Builder::new().prefix("luna-bench-").tempdir().unwrap();
    std::fs::create_dir_all(home_dir.path().join("tokens")).unwrap();
    let cached = cache.join("tokens").is_dir();
    if cached {
        for entry in std::fs::read_dir(cache.join("tokens")).unwrap() {
            copy_dir(&entry.unwrap().path(), &home_dir.path().join("tokens"));
        }
    }
    let home = SoftHsmHome::open(
        home_dir.path(),
        std::env::var_os("LUNA_TEST_SOFTHSM_MODULE")
            .map(PathBuf::from)
            .as_deref(),
    )
    .unwrap();
    let module = home.module();
    println!(
        "luna-pkcs11 token baseline: {} ({} cores)",
        module.path().display(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );

    let one = fresh(module, "bench-one");
    let other = fresh(module, "bench-other");
    generate(&[&one], 1, 10, Mechanism::AesKeyGen, 256); // warm-up: sessions and login

    let aes1 = generate(&[&one], 1, aes, Mechanism::AesKeyGen, 256);
    line(
        &format!("AES-256 keys, 1 thread, 1 token (n={aes})"),
        aes1,
        "keys/s",
        "",
    );
    let aes2 = generate(&[&one], 2, aes, Mechanism::AesKeyGen, 256);
    line(
        "AES-256 keys, 2 threads, 1 token",
        aes2,
        "keys/s",
        &ratio(aes2, aes1),
    );
    let aes2t = generate(&[&one, &other], 2, aes, Mechanism::AesKeyGen, 256);
    line(
        "AES-256 keys, 2 threads, 2 tokens",
        aes2t,
        "keys/s",
        &ratio(aes2t, aes1),
    );

    let rsa1 = generate(&[&one], 1, rsa, Mechanism::RsaPkcsKeyPairGen, 2048);
    line(
        &format!("RSA-2048 pairs, 1 thread, 1 token (n={rsa})"),
        rsa1,
        "pairs/s",
        "",
    );
    let rsa2 = generate(&[&one], 2, rsa, Mechanism::RsaPkcsKeyPairGen, 2048);
    line(
        "RSA-2048 pairs, 2 threads, 1 token",
        rsa2,
        "pairs/s",
        &ratio(rsa2, rsa1),
    );
    let rsa2t = generate(&[&one, &other], 2, rsa, Mechanism::RsaPkcsKeyPairGen, 2048);
    line(
        "RSA-2048 pairs, 2 threads, 2 tokens",
        rsa2t,
        "pairs/s",
        &ratio(rsa2t, rsa1),
    );

    // AES-GCM through a token key, as an external key store's encrypts and
    // decrypts run (a 32-byte data key under 64 bytes of additional data):
    // the raw rate the XKS proxy (issue 30) is to be held against.
    let gcm = count("LUNA_BENCH_GCM", 2000);
    let key = one.generate(&request(Mechanism::AesKeyGen, 256)).unwrap().objects[0].handle;
    for threads in [1, 8] {
        let (encrypts, p50, p99) = gcm_calls(&one, key, threads, gcm, false);
        line(
            &format!("AES-GCM encrypts, {threads} thread(s) (n={gcm})"),
            encrypts,
            "calls/s",
            &format!("  p50 {p50:.2} ms, p99 {p99:.2} ms"),
        );
        let (decrypts, p50, p99) = gcm_calls(&one, key, threads, gcm, true);
        line(
            &format!("AES-GCM decrypts, {threads} thread(s) (n={gcm})"),
            decrypts,
            "calls/s",
            &format!("  p50 {p50:.2} ms, p99 {p99:.2} ms"),
        );
    }

    let big = if cached {
        open(module, &big_label)
    } else {
        let big = fresh(module, &big_label);
        let fill = generate(&[&big], 1, objects, Mechanism::AesKeyGen, 128);
        line(
            &format!("filling a token with {objects} AES-128 keys"),
            fill,
            "keys/s",
            " (once; cached)",
        );
        std::fs::create_dir_all(cache.join("tokens")).unwrap();
        let serial = big.info().serial_number.clone();
        drop(big);
        // SoftHSM2 names a token's folder after its serial number's UUID form; copy
        // the one folder whose token.object holds this serial.
        for entry in std::fs::read_dir(home_dir.path().join("tokens")).unwrap() {
            let dir = entry.unwrap().path();
            let object = std::fs::read(dir.join("token.object")).unwrap_or_default();
            if object.windows(serial.len()).any(|w| w == serial.as_bytes()) {
                copy_dir(&dir, &cache.join("tokens"));
            }
        }
        open(module, &big_label)
    };

    let start = Instant::now();
    let mut handles: Vec<ObjectRef> = Vec::with_capacity(objects);
    big.scan(256, &mut |batch| {
        handles.extend_from_slice(batch);
        ControlFlow::Continue(())
    })
    .unwrap();
    let enumerate = start.elapsed();
    assert!(handles.len() >= objects, "{} objects", handles.len());
    let n = handles.len();
    line(
        &format!("enumerate {n} objects (batches of 256)"),
        per_second(n, enumerate),
        "objects/s",
        "",
    );

    let start = Instant::now();
    let mut described = 0;
    big.scan_described(256, &mut |batch| {
        described += batch.len();
        ControlFlow::Continue(())
    })
    .unwrap();
    let both = start.elapsed();
    assert_eq!(described, n);
    line(
        &format!("enumerate + describe {n} objects"),
        per_second(n, both),
        "objects/s",
        "",
    );
    println!(
        "{:<52} {:>10.3} s",
        "  enumerate + describe, in all",
        both.as_secs_f64()
    );

    let probes = 100;
    let start = Instant::now();
    for _ in 0..probes {
        assert!(big.find_by_id(Uuid::new_v4().as_bytes()).unwrap().is_empty());
    }
    let find = start.elapsed() / probes;
    line(
        &format!("find by CKA_ID on a token of {n} objects"),
        find.as_secs_f64() * 1000.0,
        "ms each",
        "",
    );
    let on_big = generate(&[&big], 1, 50, Mechanism::AesKeyGen, 256);
    line(
        &format!("AES-256 keys on the token of {n} objects (n=50)"),
        on_big,
        "keys/s",
        "",
    );

    // What the module itself keeps in memory for each key it holds: the
    // floor under a service's growth while keys are made (scripts/memory-probe).
    let memory_keys = count("LUNA_BENCH_MEMORY_KEYS", 5000);
    let held = fresh(module, "bench-memory");
    generate(&[&held], 1, 10, Mechanism::AesKeyGen, 256);
    let before = resident_bytes();
    generate(&[&held], 1, memory_keys, Mechanism::AesKeyGen, 256);
    let grown = resident_bytes().saturating_sub(before);
    line(
        &format!("resident memory the module keeps per AES key (n={memory_keys})"),
        grown as f64 / memory_keys as f64,
        "bytes",
        "",
    );
}

/// `n` AES-GCM encrypts (or decrypts of one sealed value) over `threads`
/// threads: calls/s, and the p50 and p99 of one call, in ms.
fn gcm_calls(
    token: &Pkcs11Token,
    key: ObjectRef,
    threads: usize,
    n: usize,
    decrypt: bool,
) -> (f64, f64, f64) {
    let (data_key, aad) = ([7u8; 32], [9u8; 64]);
    let sealed = token.encrypt_gcm(key, &aad, &data_key).unwrap();
    let start = Instant::now();
    let mut took: Vec<Duration> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let sealed = &sealed;
                s.spawn(move || {
                    (t..n)
                        .step_by(threads)
                        .map(|_| {
                            let call = Instant::now();
                            if decrypt {
                                token.decrypt_gcm(key, &aad, sealed).unwrap();
                            } else {
                                token.encrypt_gcm(key, &aad, &data_key).unwrap();
                            }
                            call.elapsed()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().unwrap()).collect()
    });
    let rate = per_second(n, start.elapsed());
    took.sort_unstable();
    let at = |q: f64| took[((took.len() as f64 * q) as usize).min(took.len() - 1)].as_secs_f64() * 1e3;
    (rate, at(0.5), at(0.99))
}

/// This process's resident set (VmRSS), in bytes.
fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib * 1024
}

fn per_second(n: usize, took: Duration) -> f64 {
    n as f64 / took.as_secs_f64()
}
