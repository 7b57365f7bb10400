//! Tests for the key ring and access tokens.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signer, SigningKey};
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::*;

const ISS: &str = "https://auth.example.test";
const AUD: &str = "portcullis-api";
const NOW: u64 = 1_800_000_000;
const SECRET_A: &[u8] = b"aaaaaaaa-first-secret-32-bytes-long!";
const SECRET_B: &[u8] = b"bbbbbbbb-second-secret-32-bytes-long";

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn expect(now: u64, leeway: u64) -> VerifyExpectations<'static> {
    VerifyExpectations {
        issuer: ISS,
        audience: AUD,
        leeway: Duration::from_secs(leeway),
        now: at(now),
    }
}

fn settings(now: u64, ttl: u64) -> IssueSettings<'static> {
    IssueSettings {
        issuer: ISS,
        audience: AUD,
        ttl: Duration::from_secs(ttl),
        now: at(now),
    }
}

fn request() -> IssueRequest {
    IssueRequest {
        user_id: "user-1".into(),
        tenant_id: "tenant-1".into(),
        session_id: "session-1".into(),
        roles: vec!["admin".into(), "viewer".into()],
        scopes: vec!["password:change".into(), "profile:read".into()],
    }
}

fn issue(ring: &KeyRing, now: u64, ttl: u64) -> IssuedToken {
    ring.issue(&request(), &settings(now, ttl)).unwrap()
}

fn hs_ring(kid: &str, secret: &[u8]) -> KeyRing {
    KeyRing::new(vec![Key::hs256(kid, secret, KeyState::Active).unwrap()]).unwrap()
}

fn ed_signing(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn ed_pem(seed: u8) -> String {
    ed_signing(seed)
        .to_pkcs8_pem(LineEnding::LF)
        .unwrap()
        .to_string()
}

fn ed_ring(kid: &str, seed: u8) -> KeyRing {
    KeyRing::new(vec![
        Key::ed25519_from_pkcs8_pem(kid, &ed_pem(seed), KeyState::Active).unwrap(),
    ])
    .unwrap()
}

fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |name| map.get(name).cloned()
}

fn good_claims(now: u64) -> Value {
    json!({
        "iss": ISS, "aud": AUD, "sub": "user-1", "tid": "tenant-1", "sid": "session-1",
        "jti": "hand-made-jti", "iat": now, "nbf": now, "exp": now + 600,
        "roles": ["admin"], "scope": "password:change",
    })
}

fn signing_input(header: &Value, claims: &Value) -> String {
    format!(
        "{}.{}",
        B64URL.encode(header.to_string()),
        B64URL.encode(claims.to_string())
    )
}

/// A token built and HMAC-signed by hand, so the header can say anything.
fn sign_hs(header: &Value, claims: &Value, secret: &[u8]) -> String {
    let input = signing_input(header, claims);
    let sig = jsonwebtoken::crypto::sign(
        input.as_bytes(),
        &EncodingKey::from_secret(secret),
        Algorithm::HS256,
    )
    .unwrap();
    format!("{input}.{sig}")
}

fn sign_ed(header: &Value, claims: &Value, key: &SigningKey) -> String {
    let input = signing_input(header, claims);
    let sig = key.sign(input.as_bytes());
    format!("{input}.{}", B64URL.encode(sig.to_bytes()))
}

fn header_of(token: &str) -> Value {
    let part = token.split('.').next().unwrap();
    serde_json::from_slice(&B64URL.decode(part).unwrap()).unwrap()
}

fn payload_of(token: &str) -> Value {
    let part = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&B64URL.decode(part).unwrap()).unwrap()
}

/// Fails loudly if jsonwebtoken has no crypto backend (or two): it then panics on first use.
#[test]
fn jsonwebtoken_has_exactly_one_working_backend() {
    let claims = json!({"sub": "x", "exp": 4_102_444_800u64});
    for (alg, enc, dec) in [
        (
            Algorithm::HS256,
            EncodingKey::from_secret(SECRET_A),
            jsonwebtoken::DecodingKey::from_secret(SECRET_A),
        ),
        (
            Algorithm::EdDSA,
            EncodingKey::from_ed_der(ed_signing(7).to_pkcs8_der().unwrap().as_bytes()),
            jsonwebtoken::DecodingKey::from_ed_der(ed_signing(7).verifying_key().as_bytes()),
        ),
    ] {
        let token = jsonwebtoken::encode(&jsonwebtoken::Header::new(alg), &claims, &enc).unwrap();
        let decoded =
            jsonwebtoken::decode::<Value>(&token, &dec, &jsonwebtoken::Validation::new(alg))
                .unwrap();
        assert_eq!(decoded.claims["sub"], "x");
    }
}

#[test]
fn hs256_round_trip() {
    let ring = hs_ring("hs-1", SECRET_A);
    let issued = issue(&ring, NOW, 900);
    assert_eq!(issued.key_id, "hs-1");
    assert_eq!(
        header_of(&issued.token),
        json!({"alg": "HS256", "kid": "hs-1", "typ": "at+jwt"})
    );
    let claims = ring.verify(&issued.token, &expect(NOW + 10, 0)).unwrap();
    assert_eq!(claims, issued.claims);
    assert_eq!(claims.sub, "user-1");
    assert_eq!(claims.tid, "tenant-1");
    assert_eq!(claims.sid, "session-1");
    assert_eq!(claims.exp, NOW + 900);
    assert!(claims.has_scope("password:change") && claims.has_scope("profile:read"));
    assert!(!claims.has_scope("password"));
    assert!(claims.has_role("admin") && !claims.has_role("root"));
}

#[test]
fn eddsa_round_trip() {
    let ring = ed_ring("ed-1", 3);
    let issued = issue(&ring, NOW, 900);
    assert_eq!(
        header_of(&issued.token),
        json!({"alg": "EdDSA", "kid": "ed-1", "typ": "at+jwt"})
    );
    assert_eq!(
        ring.verify(&issued.token, &expect(NOW, 0)).unwrap(),
        issued.claims
    );
    // The signature is Ed25519 over the signing input, checked here without jsonwebtoken.
    let (input, sig) = issued.token.rsplit_once('.').unwrap();
    let sig = ed25519_dalek::Signature::from_slice(&B64URL.decode(sig).unwrap()).unwrap();
    ed_signing(3)
        .verifying_key()
        .verify_strict(input.as_bytes(), &sig)
        .unwrap();
}

#[test]
fn issued_claims_have_every_field_and_random_jti() {
    let ring = hs_ring("hs-1", SECRET_A);
    let a = issue(&ring, NOW, 60);
    let b = issue(&ring, NOW, 60);
    let payload = payload_of(&a.token);
    let fields: Vec<&str> = payload
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for f in [
        "iss", "aud", "sub", "tid", "sid", "jti", "iat", "nbf", "exp", "roles", "scope",
    ] {
        assert!(fields.contains(&f), "missing {f}");
    }
    assert_eq!(payload["aud"], AUD, "one audience is written as a string");
    assert_eq!(payload["scope"], "password:change profile:read");
    assert_eq!(payload["roles"], json!(["admin", "viewer"]));
    assert_eq!(
        (payload["iat"].as_u64(), payload["nbf"].as_u64()),
        (Some(NOW), Some(NOW))
    );
    assert_eq!(B64URL.decode(&a.claims.jti).unwrap().len(), 16);
    assert_ne!(a.claims.jti, b.claims.jti);
}

