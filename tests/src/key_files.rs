//! JWT key-set files for tests: Ed25519 keys made with openssl, `[[key]]` entries, and atomic
//! replacement so a server polling the file never reads half of it.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

/// Replaces `path` by `contents` atomically (write beside it, then rename), so a poller never
/// reads a half-written file.
pub fn replace_file(path: &Path, contents: &str) {
    let partial = path.with_extension("partial");
    fs::write(&partial, contents).expect("write the new file");
    fs::rename(&partial, path).expect("rename it into place");
}

/// A `[[key]]` entry of a key-set file: HS256 keys read `<kid>.secret`, EdDSA keys `<kid>.pem`.
pub fn key_entry(kid: &str, algorithm: &str, state: &str) -> String {
    let file = match algorithm {
        "HS256" => format!("secret_file = \"{kid}.secret\""),
        _ => format!("private_key_file = \"{kid}.pem\""),
    };
    format!(
        "[[key]]\nkid = \"{kid}\"\nalgorithm = \"{algorithm}\"\nstate = \"{state}\"\n{file}\n\n"
    )
}

/// Writes a new Ed25519 PKCS#8 PEM private key to `<dir>/<kid>.pem` with openssl.
pub fn generate_ed25519(dir: &Path, kid: &str) {
    let path = dir.join(format!("{kid}.pem"));
    let output = Command::new("openssl")
        .args(["genpkey", "-algorithm", "ed25519", "-out"])
        .arg(&path)
        .stdin(Stdio::null())
        .output()
        .expect("openssl not found: apt-get install -y openssl");
    assert!(
        output.status.success(),
        "openssl genpkey failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The `kid` in the JOSE header of `token`.
pub fn kid_of(token: &str) -> String {
    jsonwebtoken::decode_header(token)
        .expect("a JWT header")
        .kid
        .expect("access tokens carry a kid")
}
