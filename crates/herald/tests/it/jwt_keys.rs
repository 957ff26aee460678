//! RS256/ES256 public keys: accepted for their own algorithm, and no algorithm confusion
//! (an HS256 token "signed" with the public key as the secret is refused).

use herald::auth::jwt::{Claims, Verifier};
use herald::config::AuthConfig;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};

use crate::support::TempDir;

fn claims() -> Claims {
    crate::support::claims("9")
}

fn check_family(alg: &'static rcgen::SignatureAlgorithm, jwt_alg: Algorithm, other: Algorithm) {
    let dir = TempDir::new();
    let key = rcgen::KeyPair::generate_for(alg).unwrap();
    let public_pem = key.public_key_pem();
    let path = dir.0.join("pub.pem");
    std::fs::write(&path, &public_pem).unwrap();
    let cfg = AuthConfig {
        public_key_file: Some(path),
        ..Default::default()
    };
    let v = Verifier::new(&cfg, "").unwrap();

    let private_pem = key.serialize_pem();
    let enc = match jwt_alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(private_pem.as_bytes()).unwrap(),
        _ => EncodingKey::from_ec_pem(private_pem.as_bytes()).unwrap(),
    };
    let good = encode(&Header::new(jwt_alg), &claims(), &enc).unwrap();
    assert_eq!(&*v.verify(&good).unwrap().user, "9");

    // Algorithm confusion: HMAC keyed with the (public) PEM.
    let confused = encode(
        &Header::new(Algorithm::HS256),
        &claims(),
        &EncodingKey::from_secret(public_pem.as_bytes()),
    )
    .unwrap();
    assert!(
        v.verify(&confused).is_err(),
        "HS256 against a {jwt_alg:?} key must be refused"
    );
    // A token whose header names the other asymmetric family is refused.
    let (_, rest) = good.split_once('.').unwrap();
    use base64::Engine;
    let other_header = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(format!(r#"{{"alg":"{other:?}","typ":"JWT"}}"#));
    assert!(v.verify(&format!("{other_header}.{rest}")).is_err());
    // A tampered signature is refused.
    let forged = format!("{}.{}", good.rsplit_once('.').unwrap().0, "AAAA");
    assert!(v.verify(&forged).is_err());
}

#[test]
fn es256_public_key() {
    check_family(
        &rcgen::PKCS_ECDSA_P256_SHA256,
        Algorithm::ES256,
        Algorithm::RS256,
    );
}

#[test]
fn rs256_public_key() {
    check_family(&rcgen::PKCS_RSA_SHA256, Algorithm::RS256, Algorithm::ES256);
}

#[test]
fn hs256_server_refuses_asymmetric_tokens() {
    let v = Verifier::new(&AuthConfig::default(), "0123456789abcdef0123456789abcdef").unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let enc = EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap();
    let t = encode(&Header::new(Algorithm::ES256), &claims(), &enc).unwrap();
    assert!(v.verify(&t).is_err());
}