#[test]
fn tampered_payload_or_signature_is_refused() {
    for ring in [hs_ring("k", SECRET_A), ed_ring("k", 5)] {
        let token = issue(&ring, NOW, 600).token;
        let parts: Vec<&str> = token.split('.').collect();
        let mut claims = payload_of(&token);
        claims["sub"] = json!("someone-else");
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            B64URL.encode(claims.to_string()),
            parts[2]
        );
        assert_eq!(
            ring.verify(&forged, &expect(NOW, 0)),
            Err(TokenError::BadSignature)
        );

        let mut sig = B64URL.decode(parts[2]).unwrap();
        sig[0] ^= 1;
        let forged = format!("{}.{}.{}", parts[0], parts[1], B64URL.encode(&sig));
        assert_eq!(
            ring.verify(&forged, &expect(NOW, 0)),
            Err(TokenError::BadSignature)
        );

        let stripped = format!("{}.{}.", parts[0], parts[1]);
        assert!(ring.verify(&stripped, &expect(NOW, 0)).is_err());
    }
}

#[test]
fn every_single_character_change_is_refused_without_panicking() {
    let mutate = |ring: &KeyRing,
                  token: &str,
                  positions: std::iter::StepBy<std::ops::Range<usize>>,
                  chars: &[char]| {
        for i in positions {
            for &c in chars {
                let mut bytes = token.as_bytes().to_vec();
                if bytes[i] == c as u8 {
                    continue;
                }
                bytes[i] = c as u8;
                let mutated = String::from_utf8(bytes).unwrap();
                assert!(
                    ring.verify(&mutated, &expect(NOW, 0)).is_err(),
                    "accepted a change at {i} to {c}"
                );
            }
        }
    };
    let all = ['A', 'z', '0', '_', '-', '.', '='];
    let hs = hs_ring("k", SECRET_A);
    let token = issue(&hs, NOW, 600).token;
    mutate(&hs, &token, (0..token.len()).step_by(1), &all);
    // Ed25519 verification takes ~10 ms in debug builds: sample the signed part, cover the
    // signature.
    let ed = ed_ring("k", 5);
    let token = issue(&ed, NOW, 600).token;
    let signature_start = token.rfind('.').unwrap() + 1;
    mutate(&ed, &token, (0..token.len()).step_by(1), &['.']);
    mutate(&ed, &token, (0..signature_start).step_by(7), &['A', '=']);
    mutate(
        &ed,
        &token,
        (signature_start..token.len()).step_by(1),
        &['A', '_'],
    );
}

#[test]
fn expiry_honours_leeway_and_clamps_it() {
    let ring = hs_ring("k", SECRET_A);
    let token = issue(&ring, NOW, 600).token;
    let exp = NOW + 600;
    assert!(ring.verify(&token, &expect(exp - 1, 0)).is_ok());
    assert_eq!(
        ring.verify(&token, &expect(exp, 0)),
        Err(TokenError::Expired)
    );
    assert!(
        ring.verify(&token, &expect(exp + 29, 30)).is_ok(),
        "within leeway"
    );
    assert_eq!(
        ring.verify(&token, &expect(exp + 30, 30)),
        Err(TokenError::Expired)
    );
    // An hour of leeway is clamped to a minute.
    assert!(ring.verify(&token, &expect(exp + 59, 3600)).is_ok());
    assert_eq!(
        ring.verify(&token, &expect(exp + 61, 3600)),
        Err(TokenError::Expired)
    );
}

#[test]
fn not_before_and_issued_at_in_the_future_are_refused() {
    let ring = hs_ring("k", SECRET_A);
    let early = issue(&ring, NOW + 120, 600).token;
    assert_eq!(
        ring.verify(&early, &expect(NOW, 30)),
        Err(TokenError::NotYetValid)
    );
    let slightly_early = issue(&ring, NOW + 20, 600).token;
    assert!(
        ring.verify(&slightly_early, &expect(NOW, 30)).is_ok(),
        "within leeway"
    );

    let mut claims = good_claims(NOW);
    claims["iat"] = json!(NOW + 300);
    let header = json!({"alg": "HS256", "kid": "k", "typ": "at+jwt"});
    let token = sign_hs(&header, &claims, SECRET_A);
    assert_eq!(
        ring.verify(&token, &expect(NOW, 30)),
        Err(TokenError::NotYetValid)
    );
}

#[test]
fn issuer_and_audience_must_match() {
    let ring = hs_ring("k", SECRET_A);
    let token = issue(&ring, NOW, 600).token;
    let mut e = expect(NOW, 0);
    e.audience = "another-api";
    assert_eq!(ring.verify(&token, &e), Err(TokenError::WrongAudience));
    let mut e = expect(NOW, 0);
    e.issuer = "https://evil.example";
    assert_eq!(ring.verify(&token, &e), Err(TokenError::WrongIssuer));

    let header = json!({"alg": "HS256", "kid": "k", "typ": "at+jwt"});
    let mut claims = good_claims(NOW);
    claims["aud"] = json!(["first", AUD]);
    assert!(
        ring.verify(&sign_hs(&header, &claims, SECRET_A), &expect(NOW, 0))
            .is_ok()
    );
    claims["aud"] = json!(["first", "second"]);
    assert_eq!(
        ring.verify(&sign_hs(&header, &claims, SECRET_A), &expect(NOW, 0)),
        Err(TokenError::WrongAudience)
    );
    claims["aud"] = json!([]);
    assert_eq!(
        ring.verify(&sign_hs(&header, &claims, SECRET_A), &expect(NOW, 0)),
        Err(TokenError::WrongAudience)
    );
}

#[test]
fn every_claim_is_required() {
    let ring = hs_ring("k", SECRET_A);
    let header = json!({"alg": "HS256", "kid": "k", "typ": "at+jwt"});
    assert!(
        ring.verify(
            &sign_hs(&header, &good_claims(NOW), SECRET_A),
            &expect(NOW, 0)
        )
        .is_ok()
    );
    for field in [
        "iss", "aud", "sub", "tid", "sid", "jti", "iat", "nbf", "exp", "roles", "scope",
    ] {
        let mut claims = good_claims(NOW);
        claims.as_object_mut().unwrap().remove(field);
        let token = sign_hs(&header, &claims, SECRET_A);
        assert_eq!(
            ring.verify(&token, &expect(NOW, 0)),
            Err(TokenError::Malformed),
            "without {field}"
        );
    }
    let mut claims = good_claims(NOW);
    claims["exp"] = json!("tomorrow");
    let token = sign_hs(&header, &claims, SECRET_A);
    assert_eq!(
        ring.verify(&token, &expect(NOW, 0)),
        Err(TokenError::Malformed)
    );
    let mut claims = good_claims(NOW);
    claims["sub"] = json!("");
    let token = sign_hs(&header, &claims, SECRET_A);
    assert_eq!(
        ring.verify(&token, &expect(NOW, 0)),
        Err(TokenError::Malformed)
    );
}

