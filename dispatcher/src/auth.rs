//! End-user tokens: HS256 JWTs signed with the app's secret.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};

/// The claims churn reads from (and writes into) a user token.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct UserClaims {
    pub sub: String,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token is not a valid HS256 JWT for this app: {0}")]
    Invalid(String),
}

/// Verifies an HS256 token against any of `secrets` (the app's own secret and,
/// when configured, a trusted identity provider's). `alg: none` and every
/// other algorithm are refused; `exp` is required, `nbf` checked when present.
pub fn verify_user_token(token: &str, secrets: &[&[u8]]) -> Result<UserClaims, AuthError> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = 0;
    validation.validate_nbf = true;
    validation.set_required_spec_claims(&["exp", "sub"]);
    let mut last = AuthError::Invalid("no secret configured".to_string());
    for secret in secrets {
        match jsonwebtoken::decode::<UserClaims>(
            token,
            &DecodingKey::from_secret(secret),
            &validation,
        ) {
            Ok(data) => return Ok(data.claims),
            Err(e) => {
                last = match e.kind() {
                    jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
                    jsonwebtoken::errors::ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                    _ => AuthError::Invalid(e.to_string()),
                };
                // A token that is well signed but expired is expired whatever
                // the other secrets say.
                if last != AuthError::Invalid(e.to_string()) {
                    return Err(last);
                }
            }
        }
    }
    Err(last)
}

/// Signs a user token for `sub` that expires at `exp` (Unix seconds).
pub fn mint_user_token(secret: &[u8], sub: &str, iat: u64, exp: u64) -> Result<String, AuthError> {
    let claims = UserClaims {
        sub: sub.to_string(),
        exp,
        iat: Some(iat),
        nbf: None,
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .map_err(|e| AuthError::Invalid(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }

    #[test]
    fn round_trip_and_rejections() {
        let t = mint_user_token(b"s1", "user-1", now(), now() + 60).expect("mint");
        assert_eq!(
            verify_user_token(&t, &[b"s1"]).expect("valid").sub,
            "user-1"
        );
        assert!(matches!(
            verify_user_token(&t, &[b"other"]),
            Err(AuthError::Invalid(_))
        ));
        assert_eq!(
            verify_user_token(&t, &[b"other", b"s1"])
                .expect("second")
                .sub,
            "user-1"
        );
        let old = mint_user_token(b"s1", "u", now() - 100, now() - 10).expect("mint");
        assert_eq!(verify_user_token(&old, &[b"s1"]), Err(AuthError::Expired));
        // alg: none
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJ1IiwiZXhwIjo5OTk5OTk5OTk5fQ.";
        assert!(matches!(
            verify_user_token(none, &[b"s1"]),
            Err(AuthError::Invalid(_))
        ));
    }
}
