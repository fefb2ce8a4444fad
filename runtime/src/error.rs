//! The error every HTTP route answers with:
//! `{"error":{"code","message","remediation"}}` and a fitting status.

use hyper::StatusCode;

/// A user-facing error with a stable code.
#[derive(Debug, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub remediation: Option<String>,
    /// Extra fields merged into the error object (e.g. `duration_ms`).
    pub extra: Option<Box<serde_json::Map<String, serde_json::Value>>>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            remediation: None,
            extra: None,
        }
    }

    pub fn fix(mut self, remediation: impl Into<String>) -> Self {
        self.remediation = Some(remediation.into());
        self
    }

    pub fn with(mut self, key: &str, value: serde_json::Value) -> Self {
        self.extra
            .get_or_insert_with(Default::default)
            .insert(key.to_string(), value);
        self
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "VALIDATION_INVALID_SCHEMA",
            message,
        )
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, code, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", message)
            .fix("retry; if it persists, check the host's log")
    }

    pub fn body(&self) -> serde_json::Value {
        let mut error = serde_json::Map::new();
        error.insert("code".into(), self.code.into());
        error.insert("message".into(), self.message.clone().into());
        if let Some(r) = &self.remediation {
            error.insert("remediation".into(), r.clone().into());
        }
        if let Some(extra) = &self.extra {
            for (k, v) in extra.iter() {
                error.insert(k.clone(), v.clone());
            }
        }
        serde_json::json!({ "error": error })
    }
}

impl From<churn_storage_kv::KvError> for ApiError {
    fn from(e: churn_storage_kv::KvError) -> Self {
        tracing::error!("storage: {e}");
        ApiError::internal("the host could not read or write its data")
    }
}