#[test]
fn alg_none_is_refused() {
    let ring = hs_ring("k", SECRET_A);
    for alg in ["none", "None", "NONE"] {
        let header = json!({"alg": alg, "kid": "k", "typ": "at+jwt"});
        let unsigned = format!("{}.", signing_input(&header, &good_claims(NOW)));
        assert_eq!(
            ring.verify(&unsigned, &expect(NOW, 0)),
            Err(TokenError::AlgorithmMismatch)
        );
        // Even with a valid HMAC over it.
        let signed = sign_hs(&header, &good_claims(NOW), SECRET_A);
        assert_eq!(
            ring.verify(&signed, &expect(NOW, 0)),
            Err(TokenError::AlgorithmMismatch)
        );
    }
    let header = json!({"alg": "none", "typ": "at+jwt"});
    let unsigned = format!("{}.", signing_input(&header, &good_claims(NOW)));
    assert!(ring.verify(&unsigned, &expect(NOW, 0)).is_err());
}

#[test]
fn key_supplying_headers_are_refused_even_with_a_valid_signature() {
    let ring = hs_ring("k", SECRET_A);
    let cases = [
        ("jku", json!("https://evil.example/jwks.json")),
        ("jwk", json!({"kty": "oct", "k": B64URL.encode(SECRET_A)})),
        ("x5u", json!("https://evil.example/cert.pem")),
        ("x5c", json!(["MIIB"])),
        ("crit", json!(["exp"])),
        ("jku", Value::Null),
    ];
    for (name, value) in cases {
        let mut header = json!({"alg": "HS256", "kid": "k", "typ": "at+jwt"});
        header[name] = value;
        let token = sign_hs(&header, &good_claims(NOW), SECRET_A);
        assert_eq!(
            ring.verify(&token, &expect(NOW, 0)),
            Err(TokenError::ForbiddenHeader(name))
        );
    }
}

#[test]
fn algorithm_is_pinned_to_the_key() {
    let ed = ed_signing(9);
    let ring = KeyRing::new(vec![
        Key::ed25519_from_pkcs8_pem("ed", &ed_pem(9), KeyState::Active).unwrap(),
        Key::hs256("hs", SECRET_A, KeyState::VerifyOnly).unwrap(),
    ])
    .unwrap();
    // The classic confusion: HS256 "signed" with the public key an attacker can read from JWKS.
    let public_raw = ed.verifying_key().to_bytes();
    let public_pem = ed
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap();
    for forged_secret in [public_raw.as_slice(), public_pem.as_bytes()] {
        let header = json!({"alg": "HS256", "kid": "ed", "typ": "at+jwt"});
        let token = sign_hs(&header, &good_claims(NOW), forged_secret);
        assert_eq!(
            ring.verify(&token, &expect(NOW, 0)),
            Err(TokenError::AlgorithmMismatch)
        );
    }
    let header = json!({"alg": "EdDSA", "kid": "hs", "typ": "at+jwt"});
    let token = sign_ed(&header, &good_claims(NOW), &ed);
    assert_eq!(
        ring.verify(&token, &expect(NOW, 0)),
        Err(TokenError::AlgorithmMismatch)
    );
    for alg in ["HS512", "RS256", "hs256"] {
        let header = json!({"alg": alg, "kid": "hs", "typ": "at+jwt"});
        let token = sign_hs(&header, &good_claims(NOW), SECRET_A);
        assert_eq!(
            ring.verify(&token, &expect(NOW, 0)),
            Err(TokenError::AlgorithmMismatch),
            "{alg}"
        );
    }
    // Both verify with their own algorithm.
    let header = json!({"alg": "HS256", "kid": "hs", "typ": "at+jwt"});
    assert!(
        ring.verify(
            &sign_hs(&header, &good_claims(NOW), SECRET_A),
            &expect(NOW, 0)
        )
        .is_ok()
    );
    let header = json!({"alg": "EdDSA", "kid": "ed", "typ": "at+jwt"});
    assert!(
        ring.verify(&sign_ed(&header, &good_claims(NOW), &ed), &expect(NOW, 0))
            .is_ok()
    );
}

#[test]
fn unknown_or_missing_kid_is_refused() {
    let ring = hs_ring("k", SECRET_A);
    let header = json!({"alg": "HS256", "kid": "other", "typ": "at+jwt"});
    let token = sign_hs(&header, &good_claims(NOW), SECRET_A);
    assert_eq!(
        ring.verify(&token, &expect(NOW, 0)),
        Err(TokenError::UnknownKey)
    );
    let header = json!({"alg": "HS256", "typ": "at+jwt"});
    let token = sign_hs(&header, &good_claims(NOW), SECRET_A);
    assert_eq!(
        ring.verify(&token, &expect(NOW, 0)),
        Err(TokenError::UnknownKey)
    );
    let header = json!({"alg": "HS256", "kid": 7, "typ": "at+jwt"});
    let token = sign_hs(&header, &good_claims(NOW), SECRET_A);
    assert_eq!(
        ring.verify(&token, &expect(NOW, 0)),
        Err(TokenError::Malformed)
    );
    // Same kid, different secret: the signature decides.
    let impostor = issue(&hs_ring("k", SECRET_B), NOW, 600).token;
    assert_eq!(
        ring.verify(&impostor, &expect(NOW, 0)),
        Err(TokenError::BadSignature)
    );
}

#[test]
fn type_must_be_access_token() {
    let ring = hs_ring("k", SECRET_A);
    let claims = good_claims(NOW);
    for typ in [
        None,
        Some("JWT"),
        Some("rt+jwt"),
        Some("application/jwt"),
        Some(""),
    ] {
        let mut header = json!({"alg": "HS256", "kid": "k"});
        if let Some(typ) = typ {
            header["typ"] = json!(typ);
        }
        let token = sign_hs(&header, &claims, SECRET_A);
        assert_eq!(
            ring.verify(&token, &expect(NOW, 0)),
            Err(TokenError::WrongType),
            "{typ:?}"
        );
    }
    for typ in [
        "at+jwt",
        "AT+JWT",
        "application/at+jwt",
        "Application/AT+JWT",
    ] {
        let header = json!({"alg": "HS256", "kid": "k", "typ": typ});
        assert!(
            ring.verify(&sign_hs(&header, &claims, SECRET_A), &expect(NOW, 0))
                .is_ok(),
            "{typ}"
        );
    }
}

