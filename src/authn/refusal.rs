//! Why a verified-looking credential was refused: the token checks and the
//! claim checks of single sign-on. They are authentication's reasons, so
//! they live here and [`super::AuthnError`] can name them without
//! authentication importing `sso`; `sso` produces them. The `reason`
//! strings go into audit records.

/// Why a token was refused. The `reason` strings go into audit records.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// Not three base64url parts with JSON header and claims.
    #[error("malformed token")]
    Malformed,
    /// `alg` outside the pinned set (including `none`).
    #[error("algorithm not allowed")]
    Algorithm,
    /// A header field that would let the token choose its own key or
    /// semantics.
    #[error("forbidden header field {0}")]
    ForbiddenHeader(&'static str),
    /// `typ` says it is not a JWT.
    #[error("not a JWT (typ)")]
    Type,
    /// The key id is not in the provider's key set (after a refetch).
    #[error("unknown signing key")]
    UnknownKey,
    /// The signature does not verify.
    #[error("bad signature")]
    Signature,
    /// `iss` is not the provider's.
    #[error("wrong issuer")]
    Issuer,
    /// `aud` does not name us.
    #[error("wrong audience")]
    Audience,
    /// Past `exp`.
    #[error("expired")]
    Expired,
    /// Before `nbf`, or `iat` in the future.
    #[error("not yet valid")]
    NotYetValid,
    /// A required claim is missing or has the wrong JSON type.
    #[error("missing or mistyped claim {0}")]
    Claim(&'static str),
    /// An ID token presented as a bearer access token.
    #[error("an ID token is not an access token")]
    IdTokenAsBearer,
    /// `nonce` differs from the login's.
    #[error("nonce mismatch")]
    Nonce,
    /// Several audiences and `azp` is not us.
    #[error("authorized party mismatch")]
    AuthorizedParty,
}

impl TokenError {
    /// A short machine-readable reason, for audit records.
    pub fn reason(&self) -> &'static str {
        match self {
            TokenError::Malformed => "malformed_token",
            TokenError::Algorithm => "algorithm_not_allowed",
            TokenError::ForbiddenHeader(_) => "forbidden_header",
            TokenError::Type => "wrong_token_type",
            TokenError::UnknownKey => "unknown_key",
            TokenError::Signature => "bad_signature",
            TokenError::Issuer => "wrong_issuer",
            TokenError::Audience => "wrong_audience",
            TokenError::Expired => "expired",
            TokenError::NotYetValid => "not_yet_valid",
            TokenError::Claim(_) => "bad_claim",
            TokenError::IdTokenAsBearer => "id_token_as_bearer",
            TokenError::Nonce => "nonce_mismatch",
            TokenError::AuthorizedParty => "wrong_authorized_party",
        }
    }
}

/// Why the claims do not make a user.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClaimError {
    /// No tenant could be determined.
    #[error("no tenant in the token")]
    NoTenant,
    /// The token names a tenant this provider may not speak for.
    #[error("the token's tenant is not this provider's")]
    WrongTenant,
    /// The user claim is missing or unusable.
    #[error("no usable user id claim")]
    NoUser,
    /// The admin API disabled or deleted this user.
    #[error("the user is disabled")]
    UserDisabled,
}

impl ClaimError {
    /// The audit reason.
    pub fn reason(&self) -> &'static str {
        match self {
            ClaimError::NoTenant => "no_tenant",
            ClaimError::WrongTenant => "wrong_tenant",
            ClaimError::NoUser => "no_user",
            ClaimError::UserDisabled => "user_disabled",
        }
    }
}
