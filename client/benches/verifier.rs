//! The local verifier's cost per call: a token it has verified before (a cache hit), and a new
//! EdDSA token (the signature check plus the verifier's own work), against an in-process
//! Portcullis on the memory store whose key set the verifier follows.
//!
//! Run with `cargo bench -p portcullis-client --features verify --bench verifier`.

use std::hint::black_box;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use portcullis_client::verify::{Demands, Verifier};
use tonic::transport::Endpoint;

const WATCH_TOKEN: &str = "bench-watch-token-0123456789";

fn verifier(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let pem = SigningKey::from_bytes(&[7; 32])
        .to_pkcs8_pem(LineEnding::LF)
        .expect("pkcs8 pem");
    std::fs::write(dir.path().join("bench.pem"), pem.as_bytes()).expect("write key");
    let key_set = dir.path().join("keys.toml");
    std::fs::write(
        &key_set,
        "[[key]]\nkid = \"bench\"\nalgorithm = \"EdDSA\"\nstate = \"active\"\nprivate_key_file = \"bench.pem\"\n",
    )
    .expect("write key set");
    let args: Vec<String> = [
        "portcullis",
        "--jwt-key-set",
        key_set.to_str().expect("utf-8"),
    ]
    .map(str::to_owned)
    .into();
    let env: std::collections::HashMap<String, String> =
        [("PORTCULLIS_WATCH_TOKEN".to_owned(), WATCH_TOKEN.to_owned())].into();
    let config = portcullis_server::config::Config::load(&args, &env).expect("config");
    let verifier = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(portcullis_server::run(
            config,
            listener,
            std::future::pending(),
        ));
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .expect("endpoint")
            .connect_lazy();
        let verifier = Verifier::builder(channel).watch_token(WATCH_TOKEN).build();
        while !verifier.is_current() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        verifier
    });

    let der = SigningKey::from_bytes(&[7; 32])
        .to_pkcs8_der()
        .expect("pkcs8 der");
    let signer = EncodingKey::from_ed_der(der.as_bytes());
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some("bench".into());
    header.typ = Some("at+jwt".into());
    let mut n = 0u64;
    let mut mint = || {
        n += 1;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        let claims = serde_json::json!({
            "iss": "portcullis", "aud": "portcullis", "sub": "user-42", "tid": "acme",
            "sid": format!("session-{n}"), "jti": format!("jti-{n}"), "iat": now, "nbf": now,
            "exp": now + 900, "roles": ["reader"], "scope": "api",
        });
        jsonwebtoken::encode(&header, &claims, &signer).expect("sign")
    };
    let demands = Demands {
        tenant: Some("acme"),
        scopes: &["api"],
        roles: &["reader"],
    };

    let token = mint();
    runtime
        .block_on(verifier.verify(&token, &demands))
        .expect("the minted token verifies");
    c.bench_function("verifier/cached token", |b| {
        b.iter(|| {
            runtime
                .block_on(verifier.verify(black_box(&token), &demands))
                .expect("verify")
        })
    });
    c.bench_function("verifier/new EdDSA token", |b| {
        b.iter_batched(
            &mut mint,
            |token| {
                runtime
                    .block_on(verifier.verify(black_box(&token), &demands))
                    .expect("verify")
            },
            BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, verifier);
criterion_main!(benches);