#[test]
fn malformed_input_is_refused_without_panicking() {
    let ring = hs_ring("k", SECRET_A);
    let valid = issue(&ring, NOW, 600).token;
    let (h, rest) = valid.split_once('.').unwrap();
    let long = "a".repeat(MAX_TOKEN_LEN + 1);
    let dup_header = B64URL.encode(r#"{"alg":"HS256","kid":"k","typ":"at+jwt","kid":"k"}"#);
    let inputs = [
        String::new(),
        ".".into(),
        "..".into(),
        "...".into(),
        "a.b".into(),
        "a.b.c.d".into(),
        format!("{valid}.x"),
        format!("!!!.{rest}"),
        format!("{}.{rest}", B64URL.encode("not json")),
        format!("{}.{rest}", B64URL.encode("[1,2]")),
        format!("{}.{rest}", B64URL.encode("{}")),
        format!("{dup_header}.{rest}"),
        format!("{h}=.{rest}"),
        format!("{h}.{rest}=="),
        long,
        "é.é.é".into(),
    ];
    for input in &inputs {
        let got = ring.verify(input, &expect(NOW, 0));
        assert!(
            matches!(got, Err(TokenError::Malformed | TokenError::BadSignature)),
            "{input:.40}: {got:?}"
        );
    }
}

#[test]
fn dual_key_env_rotation() {
    let a = std::str::from_utf8(SECRET_A).unwrap();
    let b = std::str::from_utf8(SECRET_B).unwrap();
    let before = KeyRing::from_env(&env_of(&[("JWT_SECRET_KEY", a)]))
        .unwrap()
        .unwrap();
    let old_token = issue(&before, NOW, 600).token;

    let during = KeyRing::from_env(&env_of(&[("JWT_SECRET_KEY", b), ("JWT_SECRET_KEY_OLD", a)]))
        .unwrap()
        .unwrap();
    assert!(
        during.verify(&old_token, &expect(NOW, 0)).is_ok(),
        "old key still verifies"
    );
    let new_token = issue(&during, NOW, 600);
    assert_ne!(
        new_token.key_id,
        before.active().kid(),
        "signs with the new key"
    );
    assert_eq!(
        during.get(before.active().kid()).unwrap().state(),
        KeyState::VerifyOnly
    );

    let after = KeyRing::from_env(&env_of(&[("JWT_SECRET_KEY", b)]))
        .unwrap()
        .unwrap();
    assert_eq!(
        after.verify(&old_token, &expect(NOW, 0)),
        Err(TokenError::UnknownKey)
    );
    assert!(after.verify(&new_token.token, &expect(NOW, 0)).is_ok());
}

#[test]
fn env_kid_is_derived_from_the_secret() {
    let a = std::str::from_utf8(SECRET_A).unwrap();
    let one = KeyRing::from_env(&env_of(&[("JWT_SECRET_KEY", a)]))
        .unwrap()
        .unwrap();
    let two = KeyRing::from_env(&env_of(&[("JWT_SECRET_KEY", a)]))
        .unwrap()
        .unwrap();
    assert_eq!(
        one.active().kid(),
        two.active().kid(),
        "replicas agree without coordination"
    );
    let digest = Sha256::new()
        .chain_update(b"portcullis jwt kid v1\0")
        .chain_update(SECRET_A)
        .finalize();
    let expected: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(one.active().kid(), expected);
    assert_eq!(one.active().algorithm(), KeyAlgorithm::Hs256);
    // Old equal to new is one key, not a duplicate.
    let same = KeyRing::from_env(&env_of(&[("JWT_SECRET_KEY", a), ("JWT_SECRET_KEY_OLD", a)]))
        .unwrap()
        .unwrap();
    assert_eq!(same.keys().count(), 1);
}

#[test]
fn env_short_secret_is_refused_without_echoing_it() {
    let short = "tooshort-but-secret-value";
    let err = KeyRing::from_env(&env_of(&[("JWT_SECRET_KEY", short)])).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("JWT_SECRET_KEY") && msg.contains("32"),
        "{msg}"
    );
    assert!(!msg.contains(short) && !format!("{err:?}").contains(short));

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old");
    std::fs::write(&path, format!("{short}\n")).unwrap();
    let a = std::str::from_utf8(SECRET_A).unwrap();
    let err = KeyRing::from_env(&env_of(&[
        ("JWT_SECRET_KEY", a),
        ("JWT_SECRET_KEY_OLD_FILE", path.to_str().unwrap()),
    ]))
    .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("JWT_SECRET_KEY_OLD"), "{msg}");
    assert!(!msg.contains(short) && !format!("{err:?}").contains(short));
}

#[test]
fn env_forms_and_edge_cases() {
    let a = std::str::from_utf8(SECRET_A).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("jwt");
    std::fs::write(&file, format!("{a}\n")).unwrap();
    let file = file.to_str().unwrap();

    assert!(KeyRing::from_env(&env_of(&[])).unwrap().is_none());
    assert!(
        KeyRing::from_env(&env_of(&[("JWT_SECRET_KEY", "")]))
            .unwrap()
            .is_none()
    );

    let err = KeyRing::from_env(&env_of(&[
        ("JWT_SECRET_KEY", a),
        ("JWT_SECRET_KEY_FILE", file),
    ]))
    .unwrap_err();
    assert!(err.to_string().contains("both"), "{err}");
    assert!(!err.to_string().contains(a));
    let err = KeyRing::from_env(&env_of(&[
        ("JWT_SECRET_KEY", a),
        ("JWT_SECRET_KEY_OLD", a),
        ("JWT_SECRET_KEY_OLD_FILE", file),
    ]))
    .unwrap_err();
    assert!(err.to_string().contains("JWT_SECRET_KEY_OLD_FILE"), "{err}");

    let err = KeyRing::from_env(&env_of(&[("JWT_SECRET_KEY_OLD", a)])).unwrap_err();
    assert!(err.to_string().contains("no key could sign"), "{err}");

    // The file form trims one newline and is the same key as the direct form.
    let from_file = KeyRing::from_env(&env_of(&[("JWT_SECRET_KEY_FILE", file)]))
        .unwrap()
        .unwrap();
    let direct = KeyRing::from_env(&env_of(&[("JWT_SECRET_KEY", a)]))
        .unwrap()
        .unwrap();
    assert_eq!(from_file.active().kid(), direct.active().kid());
    assert!(
        direct
            .verify(&issue(&from_file, NOW, 60).token, &expect(NOW, 0))
            .is_ok()
    );

    let missing = dir.path().join("absent");
    let err = KeyRing::from_env(&env_of(&[(
        "JWT_SECRET_KEY_FILE",
        missing.to_str().unwrap(),
    )]))
    .unwrap_err();
    assert!(matches!(err, KeyRingError::Io { .. }), "{err}");
    assert!(err.to_string().contains("JWT_SECRET_KEY_FILE") && err.to_string().contains("absent"));
}

