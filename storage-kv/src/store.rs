//! A sled database and its named trees, with JSON helpers.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::KvError;

/// One sled database on disk (or in memory for tests).
#[derive(Clone)]
pub struct KvStore {
    db: sled::Db,
}

/// A named, ordered keyspace inside a [`KvStore`].
#[derive(Clone)]
pub struct Tree {
    tree: sled::Tree,
}

impl KvStore {
    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Self, KvError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(8 * 1024 * 1024)
            .flush_every_ms(Some(200))
            .open()?;
        Ok(KvStore { db })
    }

    /// A database that lives only in memory.
    pub fn memory() -> Result<Self, KvError> {
        let db = sled::Config::new().temporary(true).open()?;
        Ok(KvStore { db })
    }

    pub fn tree(&self, name: &str) -> Result<Tree, KvError> {
        Ok(Tree {
            tree: self.db.open_tree(name)?,
        })
    }

    /// The underlying sled database (for the Durable Object store).
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    /// Makes every write so far durable.
    pub fn flush(&self) -> Result<(), KvError> {
        self.db.flush()?;
        Ok(())
    }
}

impl Tree {
    pub fn get<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, KvError> {
        match self.tree.get(key)? {
            Some(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
            None => Ok(None),
        }
    }

    pub fn put<T: Serialize>(&self, key: &[u8], value: &T) -> Result<(), KvError> {
        let bytes = serde_json::to_vec(value)?;
        self.tree.insert(key, bytes)?;
        Ok(())
    }

    /// Writes and waits until the write is on disk.
    pub fn put_durable<T: Serialize>(&self, key: &[u8], value: &T) -> Result<(), KvError> {
        self.put(key, value)?;
        self.tree.flush()?;
        Ok(())
    }

    pub fn delete(&self, key: &[u8]) -> Result<bool, KvError> {
        Ok(self.tree.remove(key)?.is_some())
    }

    /// Every entry whose key starts with `prefix`, in key order.
    pub fn scan_prefix<T: DeserializeOwned>(
        &self,
        prefix: &[u8],
    ) -> Result<Vec<(Vec<u8>, T)>, KvError> {
        let mut out = Vec::new();
        for item in self.tree.scan_prefix(prefix) {
            let (k, v) = item?;
            out.push((k.to_vec(), serde_json::from_slice(&v)?));
        }
        Ok(out)
    }

    /// Up to `limit` entries with `prefix`, newest (greatest key) first.
    pub fn scan_prefix_rev<T: DeserializeOwned>(
        &self,
        prefix: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, T)>, KvError> {
        let mut out = Vec::new();
        for item in self.tree.scan_prefix(prefix).rev().take(limit) {
            let (k, v) = item?;
            out.push((k.to_vec(), serde_json::from_slice(&v)?));
        }
        Ok(out)
    }

    /// The keys with `prefix`, greatest first.
    pub fn keys_prefix_rev(&self, prefix: &[u8]) -> Result<Vec<Vec<u8>>, KvError> {
        let mut out = Vec::new();
        for k in self.tree.scan_prefix(prefix).keys().rev() {
            out.push(k?.to_vec());
        }
        Ok(out)
    }

    /// Deletes every key with `prefix`; returns how many.
    pub fn delete_prefix(&self, prefix: &[u8]) -> Result<usize, KvError> {
        let mut n = 0;
        for item in self.tree.scan_prefix(prefix).keys() {
            self.tree.remove(item?)?;
            n += 1;
        }
        Ok(n)
    }

    /// Keeps only the newest `keep` keys with `prefix`.
    pub fn trim_prefix(&self, prefix: &[u8], keep: usize) -> Result<usize, KvError> {
        let keys: Vec<_> = self
            .tree
            .scan_prefix(prefix)
            .keys()
            .collect::<Result<_, _>>()?;
        let excess = keys.len().saturating_sub(keep);
        for k in keys.into_iter().take(excess) {
            self.tree.remove(k)?;
        }
        Ok(excess)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_reopen() {
        let dir = std::env::temp_dir().join(format!("churn-kv-test-{}", std::process::id()));
        {
            let kv = KvStore::open(&dir).expect("open");
            let t = kv.tree("t").expect("tree");
            t.put_durable(b"a", &1u32).expect("put");
            t.put(b"b", &2u32).expect("put");
            kv.flush().expect("flush");
        }
        let kv = KvStore::open(&dir).expect("reopen");
        let t = kv.tree("t").expect("tree");
        assert_eq!(t.get::<u32>(b"a").expect("get"), Some(1));
        let all: Vec<(Vec<u8>, u32)> = t.scan_prefix(b"").expect("scan");
        assert_eq!(all, vec![(b"a".to_vec(), 1), (b"b".to_vec(), 2)]);
        assert_eq!(t.trim_prefix(b"", 1).expect("trim"), 1);
        assert_eq!(t.get::<u32>(b"a").expect("get"), None);
        drop(kv);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
