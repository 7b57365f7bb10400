//! Unit tests of what the verifier decides without a server: demands, and which keys of a
//! key set it will verify with.

use super::token::KeySet;
use super::*;

fn principal(scopes: &[&str], roles: &[&str]) -> Principal {
    Principal {
        user_id: "u".into(),
        tenant_id: "acme".into(),
        session_id: "s".into(),
        roles: roles.iter().map(|r| r.to_string()).collect(),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        expires_at: SystemTime::now() + Duration::from_secs(60),
        key_id: "k".into(),
    }
}

#[test]
fn demands_follow_the_servers_rules() {
    let api = principal(&["api"], &["reader"]);
    assert_eq!(Demands::default().check(&api), Ok(()));
    let tenant = |t| Demands {
        tenant: Some(t),
        ..Demands::default()
    };
    assert_eq!(tenant("acme").check(&api), Ok(()));
    assert_eq!(tenant("other").check(&api), Err(VerifyError::WrongTenant));
    let scopes = Demands {
        scopes: &["api", "write"],
        ..Demands::default()
    };
    assert_eq!(scopes.check(&api), Err(VerifyError::InsufficientScope));
    let roles = Demands {
        roles: &["reader", "admin"],
        ..Demands::default()
    };
    assert_eq!(roles.check(&api), Err(VerifyError::InsufficientRole));

    // A first-login token meets no demand but its own scope, not even none.
    let first_login = principal(&["password:change"], &["reader"]);
    assert_eq!(
        Demands::default().check(&first_login),
        Err(VerifyError::InsufficientScope)
    );
    let change = Demands {
        scopes: &["password:change"],
        ..Demands::default()
    };
    assert_eq!(change.check(&first_login), Ok(()));
}

#[test]
fn only_ed25519_keys_of_a_key_set_are_used() {
    // An `oct` key in a key set would let whoever wrote it mint tokens; it is skipped, as are
    // keys without a kid.
    let jwks = r#"{"keys":[
        {"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","kid":"ed","alg":"EdDSA","use":"sig"},
        {"kty":"oct","k":"c2VjcmV0","kid":"sym","alg":"HS256"},
        {"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}
    ]}"#;
    let set = KeySet::from_jwks(jwks, "iss", "aud").unwrap();
    let kids = format!("{set:?}");
    assert!(kids.contains("\"ed\""), "{kids}");
    assert!(!kids.contains("sym"), "{kids}");
    assert!(KeySet::from_jwks("not json", "iss", "aud").is_err());
}