#[test]
fn ephemeral_keys_are_random_and_work() {
    let one = KeyRing::generate_ephemeral().unwrap();
    let two = KeyRing::generate_ephemeral().unwrap();
    assert_ne!(one.active().kid(), two.active().kid());
    let token = issue(&one, NOW, 60).token;
    assert!(one.verify(&token, &expect(NOW, 0)).is_ok());
    assert_eq!(
        two.verify(&token, &expect(NOW, 0)),
        Err(TokenError::UnknownKey)
    );
    assert_eq!(one.jwks_json(), r#"{"keys":[]}"#);
}

#[test]
fn ring_invariants() {
    let hs = |kid: &str, state| Key::hs256(kid, SECRET_A, state).unwrap();
    let err = KeyRing::new(vec![hs("a", KeyState::VerifyOnly)]).unwrap_err();
    assert!(err.to_string().contains("no key is active"), "{err}");
    let err = KeyRing::new(vec![hs("a", KeyState::Active), hs("b", KeyState::Active)]).unwrap_err();
    assert!(err.to_string().contains("more than one"), "{err}");
    let err = KeyRing::new(vec![
        hs("a", KeyState::Active),
        hs("a", KeyState::VerifyOnly),
    ])
    .unwrap_err();
    assert!(err.to_string().contains("more than once"), "{err}");
    assert!(KeyRing::new(vec![]).is_err());
    assert!(Key::hs256("", SECRET_A, KeyState::Active).is_err());
    assert!(Key::hs256("has space", SECRET_A, KeyState::Active).is_err());
    let short = Key::hs256("a", b"0123456789", KeyState::Active).unwrap_err();
    assert!(!short.to_string().contains("0123456789"));
    // A public-only Ed25519 key cannot be the active one.
    let public = ed_signing(2)
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap();
    let public = Key::ed25519_public_from_pem("pub", &public).unwrap();
    assert_eq!(public.state(), KeyState::VerifyOnly);
    assert!(Key::ed25519_from_pkcs8_pem("x", "not a pem", KeyState::Active).is_err());
    // The identity point is a small-order key: any "signature" tricks would work against it.
    let mut identity = [0u8; 32];
    identity[0] = 1;
    let weak = ed25519_dalek::VerifyingKey::from_bytes(&identity).unwrap();
    let weak = weak.to_public_key_pem(LineEnding::LF).unwrap();
    let err = Key::ed25519_public_from_pem("weak", &weak).unwrap_err();
    assert!(err.to_string().contains("weak"), "{err}");
    assert!(Key::ed25519_public_from_pem("x", &ed_pem(2)).is_err());
}

#[test]
fn public_only_ed25519_key_verifies() {
    let signer = ed_ring("ed", 4);
    let token = issue(&signer, NOW, 60).token;
    let public = ed_signing(4)
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap();
    let verifier = KeyRing::new(vec![
        Key::hs256("hs", SECRET_A, KeyState::Active).unwrap(),
        Key::ed25519_public_from_pem("ed", &public).unwrap(),
    ])
    .unwrap();
    assert!(verifier.verify(&token, &expect(NOW, 0)).is_ok());
}

#[test]
fn issue_refuses_bad_requests() {
    let ring = hs_ring("k", SECRET_A);
    let mut r = request();
    r.user_id = String::new();
    assert!(matches!(
        ring.issue(&r, &settings(NOW, 60)),
        Err(TokenError::InvalidRequest(_))
    ));
    let mut r = request();
    r.scopes.push("two words".into());
    assert!(matches!(
        ring.issue(&r, &settings(NOW, 60)),
        Err(TokenError::InvalidRequest(_))
    ));
    let mut r = request();
    r.tenant_id = "t\n1".into();
    assert!(matches!(
        ring.issue(&r, &settings(NOW, 60)),
        Err(TokenError::InvalidRequest(_))
    ));
    assert!(matches!(
        ring.issue(&request(), &settings(NOW, 0)),
        Err(TokenError::InvalidRequest(_))
    ));
    let mut s = settings(NOW, 60);
    s.ttl = Duration::from_millis(900);
    assert!(matches!(
        ring.issue(&request(), &s),
        Err(TokenError::InvalidRequest(_))
    ));
    let mut s = settings(NOW, 60);
    s.ttl = Duration::MAX;
    assert!(matches!(
        ring.issue(&request(), &s),
        Err(TokenError::InvalidRequest(_))
    ));
    let mut s = settings(NOW, 60);
    s.audience = "";
    assert!(matches!(
        ring.issue(&request(), &s),
        Err(TokenError::InvalidRequest(_))
    ));
    // No roles and no scopes is a valid (if useless) token.
    let bare = IssueRequest {
        roles: vec![],
        scopes: vec![],
        ..request()
    };
    let claims = ring
        .verify(
            &ring.issue(&bare, &settings(NOW, 60)).unwrap().token,
            &expect(NOW, 0),
        )
        .unwrap();
    assert_eq!((claims.scope.as_str(), claims.roles.len()), ("", 0));
}

#[test]
fn reasons_are_distinct_codes() {
    let all = [
        TokenError::Malformed,
        TokenError::UnknownKey,
        TokenError::AlgorithmMismatch,
        TokenError::ForbiddenHeader("jku"),
        TokenError::WrongType,
        TokenError::Expired,
        TokenError::NotYetValid,
        TokenError::WrongIssuer,
        TokenError::WrongAudience,
        TokenError::BadSignature,
        TokenError::InvalidRequest("x"),
        TokenError::Internal("x"),
    ];
    let mut reasons: Vec<&str> = all.iter().map(TokenError::reason).collect();
    assert!(
        reasons
            .iter()
            .all(|r| r.starts_with("TOKEN_")
                && r.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
    );
    reasons.sort_unstable();
    reasons.dedup();
    assert_eq!(reasons.len(), all.len());
    assert_eq!(TokenError::Expired.reason(), "TOKEN_EXPIRED");
}

#[test]
fn jwks_has_only_public_ed25519_keys() {
    let ed = ed_signing(11);
    let ring = KeyRing::new(vec![
        Key::ed25519_from_pkcs8_pem("ed-active", &ed_pem(11), KeyState::Active).unwrap(),
        Key::hs256("hs-secret-kid", SECRET_A, KeyState::VerifyOnly).unwrap(),
        Key::ed25519_from_pkcs8_pem("ed-next", &ed_pem(12), KeyState::VerifyOnly).unwrap(),
    ])
    .unwrap();
    let jwks = ring.jwks_json();
    let parsed: Value = serde_json::from_str(&jwks).unwrap();
    let keys = parsed["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2);
    assert_eq!(
        keys[0],
        json!({
            "kty": "OKP", "crv": "Ed25519", "x": B64URL.encode(ed.verifying_key().as_bytes()),
            "kid": "ed-active", "alg": "EdDSA", "use": "sig",
        })
    );
    assert_eq!(keys[1]["kid"], "ed-next");
    assert_eq!(
        keys[1]["x"],
        B64URL.encode(ed_signing(12).verifying_key().as_bytes())
    );
    assert!(!jwks.contains("hs-secret-kid"));
    assert!(!jwks.contains("\"d\""));
    let secret_forms = [
        String::from_utf8_lossy(SECRET_A).into_owned(),
        B64URL.encode(SECRET_A),
        base64::engine::general_purpose::STANDARD.encode(SECRET_A),
        B64URL.encode(ed.to_bytes()),
        B64URL.encode(ed_signing(12).to_bytes()),
    ];
    for s in &secret_forms {
        assert!(!jwks.contains(s.as_str()));
    }
    // The published x verifies tokens of the active key.
    let token = issue(&ring, NOW, 60).token;
    let x = B64URL.decode(keys[0]["x"].as_str().unwrap()).unwrap();
    let public = ed25519_dalek::VerifyingKey::from_bytes(&x.try_into().unwrap()).unwrap();
    let (input, sig) = token.rsplit_once('.').unwrap();
    let sig = ed25519_dalek::Signature::from_slice(&B64URL.decode(sig).unwrap()).unwrap();
    public.verify_strict(input.as_bytes(), &sig).unwrap();
}

#[test]
fn debug_output_has_kids_but_no_material() {
    let ring = KeyRing::new(vec![
        Key::hs256("hs-kid", SECRET_A, KeyState::Active).unwrap(),
        Key::ed25519_from_pkcs8_pem("ed-kid", &ed_pem(13), KeyState::VerifyOnly).unwrap(),
    ])
    .unwrap();
    let issued = issue(&ring, NOW, 60);
    let reloading = ReloadingKeyRing::fixed(
        KeyRing::new(vec![Key::hs256("r", SECRET_A, KeyState::Active).unwrap()]).unwrap(),
    );
    let outputs = [
        format!("{ring:?}"),
        format!("{ring:#?}"),
        format!("{:?}", ring.active()),
        format!("{reloading:?}"),
        format!("{issued:?}"),
    ];
    assert!(
        outputs[0].contains("hs-kid")
            && outputs[0].contains("ed-kid")
            && outputs[0].contains("Hs256")
    );
    let secret_text = String::from_utf8_lossy(SECRET_A).into_owned();
    let secret_bytes_debug = format!("{:?}", SECRET_A);
    let seed_debug = format!("{:?}", [13u8; 32]);
    for out in &outputs {
        for needle in [
            &secret_text,
            &secret_bytes_debug,
            &seed_debug,
            &issued.token,
            &"aaaaaaaa".to_owned(),
        ] {
            assert!(!out.contains(needle.as_str()), "{out}");
        }
    }
    assert!(outputs[4].contains("redacted") && outputs[4].contains(&issued.claims.jti));
}

// The fixtures below were made with PyJWT 2.15.1 (cryptography 50.0.2) by this script:
//
//   import jwt
//   from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
//   claims = {"iss": "https://auth.example.test", "aud": "portcullis-api", "sub": "user-42",
//             "tid": "tenant-7", "sid": "sess-1", "jti": "pyjwt-fixture-jti-0001",
//             "iat": 1767225600, "nbf": 1767225600, "exp": 4102444800,
//             "roles": ["admin", "viewer"], "scope": "password:change profile:read"}
//   hs = jwt.encode(claims, b"portcullis-pyjwt-fixture-secret-0123456789", algorithm="HS256",
//                   headers={"kid": "py-hs", "typ": "at+jwt"})
//   ed_key = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
//   ed = jwt.encode(dict(claims, aud=["other-api", "portcullis-api"]), ed_key, algorithm="EdDSA",
//                   headers={"kid": "py-ed", "typ": "at+jwt"})
//   print(hs); print(ed)
const PYJWT_HS256_SECRET: &[u8] = b"portcullis-pyjwt-fixture-secret-0123456789";
const PYJWT_HS256: &str = "eyJhbGciOiJIUzI1NiIsImtpZCI6InB5LWhzIiwidHlwIjoiYXQrand0In0.eyJpc3MiOiJodHRwczovL2F1dGguZXhhbXBsZS50ZXN0IiwiYXVkIjoicG9ydGN1bGxpcy1hcGkiLCJzdWIiOiJ1c2VyLTQyIiwidGlkIjoidGVuYW50LTciLCJzaWQiOiJzZXNzLTEiLCJqdGkiOiJweWp3dC1maXh0dXJlLWp0aS0wMDAxIiwiaWF0IjoxNzY3MjI1NjAwLCJuYmYiOjE3NjcyMjU2MDAsImV4cCI6NDEwMjQ0NDgwMCwicm9sZXMiOlsiYWRtaW4iLCJ2aWV3ZXIiXSwic2NvcGUiOiJwYXNzd29yZDpjaGFuZ2UgcHJvZmlsZTpyZWFkIn0.Jew5YpJcqCSJoi35RGTB8itMSJRAk7PZ2nzF8IV0AQY";
const PYJWT_EDDSA: &str = "eyJhbGciOiJFZERTQSIsImtpZCI6InB5LWVkIiwidHlwIjoiYXQrand0In0.eyJpc3MiOiJodHRwczovL2F1dGguZXhhbXBsZS50ZXN0IiwiYXVkIjpbIm90aGVyLWFwaSIsInBvcnRjdWxsaXMtYXBpIl0sInN1YiI6InVzZXItNDIiLCJ0aWQiOiJ0ZW5hbnQtNyIsInNpZCI6InNlc3MtMSIsImp0aSI6InB5and0LWZpeHR1cmUtanRpLTAwMDEiLCJpYXQiOjE3NjcyMjU2MDAsIm5iZiI6MTc2NzIyNTYwMCwiZXhwIjo0MTAyNDQ0ODAwLCJyb2xlcyI6WyJhZG1pbiIsInZpZXdlciJdLCJzY29wZSI6InBhc3N3b3JkOmNoYW5nZSBwcm9maWxlOnJlYWQifQ.HXE9TplVG4EJzbeQjfUxVBMq94scex7P4rakeRRMRySSMEVQWB-kD617PvDA8IVayCg3q6ReEnA_SSakgd7yAg";

#[test]
fn tokens_made_by_pyjwt_verify() {
    let seed: [u8; 32] = std::array::from_fn(|i| i as u8);
    let ed_pem = SigningKey::from_bytes(&seed)
        .to_pkcs8_pem(LineEnding::LF)
        .unwrap();
    let ring = KeyRing::new(vec![
        Key::hs256("py-hs", PYJWT_HS256_SECRET, KeyState::Active).unwrap(),
        Key::ed25519_from_pkcs8_pem("py-ed", &ed_pem, KeyState::VerifyOnly).unwrap(),
    ])
    .unwrap();
    let now = 1_900_000_000;
    let hs = ring.verify(PYJWT_HS256, &expect(now, 0)).unwrap();
    assert_eq!(
        (hs.sub.as_str(), hs.tid.as_str(), hs.sid.as_str()),
        ("user-42", "tenant-7", "sess-1")
    );
    assert_eq!(hs.aud, vec![AUD.to_owned()]);
    assert_eq!(hs.exp, 4_102_444_800);
    assert!(hs.has_scope("password:change"));
    let ed = ring.verify(PYJWT_EDDSA, &expect(now, 0)).unwrap();
    assert_eq!(ed.aud, vec!["other-api".to_owned(), AUD.to_owned()]);
    assert_eq!(ed.roles, vec!["admin".to_owned(), "viewer".to_owned()]);
    // And they are not accepted for anything else.
    let mut e = expect(now, 0);
    e.audience = "third-api";
    assert_eq!(ring.verify(PYJWT_EDDSA, &e), Err(TokenError::WrongAudience));
    assert_eq!(
        ring.verify(PYJWT_HS256, &expect(1_700_000_000, 60)),
        Err(TokenError::NotYetValid)
    );
}

// ---- key-set files and reloading ----

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

fn key_set(entries: &[(&str, &str, &str)]) -> String {
    // (kid, state, material line)
    entries
        .iter()
        .map(|(kid, state, material)| {
            let alg = if material.starts_with("secret") { "HS256" } else { "EdDSA" };
            format!("[[key]]\nkid = \"{kid}\"\nalgorithm = \"{alg}\"\nstate = \"{state}\"\n{material}\n\n")
        })
        .collect()
}

fn load_err(dir: &Path, text: &str) -> String {
    let path = dir.join("keys.toml");
    write(&path, text);
    KeyRing::load_file(&path).unwrap_err().to_string()
}

#[test]
fn key_set_file_loads_both_algorithms() {
    let dir = tempfile::tempdir().unwrap();
    write(
        &dir.path().join("hs.secret"),
        &format!("{}\n", std::str::from_utf8(SECRET_A).unwrap()),
    );
    write(&dir.path().join("ed.pem"), &ed_pem(21));
    let public = ed_signing(22)
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap();
    write(&dir.path().join("old.pub.pem"), &public);
    let path = dir.path().join("keys.toml");
    write(
        &path,
        &key_set(&[
            ("hs", "verify", "secret_file = \"hs.secret\""),
            ("ed", "active", "private_key_file = \"ed.pem\""),
            ("old", "verify", "public_key_file = \"old.pub.pem\""),
        ]),
    );
    let ring = KeyRing::load_file(&path).unwrap();
    assert_eq!(ring.active().kid(), "ed");
    assert_eq!(ring.active().algorithm(), KeyAlgorithm::EdDsa);
    let kids: Vec<&str> = ring.keys().map(Key::kid).collect();
    assert_eq!(kids, ["ed", "hs", "old"]);
    // The trailing newline of the secret file is not part of the secret.
    let token = issue(&hs_ring("hs", SECRET_A), NOW, 60).token;
    assert!(ring.verify(&token, &expect(NOW, 0)).is_ok());
    let old = issue(&ed_ring("old", 22), NOW, 60).token;
    assert!(ring.verify(&old, &expect(NOW, 0)).is_ok());
}

#[test]
fn key_set_errors_name_file_kid_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let short = "short-secret-do-not-print";
    write(&d.join("short.secret"), short);
    write(
        &d.join("good.secret"),
        std::str::from_utf8(SECRET_A).unwrap(),
    );
    let file = d.join("keys.toml").display().to_string();

    let cases: Vec<(String, Vec<&str>)> = vec![
        (
            key_set(&[("k1", "active", "secret_file = \"short.secret\"")]),
            vec!["\"k1\"", "`secret_file`", "32"],
        ),
        (
            key_set(&[(
                "k1",
                "active",
                "secret_file = \"good.secret\"\ncolour = \"red\"",
            )]),
            vec!["\"k1\"", "`colour`", "unknown field"],
        ),
        (
            key_set(&[
                ("k1", "active", "secret_file = \"good.secret\""),
                ("k1", "verify", "secret_file = \"good.secret\""),
            ]),
            vec!["\"k1\"", "`kid`", "more than once"],
        ),
        (
            key_set(&[
                ("k1", "active", "secret_file = \"good.secret\""),
                ("k2", "active", "secret_file = \"good.secret\""),
            ]),
            vec!["\"k1\"", "\"k2\"", "`state`", "more than one"],
        ),
        (
            key_set(&[("k1", "verify", "secret_file = \"good.secret\"")]),
            vec!["`state`", "no key is active"],
        ),
        (
            key_set(&[("k1", "active", "secret_file = \"missing.secret\"")]),
            vec!["\"k1\"", "`secret_file`", "missing.secret"],
        ),
        (
            key_set(&[(
                "k1",
                "active",
                "secret = \"x\"\nsecret_file = \"good.secret\"",
            )]),
            vec!["\"k1\"", "`secret`", "not both"],
        ),
        (
            key_set(&[("k1", "active", "public_key_file = \"x.pem\"")]),
            vec!["\"k1\"", "`public_key_file`", "private_key_file"],
        ),
        (
            key_set(&[("k1", "active", "private_key_file = \"good.secret\"")]),
            vec!["\"k1\"", "`private_key_file`", "PKCS#8"],
        ),
        (
            "[[key]]\nalgorithm = \"HS256\"\nstate = \"active\"\nsecret_file = \"good.secret\"\n"
                .into(),
            vec!["entry #1", "`kid`", "required"],
        ),
        (
            "[[key]]\nkid = \"k1\"\nalgorithm = \"RS256\"\nstate = \"active\"\n".into(),
            vec!["\"k1\"", "`algorithm`", "HS256"],
        ),
        (
            "[[key]]\nkid = \"k1\"\nalgorithm = \"HS256\"\nstate = \"on\"\n".into(),
            vec!["\"k1\"", "`state`", "verify"],
        ),
        ("keys = 1\n".into(), vec!["`keys`", "unknown top-level"]),
        (String::new(), vec!["no [[key]] entries"]),
    ];
    for (text, needles) in cases {
        let msg = load_err(d, &text);
        assert!(msg.contains(&file), "{msg}");
        for needle in needles {
            assert!(msg.contains(needle), "{needle:?} not in {msg:?}");
        }
        assert!(!msg.contains(short), "{msg}");
    }
}

#[test]
fn key_set_errors_never_quote_inline_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "inline-secret-that-must-never-be-printed-0123456789";
    for text in [
        format!(
            "[[key]]\nkid = \"k\"\nalgorithm = \"HS256\"\nstate = \"active\"\nsecret = \"{secret}"
        ),
        format!(
            "[[key]]\nkid = \"k\"\nalgorithm = \"HS256\"\nstate = \"active\"\nsecret = \"{secret}\" junk\n"
        ),
        format!("[[key]]\nkid = \"k\"\nalgorithm = \"HS256\"\nstate = {secret}\n"),
        format!("[[key]]\nkid = \"k\"\nalgorithm = \"HS256\"\nstate = \"{secret}\"\n"),
        format!(
            "[[key]]\nkid = \"k\"\nalgorithm = \"HS256\"\nstate = \"active\"\n\"{secret}\" = 1\n"
        ),
    ] {
        let msg = load_err(dir.path(), &text);
        assert!(
            !msg.contains(secret) && !msg.contains("inline-secret"),
            "{msg}"
        );
        assert!(msg.contains("keys.toml"), "{msg}");
    }
}

#[test]
fn reloading_follows_a_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(
        &d.join("old.secret"),
        std::str::from_utf8(SECRET_A).unwrap(),
    );
    write(&d.join("new.pem"), &ed_pem(31));
    let path = d.join("keys.toml");
    let old = ("2026-08", "secret_file = \"old.secret\"");
    let new = ("2026-11", "private_key_file = \"new.pem\"");

    // Day 0: old signs; new is published ahead of use.
    write(
        &path,
        &key_set(&[(old.0, "active", old.1), (new.0, "verify", new.1)]),
    );
    let reloading = ReloadingKeyRing::open(&path).unwrap();
    assert!(
        !reloading.reload_if_changed().unwrap(),
        "nothing changed yet"
    );
    let day0 = reloading.current();
    assert_eq!(day0.active().kid(), "2026-08");
    assert!(day0.jwks_json().contains("2026-11"));
    let old_token = issue(&day0, NOW, 86_400 * 30).token;

    // Day 1: new signs; old still verifies.
    write(
        &path,
        &key_set(&[(old.0, "verify", old.1), (new.0, "active", new.1)]),
    );
    assert!(reloading.reload_if_changed().unwrap());
    let day1 = reloading.current();
    assert_eq!(day1.active().kid(), "2026-11");
    assert!(day1.verify(&old_token, &expect(NOW, 0)).is_ok());
    let new_token = issue(&day1, NOW, 86_400 * 30);
    assert_eq!(new_token.key_id, "2026-11");
    assert!(
        day0.verify(&new_token.token, &expect(NOW, 0)).is_ok(),
        "day-0 replicas accept it"
    );
    assert!(!reloading.reload_if_changed().unwrap());

    // Day 7: old removed; its tokens are refused.
    write(&path, &key_set(&[(new.0, "active", new.1)]));
    assert!(reloading.reload_if_changed().unwrap());
    let day7 = reloading.current();
    assert_eq!(
        day7.verify(&old_token, &expect(NOW, 0)),
        Err(TokenError::UnknownKey)
    );
    assert!(day7.verify(&new_token.token, &expect(NOW, 0)).is_ok());
    // Holders of the day-1 ring are unaffected by the swap.
    assert!(day1.verify(&old_token, &expect(NOW, 0)).is_ok());
}

