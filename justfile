# luna-cckm tasks; `just --list` shows them. Run `scripts/bootstrap` once first.
set shell := ["bash", "-euo", "pipefail", "-c"]

# Start luna-server on the embedded default: SQLite and SoftHSM2 tokens in ./data.
serve *ARGS:
    cargo run --release -p luna-server -- serve --data-dir ./data {{ARGS}}

# Every test: formatting, lints, and each crate's tests (real SoftHSM2 and openCryptoki tokens, SQLite and PostgreSQL),
# run by cargo-nextest several at once (.config/nextest.toml), then the doctests.
test:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings
    cargo machete
    RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps
    cargo nextest run --workspace
    cargo test --workspace --doc
    scripts/schemathesis
    scripts/package-test
    scripts/container-test

# schemathesis against a live server on the embedded default, every check.
schemathesis:
    scripts/schemathesis

# The Debian package (release build): target/debian/luna-cckm_VERSION_ARCH.deb.
deb:
    scripts/build-deb

# The Debian package installed, served, upgraded, removed and purged on this machine (root).
package-test:
    scripts/package-test

# The container image (release build, no registry): luna-cckm:VERSION in podman's store.
image:
    scripts/build-image

# The image started non-root on a volume, a key created, the container replaced, the key kept.
container-test:
    scripts/container-test

# One crate's tests on their own, e.g. `just test-crate luna-store`.
test-crate CRATE:
    cargo test -p {{CRATE}}

# The raw token's rates through luna-pkcs11 (the baseline the API is held against).
bench-token:
    cargo bench -p luna-pkcs11 --bench token_baseline

# RustSec advisories against Cargo.lock. Needs GitHub (the advisory database),
# which the machines `just test` runs on here cannot reach, so it is not in `just test`.
audit:
    cargo install --quiet --locked cargo-audit
    cargo audit

# Repeated code in the working tree's change.
duplicates:
    duplicates --change

# Load and faults against two instances on one database (kill -9, the database
# stopped, the token taken away), then lost / duplicated / stuck / wrongly DELETED (all 0).
chaos:
    cargo build --release -p luna-server
    cargo run --release -p luna-server --example chaos

# Creates through real servers, this build beside main at a4771b1 (built once
# under target/bench-base) and the raw token; then, in process: a latency-bound
# token, two instances on one PostgreSQL, reads over 1,000,000 records,
# refresh and replication. Run on a quiet machine (`ps` first).
bench-api:
    cargo bench -p luna-server --bench creates
    cargo bench -p luna-api --bench api
