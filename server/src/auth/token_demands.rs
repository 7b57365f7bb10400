//! The scopes access tokens carry, and what a service verifying one demands of it: scopes and
//! roles checked in the same call, a first-login token refused unless its scope is asked for.

use super::error::AuthError;
use super::tokens::AccessClaims;
use crate::keys;

/// The only scope of a token issued while the password must be changed.
pub const PASSWORD_CHANGE_SCOPE: &str = "password:change";
/// The scope of an ordinary access token.
pub const API_SCOPE: &str = "api";

/// Most scopes, and most roles, one verification may demand: a service names the few its
/// call needs; more is a broken caller, not a bigger question.
pub const MAX_DEMANDED: usize = 32;

/// Longest demanded scope or role, in bytes: roles are ids (created under the same bound).
pub const MAX_DEMAND_LEN: usize = keys::MAX_ID_LEN;

/// The scopes and roles a token must carry, validated.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokenDemands<'a> {
    /// Every one must be among the token's scopes.
    scopes: &'a [String],
    /// Every one must be among the token's roles.
    roles: &'a [String],
}

impl<'a> TokenDemands<'a> {
    /// Demands `scopes` and `roles`, named in errors as the request fields `required_scopes`
    /// and `required_roles`. INVALID_ARGUMENT for too many, or an empty, overlong or control-
    /// character entry.
    pub fn new(scopes: &'a [String], roles: &'a [String]) -> Result<Self, AuthError> {
        validate("required_scopes", scopes)?;
        validate("required_roles", roles)?;
        Ok(Self { scopes, roles })
    }

    /// Whether `claims` meet the demands. A token whose only scope is `password:change` (a
    /// first login, before the password was changed) meets no demands but that scope: a
    /// service that checks only the status must not let such a user in.
    pub fn check(&self, claims: &AccessClaims) -> Result<(), AuthError> {
        let first_login_only = claims.scopes().all(|s| s == PASSWORD_CHANGE_SCOPE)
            && claims.has_scope(PASSWORD_CHANGE_SCOPE);
        let asks_password_change = self.scopes.iter().any(|s| s == PASSWORD_CHANGE_SCOPE);
        if first_login_only && !asks_password_change {
            return Err(AuthError::InsufficientScope);
        }
        if !self.scopes.iter().all(|s| claims.has_scope(s)) {
            return Err(AuthError::InsufficientScope);
        }
        if !self.roles.iter().all(|r| claims.has_role(r)) {
            return Err(AuthError::InsufficientRole);
        }
        Ok(())
    }
}

/// INVALID_ARGUMENT naming `field` (or its entry) unless `values` are few, non-empty, short
/// and free of control characters.
fn validate(field: &str, values: &[String]) -> Result<(), AuthError> {
    if values.len() > MAX_DEMANDED {
        return Err(AuthError::InvalidArgument {
            field: field.to_owned(),
            reason: format!("has more than {MAX_DEMANDED} entries"),
        });
    }
    for (i, value) in values.iter().enumerate() {
        if let Some(reason) = keys::id_problem(value, true, MAX_DEMAND_LEN) {
            return Err(AuthError::InvalidArgument {
                field: format!("{field}[{i}]"),
                reason,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(scope: &str, roles: &[&str]) -> AccessClaims {
        AccessClaims {
            iss: "i".into(),
            aud: vec!["a".into()],
            sub: "u".into(),
            tid: "t".into(),
            sid: "s".into(),
            jti: "j".into(),
            iat: 0,
            nbf: 0,
            exp: 1,
            roles: roles.iter().map(|r| r.to_string()).collect(),
            scope: scope.into(),
        }
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_first_login_token_meets_only_a_demand_for_its_scope() {
        let first = claims("password:change", &["reader"]);
        let none = TokenDemands::default();
        assert!(matches!(
            none.check(&first),
            Err(AuthError::InsufficientScope)
        ));
        let asks = strings(&["password:change"]);
        assert!(TokenDemands::new(&asks, &[]).unwrap().check(&first).is_ok());
        assert!(none.check(&claims("api", &[])).is_ok());
    }

    #[test]
    fn every_demanded_scope_and_role_must_be_carried() {
        let token = claims("api", &["reader", "writer"]);
        let (api, other) = (strings(&["api"]), strings(&["admin:write"]));
        let (reader, admin) = (
            strings(&["reader", "writer"]),
            strings(&["reader", "admin"]),
        );
        assert!(
            TokenDemands::new(&api, &reader)
                .unwrap()
                .check(&token)
                .is_ok()
        );
        assert!(matches!(
            TokenDemands::new(&other, &[]).unwrap().check(&token),
            Err(AuthError::InsufficientScope)
        ));
        assert!(matches!(
            TokenDemands::new(&api, &admin).unwrap().check(&token),
            Err(AuthError::InsufficientRole)
        ));
    }

    #[test]
    fn demands_are_validated_naming_the_field() {
        let field = |r: Result<TokenDemands<'_>, AuthError>| match r {
            Err(AuthError::InvalidArgument { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        let empty = strings(&["api", ""]);
        assert_eq!(field(TokenDemands::new(&empty, &[])), "required_scopes[1]");
        let long = vec!["r".repeat(MAX_DEMAND_LEN + 1)];
        assert_eq!(field(TokenDemands::new(&[], &long)), "required_roles[0]");
        let many = vec!["r".to_owned(); MAX_DEMANDED + 1];
        assert_eq!(field(TokenDemands::new(&[], &many)), "required_roles");
        let control = strings(&["a\nb"]);
        assert_eq!(
            field(TokenDemands::new(&control, &[])),
            "required_scopes[0]"
        );
    }
}
