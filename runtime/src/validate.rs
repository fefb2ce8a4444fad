//! The shapes of names and keys users choose.

use std::sync::LazyLock;

use regex::Regex;

static APP_ID: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"^[a-z0-9_]{3,64}$").expect("regex"));
static FUNCTION_NAME: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[a-z][a-z0-9_-]{0,99}$").expect("regex"));
static ENV_KEY: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[A-Z_][A-Z0-9_]*$").expect("regex"));

pub fn is_app_id(s: &str) -> bool {
    APP_ID.is_match(s)
}

pub fn is_function_name(s: &str) -> bool {
    FUNCTION_NAME.is_match(s)
}

pub fn is_env_key(s: &str) -> bool {
    s.len() <= 256 && ENV_KEY.is_match(s)
}
