//! What XKS calls read of the database (the keystore at a path, a
//! credential's secret, the key, its partition), kept for a second: KMS
//! calls a proxy for every encrypt and decrypt, and each call would
//! otherwise read four rows and open a sealed secret. A change made through
//! this instance (a key forgotten, a keystore deleted or rotated) clears
//! them at once (a read begun before the clear is not kept); one made
//! through another instance reaches this one's calls within `FOR`, and a
//! credential is taken until `FOR` past its end.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

use luna_domain::xks::keystore::Keystore;
use luna_domain::{Key, Partition};
use parking_lot::Mutex;
use secrecy::SecretString;
use uuid::Uuid;

/// How long what was read is taken as read.
pub const FOR: Duration = Duration::from_secs(1);

/// Past this many entries a table starts again empty: paths and ids are
/// the caller's, and a caller sending new ones must not grow it for ever.
const MOST_ENTRIES: usize = 10_000;

/// One kind of lookup: its answers and when each was read, and how many
/// times it was cleared (a read begun before a clear is not kept after it).
#[derive(Debug)]
struct Table<K, V> {
    answers: Mutex<Answers<K, V>>,
}

/// The clears so far, and each answer with when it was read.
type Answers<K, V> = (u64, HashMap<K, (Instant, V)>);

impl<K, V> Default for Table<K, V> {
    fn default() -> Self {
        Table {
            answers: Mutex::new((0, HashMap::new())),
        }
    }
}

impl<K: Eq + Hash + Clone, V: Clone> Table<K, V> {
    /// The answer for `key` read within `FOR`, or `read`'s, kept if `keep`
    /// says so and no clear came while it was read.
    fn get_or_read<E>(
        &self,
        key: &K,
        keep: impl Fn(&V) -> bool,
        read: impl FnOnce() -> Result<V, E>,
    ) -> Result<V, E> {
        let cleared = {
            let answers = self.answers.lock();
            if let Some((at, value)) = answers.1.get(key) {
                if at.elapsed() < FOR {
                    return Ok(value.clone());
                }
            }
            answers.0
        };
        let value = read()?;
        let mut answers = self.answers.lock();
        if answers.0 == cleared && keep(&value) {
            if answers.1.len() >= MOST_ENTRIES {
                answers.1.clear();
            }
            answers.1.insert(key.clone(), (Instant::now(), value.clone()));
        }
        Ok(value)
    }

    fn clear(&self) {
        let mut answers = self.answers.lock();
        answers.0 += 1;
        answers.1.clear();
    }
}

/// Any answer is kept, found or not.
fn always<V>(_: &V) -> bool {
    true
}

/// The four lookups.
#[derive(Debug, Default)]
pub struct XksLookups {
    keystores: Table<String, Option<Keystore>>,
    secrets: Table<(Uuid, String), Option<SecretString>>,
    keys: Table<Uuid, Option<Key>>,
    partitions: Table<Uuid, Option<Partition>>,
}

impl XksLookups {
    /// The keystore at `prefix`.
    pub fn keystore<E>(
        &self,
        prefix: &str,
        read: impl FnOnce() -> Result<Option<Keystore>, E>,
    ) -> Result<Option<Keystore>, E> {
        self.keystores.get_or_read(&prefix.to_owned(), always, read)
    }

    /// The secret of a keystore's credential, if it is valid. Only a secret
    /// found is kept: access key ids are the caller's to make up.
    pub fn secret<E>(
        &self,
        keystore: Uuid,
        access_key_id: &str,
        read: impl FnOnce() -> Result<Option<SecretString>, E>,
    ) -> Result<Option<SecretString>, E> {
        self.secrets
            .get_or_read(&(keystore, access_key_id.to_owned()), Option::is_some, read)
    }

    /// The key `id`.
    pub fn key<E>(&self, id: Uuid, read: impl FnOnce() -> Result<Option<Key>, E>) -> Result<Option<Key>, E> {
        self.keys.get_or_read(&id, always, read)
    }

    /// The partition `id`.
    pub fn partition<E>(
        &self,
        id: Uuid,
        read: impl FnOnce() -> Result<Option<Partition>, E>,
    ) -> Result<Option<Partition>, E> {
        self.partitions.get_or_read(&id, always, read)
    }

    /// Forgets everything read: something changed through this instance.
    pub fn clear(&self) {
        self.keystores.clear();
        self.secrets.clear();
        self.keys.clear();
        self.partitions.clear();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_is_kept_for_a_second_and_a_clear_forgets_it() {
        let lookups = XksLookups::default();
        let reads = std::cell::Cell::new(0);
        let read = || -> Result<Option<Partition>, ()> {
            reads.set(reads.get() + 1);
            Ok(None)
        };
        let id = Uuid::new_v4();
        lookups.partition(id, read).unwrap();
        lookups.partition(id, read).unwrap();
        assert_eq!(reads.get(), 1);
        lookups.clear();
        lookups.partition(id, read).unwrap();
        assert_eq!(reads.get(), 2);
        std::thread::sleep(FOR);
        lookups.partition(id, read).unwrap();
        assert_eq!(reads.get(), 3, "read again once a second has gone");
        // A failed read is not kept.
        assert!(lookups
            .partition(Uuid::new_v4(), || Err::<Option<Partition>, ()>(()))
            .is_err());
    }
}