#[test]
fn failed_reload_keeps_the_old_ring() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(&d.join("a.secret"), std::str::from_utf8(SECRET_A).unwrap());
    let path = d.join("keys.toml");
    write(
        &path,
        &key_set(&[("a", "active", "secret_file = \"a.secret\"")]),
    );
    let reloading = ReloadingKeyRing::open(&path).unwrap();
    let before = reloading.current();
    let token = issue(&before, NOW, 600).token;

    // Two active keys: refused, the old ring stays.
    write(
        &path,
        &key_set(&[
            ("a", "active", "secret_file = \"a.secret\""),
            ("b", "active", "secret_file = \"a.secret\""),
        ]),
    );
    let err = reloading.reload_if_changed().unwrap_err();
    assert!(err.to_string().contains("more than one"), "{err}");
    assert!(Arc::ptr_eq(&before, &reloading.current()));
    assert!(reloading.current().verify(&token, &expect(NOW, 0)).is_ok());
    assert!(
        !reloading.reload_if_changed().unwrap(),
        "the same broken state is reported once"
    );

    // Garbage, then a file that names a secret file not there yet.
    write(&path, "[[key]\n");
    assert!(reloading.reload_if_changed().is_err());
    write(
        &path,
        &key_set(&[("b", "active", "secret_file = \"b.secret\"")]),
    );
    assert!(matches!(
        reloading.reload_if_changed(),
        Err(KeyRingError::Io { .. })
    ));
    assert!(Arc::ptr_eq(&before, &reloading.current()));
    assert!(!reloading.reload_if_changed().unwrap());
    // The missing file appears: noticed although the key set itself did not change.
    write(&d.join("b.secret"), std::str::from_utf8(SECRET_B).unwrap());
    assert!(reloading.reload_if_changed().unwrap());
    assert_eq!(reloading.current().active().kid(), "b");

    // The key set file disappears: an error, the ring stays.
    std::fs::remove_file(&path).unwrap();
    let kept = reloading.current();
    assert!(reloading.reload_if_changed().is_err());
    assert!(Arc::ptr_eq(&kept, &reloading.current()));
}

