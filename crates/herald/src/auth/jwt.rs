//! Strict JWT verification: one algorithm family per configured key (so an HS256 token
//! can never be checked against an RSA public key, nor the reverse), `exp` and `sub`
//! required, leeway capped by config validation, `iss`/`aud` when configured.
//! `alg: none` cannot even be represented by the library.

use std::path::Path;
use std::sync::Arc;

use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::Identity;
use crate::config::AuthConfig;
use crate::ids::UserId;

#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    #[error("token expired")]
    Expired,
    #[error("invalid token: {0}")]
    Invalid(String),
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub admin: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<Audience>,
    /// Issued at (Unix seconds): a user revoked "before T" refuses tokens issued earlier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// The token's id: `POST /api/tokens/{jti}/revoke` refuses it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// Server-side subscriptions: channels the connection is subscribed to on connect.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<String>,
}

/// `aud` as RFC 7519 §4.1.3 allows it: one string, or an array (what Auth0 and Keycloak
/// issue). The configured audience must be one of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

impl From<&str> for Audience {
    fn from(s: &str) -> Audience {
        Audience::One(s.to_owned())
    }
}

pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read {0}: {1}")]
    Read(String, std::io::Error),
    #[error("{0}: not an RSA or EC public key in PEM form")]
    Pem(String),
}

impl Verifier {
    /// HS256 with `secret`, or RS256/ES256 when `auth.public_key_file` is set.
    pub fn new(cfg: &AuthConfig, secret: &str) -> Result<Verifier, KeyError> {
        let (key, alg) = match &cfg.public_key_file {
            Some(path) => public_key(path)?,
            None => (
                DecodingKey::from_secret(secret.as_bytes()),
                Algorithm::HS256,
            ),
        };
        let mut validation = Validation::new(alg);
        validation.leeway = cfg.leeway_s.min(30);
        let mut required = vec!["exp", "sub"];
        if cfg.issuer.is_some() {
            required.push("iss");
        }
        if cfg.audience.is_some() {
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);
        validation.validate_exp = true;
        validation.validate_nbf = true;
        if let Some(iss) = &cfg.issuer {
            validation.set_issuer(&[iss]);
        }
        match &cfg.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        Ok(Verifier { key, validation })
    }

    pub fn verify(&self, token: &str) -> Result<Identity, JwtError> {
        use jsonwebtoken::errors::ErrorKind;
        let data =
            decode::<Claims>(token, &self.key, &self.validation).map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => JwtError::Expired,
                ErrorKind::InvalidSignature => JwtError::Invalid("bad signature".into()),
                ErrorKind::InvalidAlgorithm => JwtError::Invalid("algorithm not accepted".into()),
                ErrorKind::InvalidIssuer => JwtError::Invalid("wrong issuer".into()),
                ErrorKind::InvalidAudience => JwtError::Invalid("wrong audience".into()),
                ErrorKind::MissingRequiredClaim(c) => {
                    JwtError::Invalid(format!("missing claim `{c}`"))
                }
                ErrorKind::ImmatureSignature => JwtError::Invalid("not valid yet".into()),
                _ => JwtError::Invalid("malformed token".into()),
            })?;
        let c = data.claims;
        if c.sub.is_empty() {
            return Err(JwtError::Invalid("empty `sub`".into()));
        }
        Ok(Identity {
            user: UserId::from(c.sub),
            device: c.device.map(Arc::from),
            groups: c.groups.into_iter().map(Arc::from).collect(),
            admin: c.admin,
            backend: false,
            expires_at: Some(c.exp),
            token: (c.iat.is_some() || c.jti.is_some() || !c.channels.is_empty()).then(|| {
                Box::new(super::TokenStamp {
                    issued_at: c.iat,
                    id: c.jti.map(Arc::from),
                    channels: c.channels,
                })
            }),
        })
    }
}

fn public_key(path: &Path) -> Result<(DecodingKey, Algorithm), KeyError> {
    let pem = std::fs::read(path).map_err(|e| KeyError::Read(path.display().to_string(), e))?;
    if let Ok(k) = DecodingKey::from_rsa_pem(&pem) {
        return Ok((k, Algorithm::RS256));
    }
    if let Ok(k) = DecodingKey::from_ec_pem(&pem) {
        return Ok((k, Algorithm::ES256));
    }
    Err(KeyError::Pem(path.display().to_string()))
}

