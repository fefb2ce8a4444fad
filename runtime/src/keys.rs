//! Service keys: full access to an instance's control API. Only their SHA-256
//! hashes are stored (`<data>/host/service-keys.json`), compared in constant
//! time. A plain file rather than sled so that `churn keys create` can add a
//! key while the server runs; the server re-reads it when it changes.

use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::SystemTime;

use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot access the service key file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the service key file {path} is corrupt: {source}")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct StoredKey {
    id: String,
    /// Hex SHA-256 of the key.
    hash: String,
    created_at: String,
}

struct Loaded {
    modified: Option<SystemTime>,
    hashes: Vec<[u8; 32]>,
}

pub struct ServiceKeys {
    path: PathBuf,
    loaded: RwLock<Loaded>,
}

fn hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
    move |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl ServiceKeys {
    pub fn open(host_dir: &Path) -> Result<Self, KeyError> {
        std::fs::create_dir_all(host_dir).map_err(io(host_dir))?;
        let keys = ServiceKeys {
            path: host_dir.join("service-keys.json"),
            loaded: RwLock::new(Loaded {
                modified: None,
                hashes: Vec::new(),
            }),
        };
        keys.reload()?;
        Ok(keys)
    }

    fn read_file(&self) -> Result<Vec<StoredKey>, KeyError> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| KeyError::Corrupt {
                path: self.path.clone(),
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(io(&self.path)(e)),
        }
    }

    fn modified(&self) -> Option<SystemTime> {
        std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok()
    }

    fn reload(&self) -> Result<(), KeyError> {
        let modified = self.modified();
        let stored = self.read_file()?;
        let hashes = stored
            .iter()
            .filter_map(|k| hex::decode(&k.hash).ok())
            .filter_map(|h| <[u8; 32]>::try_from(h).ok())
            .collect();
        let mut loaded = self.loaded.write().unwrap_or_else(|p| p.into_inner());
        *loaded = Loaded { modified, hashes };
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.loaded
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .hashes
            .is_empty()
    }

    /// Makes a new key, stores its hash and returns the key (shown once).
    pub fn create(&self) -> Result<String, KeyError> {
        let mut raw = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut raw);
        let key = format!(
            "churn_sk_{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
        );
        let mut stored = self.read_file()?;
        stored.push(StoredKey {
            id: uuid::Uuid::new_v4().to_string(),
            hash: hex::encode(hash(&key)),
            created_at: chrono::Utc::now().to_rfc3339(),
        });
        let tmp = self.path.with_extension("json.tmp");
        let text = serde_json::to_vec_pretty(&stored).map_err(|source| KeyError::Corrupt {
            path: self.path.clone(),
            source,
        })?;
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
            f.write_all(&text).map_err(io(&tmp))?;
            f.sync_all().map_err(io(&tmp))?;
        }
        std::fs::rename(&tmp, &self.path).map_err(io(&self.path))?;
        self.reload()?;
        Ok(key)
    }

    /// Whether `presented` is one of the service keys.
    pub fn verify(&self, presented: &str) -> bool {
        if !presented.starts_with("churn_sk_") {
            return false;
        }
        let candidate = hash(presented);
        let check = |hashes: &[[u8; 32]]| {
            hashes
                .iter()
                .fold(0u8, |found, h| found | h.ct_eq(&candidate).unwrap_u8())
                == 1
        };
        {
            let loaded = self.loaded.read().unwrap_or_else(|p| p.into_inner());
            if check(&loaded.hashes) {
                return true;
            }
            if loaded.modified == self.modified() {
                return false;
            }
        }
        // The file changed (a key was added by `churn keys create`).
        if let Err(e) = self.reload() {
            tracing::error!("{e}");
            return false;
        }
        check(&self.loaded.read().unwrap_or_else(|p| p.into_inner()).hashes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_verify_and_pick_up_new_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        let keys = ServiceKeys::open(dir.path()).expect("open");
        assert!(keys.is_empty());
        let k1 = keys.create().expect("create");
        assert!(keys.verify(&k1));
        assert!(!keys.verify("churn_sk_nope"));
        let text = std::fs::read_to_string(dir.path().join("service-keys.json")).expect("read");
        assert!(!text.contains(&k1), "the key itself is never stored");
        // Another process adds a key.
        let other = ServiceKeys::open(dir.path()).expect("open");
        std::thread::sleep(std::time::Duration::from_millis(20));
        let k2 = other.create().expect("create");
        assert!(keys.verify(&k2));
    }
}