#[test]
fn reload_notices_content_changes_with_same_length_and_mtime() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let secret_path = d.join("k.secret");
    write(&secret_path, std::str::from_utf8(SECRET_A).unwrap());
    let path = d.join("keys.toml");
    write(
        &path,
        &key_set(&[("k", "active", "secret_file = \"k.secret\"")]),
    );
    let reloading = ReloadingKeyRing::open(&path).unwrap();
    let token_a = issue(&reloading.current(), NOW, 600).token;

    // The referenced secret changes in place; same length, mtime put back.
    let mtime = std::fs::metadata(&secret_path).unwrap().modified().unwrap();
    assert_eq!(SECRET_A.len(), SECRET_B.len());
    write(&secret_path, std::str::from_utf8(SECRET_B).unwrap());
    std::fs::File::options()
        .write(true)
        .open(&secret_path)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    assert!(reloading.reload_if_changed().unwrap());
    assert_eq!(
        reloading.current().verify(&token_a, &expect(NOW, 0)),
        Err(TokenError::BadSignature)
    );
}

#[test]
fn fixed_ring_never_reloads() {
    let reloading = ReloadingKeyRing::fixed(hs_ring("k", SECRET_A));
    assert!(reloading.path().is_none());
    assert!(!reloading.reload_if_changed().unwrap());
    assert_eq!(reloading.current().active().kid(), "k");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_picks_up_changes_and_stops() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(&d.join("a.secret"), std::str::from_utf8(SECRET_A).unwrap());
    write(&d.join("b.secret"), std::str::from_utf8(SECRET_B).unwrap());
    let path = d.join("keys.toml");
    write(
        &path,
        &key_set(&[("a", "active", "secret_file = \"a.secret\"")]),
    );
    let reloading = Arc::new(ReloadingKeyRing::open(&path).unwrap());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(
        Arc::clone(&reloading).watch(Duration::from_millis(20), async {
            let _ = stop_rx.await;
        }),
    );
    write(
        &path,
        &key_set(&[
            ("a", "verify", "secret_file = \"a.secret\""),
            ("b", "active", "secret_file = \"b.secret\""),
        ]),
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while reloading.current().active().kid() != "b" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "watch did not reload"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
}

#[test]
fn rings_can_be_shared_across_threads() {
    fn shared<T: Send + Sync>() {}
    shared::<KeyRing>();
    shared::<ReloadingKeyRing>();
    shared::<TokenError>();
    shared::<KeyRingError>();
}