/// Mints an HS256 token (`herald token`, tests).
pub fn mint_hs256(secret: &str, claims: &Claims) -> Result<String, jsonwebtoken::errors::Error> {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
}

pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn claims(exp: u64) -> Claims {
        Claims {
            sub: "42".into(),
            exp,
            device: Some("tv".into()),
            groups: vec!["admins:7".into()],
            admin: false,
            iss: None,
            aud: None,
            iat: None,
            jti: None,
            channels: Vec::new(),
        }
    }

    #[test]
    fn valid_token_gives_identity() {
        let v = Verifier::new(&AuthConfig::default(), SECRET).unwrap();
        let t = mint_hs256(SECRET, &claims(now_unix() + 60)).unwrap();
        let id = v.verify(&t).unwrap();
        assert_eq!(&*id.user, "42");
        assert_eq!(id.device.as_deref(), Some("tv"));
        assert_eq!(id.groups, vec![Arc::<str>::from("admins:7")]);
    }

    #[test]
    fn expired_unsigned_and_wrongly_signed_are_refused() {
        let v = Verifier::new(&AuthConfig::default(), SECRET).unwrap();
        let old = mint_hs256(SECRET, &claims(now_unix() - 3600)).unwrap();
        assert!(matches!(v.verify(&old), Err(JwtError::Expired)));
        let other =
            mint_hs256("another-secret-another-secret-xx", &claims(now_unix() + 60)).unwrap();
        assert!(matches!(v.verify(&other), Err(JwtError::Invalid(_))));
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let none = format!(
            "{}.{}.",
            b64.encode(r#"{"alg":"none","typ":"JWT"}"#),
            b64.encode(format!(r#"{{"sub":"42","exp":{}}}"#, now_unix() + 60))
        );
        assert!(v.verify(&none).is_err());
        assert!(v.verify("garbage").is_err());
    }

    #[test]
    fn issuer_and_audience_are_checked_when_configured() {
        let cfg = AuthConfig {
            issuer: Some("me".into()),
            audience: Some("herald".into()),
            ..Default::default()
        };
        let v = Verifier::new(&cfg, SECRET).unwrap();
        let with = |iss: Option<&str>, aud: Option<&str>| {
            let mut c = claims(now_unix() + 60);
            c.iss = iss.map(Into::into);
            c.aud = aud.map(Into::into);
            v.verify(&mint_hs256(SECRET, &c).unwrap())
                .map(|id| id.user)
                .map_err(|e| e.to_string())
        };
        assert_eq!(with(Some("me"), Some("herald")), Ok(UserId::from("42")));
        // Each claim is checked on its own: the other one being right does not help.
        for (iss, aud, why) in [
            (None, Some("herald"), "missing claim `iss`"),
            (Some("me"), None, "missing claim `aud`"),
            (Some("someone-else"), Some("herald"), "wrong issuer"),
            (Some("me"), Some("another-app"), "wrong audience"),
        ] {
            assert_eq!(
                with(iss, aud),
                Err(format!("invalid token: {why}")),
                "iss {iss:?}, aud {aud:?}"
            );
        }
        // Unconfigured, neither is required nor checked.
        let lax = Verifier::new(&AuthConfig::default(), SECRET).unwrap();
        let mut c = claims(now_unix() + 60);
        c.iss = Some("anyone".into());
        c.aud = Some("anything".into());
        assert!(lax.verify(&mint_hs256(SECRET, &c).unwrap()).is_ok());
    }

    #[test]
    fn an_audience_array_is_accepted_when_it_contains_ours() {
        let cfg = AuthConfig {
            audience: Some("herald".into()),
            ..Default::default()
        };
        let v = Verifier::new(&cfg, SECRET).unwrap();
        let mut c = claims(now_unix() + 60);
        c.aud = Some(Audience::Many(vec!["account".into(), "herald".into()]));
        let id = v.verify(&mint_hs256(SECRET, &c).unwrap());
        assert_eq!(id.map(|i| i.user).ok().as_deref(), Some("42"));
        c.aud = Some(Audience::Many(vec!["account".into(), "billing".into()]));
        assert!(matches!(
            v.verify(&mint_hs256(SECRET, &c).unwrap()),
            Err(JwtError::Invalid(m)) if m == "wrong audience"
        ));
        c.aud = None;
        assert!(v.verify(&mint_hs256(SECRET, &c).unwrap()).is_err());
    }
}
