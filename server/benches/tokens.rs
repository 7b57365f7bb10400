//! Benchmarks of access tokens: issuing and verifying with HS256 and EdDSA keys.
//!
//! Run with `cargo bench -p portcullis-server --bench tokens`.

use std::hint::black_box;
use std::time::{Duration, SystemTime};

use criterion::{Criterion, criterion_group, criterion_main};
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use portcullis_server::auth::tokens::{
    IssueRequest, IssueSettings, Key, KeyRing, KeyState, VerifyExpectations,
};

fn rings() -> [(&'static str, KeyRing); 2] {
    let hs = Key::hs256(
        "hs",
        b"0123456789abcdef0123456789abcdef-bench",
        KeyState::Active,
    )
    .expect("hs256 key");
    let pem = SigningKey::from_bytes(&[7; 32])
        .to_pkcs8_pem(LineEnding::LF)
        .expect("pkcs8 pem");
    let ed = Key::ed25519_from_pkcs8_pem("ed", &pem, KeyState::Active).expect("ed25519 key");
    [
        ("HS256", KeyRing::new(vec![hs]).expect("ring")),
        ("EdDSA", KeyRing::new(vec![ed]).expect("ring")),
    ]
}

fn tokens(c: &mut Criterion) {
    let request = IssueRequest {
        user_id: "user-42".into(),
        tenant_id: "acme".into(),
        session_id: "session-7".into(),
        roles: vec!["reader".into()],
        scopes: vec!["api".into()],
    };
    let now = SystemTime::now();
    let settings = IssueSettings {
        issuer: "portcullis",
        audience: "portcullis",
        ttl: Duration::from_secs(1800),
        now,
    };
    let expect = VerifyExpectations {
        issuer: "portcullis",
        audience: "portcullis",
        leeway: Duration::from_secs(30),
        now,
    };
    for (alg, ring) in rings() {
        c.bench_function(&format!("jwt/issue {alg}"), |b| {
            b.iter(|| ring.issue(black_box(&request), &settings).expect("issue"))
        });
        let token = ring.issue(&request, &settings).expect("issue").token;
        c.bench_function(&format!("jwt/verify {alg}"), |b| {
            b.iter(|| ring.verify(black_box(&token), &expect).expect("verify"))
        });
    }
}

criterion_group!(benches, tokens);
criterion_main!(benches);
