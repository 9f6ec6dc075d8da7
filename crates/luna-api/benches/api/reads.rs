//! Reads over a million records: list, get and deep pages, timed per request against a warm database.

use super::*;

/// `n` AES keys made as a create makes them (luna-domain's `new_key`), then
/// made AVAILABLE as the runner would; a refresh found one in ten gone.
pub(crate) fn records(partition: &luna_domain::Partition, n: usize) -> Vec<Key> {
    let now = luna_store::now();
    let mut rng = rand::thread_rng();
    (0..n)
        .map(|i| {
            let at = now - time::Duration::milliseconds(i as i64);
            let spec = NewKeySpec {
                label: format!("key-{}", rng.gen_range(0..5000)),
                size: [128, 192, 256][i % 3],
                partition_id: partition.id,
                mechanism: Mechanism::AesKeyGen,
                attributes: AttributeSet::parse_names(&["CKA_TOKEN", "CKA_PRIVATE", "CKA_ENCRYPT"]).unwrap(),
            };
            let mut key = spec.new_key(partition, Uuid::new_v4, at).keys.remove(0);
            key.generated_with = Some(Mechanism::AesKeyGen);
            key.sha_256_fingerprint = format!("{:064x}", rng.gen::<u128>());
            key.replicated = true;
            key.apply(&KeyEvent::Succeeded, at).expect("a create succeeds");
            if i % 10 == 0 {
                key.apply(&KeyEvent::Vanished, at)
                    .expect("an idle AVAILABLE key can vanish");
            }
            key
        })
        .collect()
}

pub(crate) struct Latencies {
    pub(crate) per_second: f64,
    pub(crate) p50: Duration,
    pub(crate) p99: Duration,
}

/// `total` GETs from 8 keep-alive clients; `path` picks each request's path.
pub(crate) fn load(
    api: &Api,
    total: usize,
    path: &(dyn Fn(&mut rand::rngs::ThreadRng) -> String + Sync),
) -> Latencies {
    let agent = ureq::AgentBuilder::new().max_idle_connections_per_host(8).build();
    let auth = format!("Bearer {}", api.token);
    timed(8, total, &|| {
        let url = format!("{}{}", api.base, path(&mut rand::thread_rng()));
        let response = agent.get(&url).set("Authorization", &auth).call().unwrap();
        let _ = response.into_string().unwrap();
    })
}

pub(crate) fn row(what: &str, l: &Latencies) {
    println!(
        "  {what:<44} {:>8.0} req/s   p50 {:>6.2} ms   p99 {:>6.2} ms",
        l.per_second,
        l.p50.as_secs_f64() * 1000.0,
        l.p99.as_secs_f64() * 1000.0
    );
}

pub(crate) fn reads(name: &str, db: TestDatabase, n_records: usize, requests: usize) {
    let url = db.url.clone();
    let mut api = Api::start(db);
    let partition = api.partition("bench-read", 1);
    let partition_id = Uuid::parse_str(partition["id"].as_str().unwrap()).unwrap();
    let partition = api.store().get_partition(partition_id).unwrap().unwrap();
    let start = Instant::now();
    let keys = records(&partition, n_records);
    for chunk in keys.chunks(5000) {
        api.store().insert_keys(chunk).unwrap();
    }
    println!(
        "{name}: {n_records} key records inserted in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    // What autovacuum does after a bulk load, before the first read: without
    // it PostgreSQL's index-only scans visit the heap for every row (no page
    // is marked all-visible yet) and its plans use an empty table's statistics.
    if url.starts_with("postgres") {
        let vacuum = std::process::Command::new("psql")
            .args([url.as_str(), "-qc", "VACUUM ANALYZE"])
            .status()
            .unwrap();
        assert!(vacuum.success());
    }
    // A million rows take minutes to insert; the admin token lasts five.
    api.log_in();
    let ids: Vec<String> = keys.iter().map(|k| k.id.to_string()).collect();
    let list =
        format!("/cckm/hsm/luna/keys?partition_id={partition_id}&status=AVAILABLE&sort=-updatedAt&limit=10");
    // Warm-up: connections, caches.
    load(&api, 400, &|_| "/healthz".into());
    let health = load(&api, requests, &|_| "/healthz".into());
    let get = load(&api, requests, &|rng| {
        format!("/cckm/hsm/luna/keys/{}", ids[rng.gen_range(0..ids.len())])
    });
    let page = load(&api, requests, &|rng| {
        format!("{list}&skip={}", rng.gen_range(0..1000) * 10)
    });
    let deep = load(&api, requests, &|rng| {
        format!("{list}&skip={}", rng.gen_range(0..10_000) * 10)
    });
    row("GET /healthz (the server's floor)", &health);
    row("GET /keys/{id}", &get);
    row("GET /keys?partition_id&status&sort=-updatedAt", &page);
    // The same order spelt with a second key: no bucket counts serve it, so
    // the index walks the skipped rows, as every deep page did before them.
    let walked = load(&api, requests, &|rng| {
        format!(
            "{}&skip={}",
            list.replace("-updatedAt", "-updatedAt,-id"),
            rng.gen_range(0..10_000) * 10
        )
    });
    row("  the same, skip up to 100,000", &deep);
    row("  the same by walking (sort=-updatedAt,-id)", &walked);
    let met = |l: &Latencies| {
        if l.p99 < Duration::from_millis(10) {
            "met"
        } else {
            "NOT met"
        }
    };
    println!(
        "  targets (p99 < 10 ms): GET {}; list {}; deep list {}",
        met(&get),
        met(&page),
        met(&deep)
    );
}
