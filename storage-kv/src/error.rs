//! Errors of the key-value store.

#[derive(Debug, thiserror::Error)]
pub enum KvError {
    #[error("storage error: {0}")]
    Sled(#[from] sled::Error),
    #[error("stored value is not valid JSON for its type: {0}")]
    Decode(#[from] serde_json::Error),
}
