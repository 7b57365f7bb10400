//! Usernames as accounts know them: trimmed, then mapped by RFC 8265's UsernameCaseMapped
//! profile (width mapping, NFKC, case fold), so `Alice`, `ａlice` and `alice ` are one account.

use precis_core::profile::Profile;
use precis_core::{CodepointInfo, Error as PrecisError};
use precis_profiles::UsernameCaseMapped;

use crate::keys::{InvalidId, validate_id};

/// The request field usernames arrive in.
const FIELD: &str = "username";

/// The form a username is stored and looked up in; INVALID_ARGUMENT naming `username` when it
/// is empty after trimming, too long, or holds a character the profile refuses (controls,
/// bidirectional overrides, inner spaces, unassigned code points, …).
pub fn normalise_username(raw: &str) -> Result<String, InvalidId> {
    // The length and control-character checks of every id, on what was sent, so a huge input
    // is refused before any Unicode work.
    validate_id(FIELD, raw, true)?;
    let trimmed = raw.trim();
    let invalid = |reason: String| InvalidId {
        field: FIELD.to_owned(),
        reason,
    };
    if trimmed.is_empty() {
        return Err(invalid("is empty once spaces are trimmed".to_owned()));
    }
    let mapped = UsernameCaseMapped::new()
        .enforce(trimmed)
        .map_err(|e| invalid(refusal(&e)))?;
    validate_id(FIELD, &mapped, true)?;
    Ok(mapped.into_owned())
}

/// A username given to be looked up (at login, or by an admin), in the forms accounts are
/// stored under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LookupName {
    /// The normalised form, when the name has one: every account created since usernames are
    /// normalised is stored under it.
    pub normalised: Option<String>,
    /// The name as given, trimmed: an account stored before normalisation is found under it.
    pub given: String,
}

/// The forms to look `raw` up by. Refuses, naming `username`, only what no account can be
/// named: empty once trimmed, too long, control or bidirectional-formatting characters. A
/// name the profile refuses for another reason (an inner space, say) can only be an account
/// stored before normalisation, so it is looked up as given.
pub fn lookup_name(raw: &str) -> Result<LookupName, InvalidId> {
    validate_id(FIELD, raw, true)?;
    let given = raw.trim();
    if given.is_empty() {
        return Err(InvalidId {
            field: FIELD.to_owned(),
            reason: "is empty once spaces are trimmed".to_owned(),
        });
    }
    if let Some(c) = given.chars().find(|c| is_bidi_format(*c)) {
        return Err(InvalidId {
            field: FIELD.to_owned(),
            reason: format!(
                "character U+{:04X} is not allowed in usernames",
                u32::from(c)
            ),
        });
    }
    Ok(LookupName {
        normalised: normalise_username(given).ok(),
        given: given.to_owned(),
    })
}

/// Characters that reorder how text around them is shown (Unicode's bidirectional formatting
/// characters): a name holding one can display as another name.
fn is_bidi_format(c: char) -> bool {
    matches!(
        c,
        '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
    )
}

/// Why the profile refused a name, naming the code point but not echoing the name.
fn refusal(error: &PrecisError) -> String {
    match error {
        PrecisError::BadCodepoint(CodepointInfo { cp, position, .. }) => {
            format!("character U+{cp:04X} at position {position} is not allowed in usernames")
        }
        _ => "is not a valid username".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_map_to_one_name() {
        for variant in ["alice", "Alice", "ALICE", "ａｌｉｃｅ", "alice ", " alice"] {
            assert_eq!(normalise_username(variant).unwrap(), "alice", "{variant:?}");
        }
        assert_eq!(normalise_username("Σίσυφος").unwrap(), "σίσυφος");
        assert_eq!(
            normalise_username("ops.team-1_x@corp").unwrap(),
            "ops.team-1_x@corp"
        );
    }

    #[test]
    fn refusals_name_the_field() {
        for (raw, reason) in [
            ("", "is required"),
            ("   ", "is empty once spaces are trimmed"),
            ("x\u{7}y", "contains a control character"),
            (
                "a\u{202e}b",
                "character U+202E at position 1 is not allowed in usernames",
            ),
            (
                "a b",
                "character U+0020 at position 1 is not allowed in usernames",
            ),
        ] {
            let e = normalise_username(raw).unwrap_err();
            assert_eq!(
                (e.field.as_str(), e.reason.as_str()),
                ("username", reason),
                "{raw:?}"
            );
        }
        assert!(normalise_username(&"a".repeat(257)).is_err());
    }

    #[test]
    fn lookups_keep_names_stored_before_normalisation() {
        assert_eq!(
            lookup_name(" Alice ").unwrap(),
            LookupName {
                normalised: Some("alice".into()),
                given: "Alice".into(),
            }
        );
        assert_eq!(
            lookup_name("Old Style").unwrap(),
            LookupName {
                normalised: None,
                given: "Old Style".into(),
            }
        );
        for bad in ["   ", "x\u{7}y", "a\u{202e}b", "\u{2067}admin"] {
            assert_eq!(lookup_name(bad).unwrap_err().field, "username", "{bad:?}");
        }
    }
}
