//! Which new passwords are acceptable: the platform guide's rules or NIST's, plus a common-password check.

use std::fmt;
use std::str::FromStr;

use serde::Deserialize;
use zeroize::Zeroizing;
use zxcvbn::matching::patterns::{DictionaryPattern, MatchPattern};

/// Longest password accepted by either policy, in Unicode scalar values (ASVS 6.2.9 asks that
/// more than 128 be refusable; anything longer only costs hashing and zxcvbn time).
pub const MAX_PASSWORD_CHARS: usize = 128;

/// The special characters the platform guide accepts, exactly as listed in its regex class
/// `[!@#$%^&*(),.?":{}|<>]`. Other punctuation (`-`, `_`, `+`, space, ...) is allowed in a
/// password but does not satisfy the "special character" rule.
pub const GUIDE_SPECIALS: &str = r#"!@#$%^&*(),.?":{}|<>"#;

/// Which rule set new passwords must satisfy.
///
/// Parsed from configuration as `"guide"` or `"nist"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PasswordPolicy {
    /// The platform hardening guide: at least 12 characters with an ASCII uppercase letter
    /// (`A-Z`), an ASCII lowercase letter (`a-z`), a digit (`0-9`) and one of
    /// [`GUIDE_SPECIALS`]; at most 128 characters; not common.
    ///
    /// The guide's Python uses `\d`, which would also accept other scripts' digits; we keep the
    /// digit rule to `0-9`, like its `[A-Z]`/`[a-z]`, so a rule means the same to every client.
    #[default]
    Guide,
    /// NIST SP 800-63B rev 4 for password-only authentication: at least 15 characters, at most
    /// 128, no composition rules, not common.
    Nist,
}

/// The rule a password broke; [`PolicyRule::as_str`] names it for an API error detail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PolicyRule {
    /// Fewer characters than the policy's minimum.
    TooShort,
    /// More than [`MAX_PASSWORD_CHARS`] characters.
    TooLong,
    /// No `A-Z` (guide policy).
    MissingUppercase,
    /// No `a-z` (guide policy).
    MissingLowercase,
    /// No `0-9` (guide policy).
    MissingDigit,
    /// None of [`GUIDE_SPECIALS`] (guide policy).
    MissingSpecial,
    /// A common or easily guessed password (see [`PasswordPolicy::check`]).
    Common,
}

impl PolicyRule {
    /// A stable machine-readable name, e.g. for a gRPC `BadRequest` field violation.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::TooShort => "min_length",
            Self::TooLong => "max_length",
            Self::MissingUppercase => "uppercase",
            Self::MissingLowercase => "lowercase",
            Self::MissingDigit => "digit",
            Self::MissingSpecial => "special_character",
            Self::Common => "common_password",
        }
    }
}

impl fmt::Display for PolicyRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a password was refused. The message is meant for the end user, reads after the word
/// "password" (e.g. "must be at least 12 characters long"), and never contains the password or
/// any part of it. `Display` prefixes "password ".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("password {message}")]
pub struct PolicyViolation {
    /// Which rule failed.
    pub rule: PolicyRule,
    /// A human-readable explanation.
    pub message: String,
}

impl PolicyViolation {
    fn new(rule: PolicyRule, message: impl Into<String>) -> Self {
        Self {
            rule,
            message: message.into(),
        }
    }
}

/// The value for an unknown policy name in [`PasswordPolicy::from_str`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown password policy {0:?} (expected \"guide\" or \"nist\")")]
pub struct UnknownPolicy(pub String);

impl FromStr for PasswordPolicy {
    type Err = UnknownPolicy;

    /// Accepts the same names as the serde form, for flags and environment variables.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "guide" => Ok(Self::Guide),
            "nist" => Ok(Self::Nist),
            other => Err(UnknownPolicy(other.to_owned())),
        }
    }
}

impl PasswordPolicy {
    /// The configuration name of this policy.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Guide => "guide",
            Self::Nist => "nist",
        }
    }

    /// Minimum length in Unicode scalar values.
    pub fn min_chars(&self) -> usize {
        match self {
            Self::Guide => 12,
            Self::Nist => 15,
        }
    }

    /// Checks a new password, reporting the first rule it breaks.
    ///
    /// The password is taken exactly as sent: no trimming, no Unicode normalisation, and its
    /// length is `chars().count()`. The length and composition rules run first and cost
    /// microseconds; the common-password check runs last, only within the length limits, and
    /// costs up to about 50 ms of CPU for a long password (zxcvbn). So do not call this on an
    /// async worker: [`PasswordHasher::hash_new`](super::PasswordHasher::hash_new) runs it on
    /// the blocking pool under the hashing permits.
    ///
    /// **"Common"** means either of:
    /// 1. zxcvbn scores it 0–2, i.e. estimates it falls within its first 10^8 guesses. That
    ///    covers zxcvbn's ranked common-password list itself (case-insensitively, reversed,
    ///    with l33t substitutions such as `P@ssw0rd1234`), common words and names with a year
    ///    or digits (`Password123!`, `Welcome2024!`), repeats (`passwordpassword`), keyboard
    ///    walks and sequences (`qwertyuiopasdfg`, `123456789012345`).
    /// 2. zxcvbn scores it 3 but every letter in it lies inside one single match from zxcvbn's
    ///    ranked *passwords* list, so the rest is only digits and punctuation: a top password
    ///    padded to length, such as `Letmein12345!` or `Summer2024!!`.
    ///
    /// Score 4 (more than 10^10 estimated guesses) is accepted. Only the first
    /// [`SCORED_PREFIX_CHARS`] characters are scored: zxcvbn's cost grows quickly with length,
    /// and a password whose first 64 characters are hard to guess is not common (a longer one
    /// with a guessable 64-character prefix is refused: stricter, never weaker).
    pub fn check(&self, password: &str) -> Result<(), PolicyViolation> {
        self.check_with_context(password, &[])
    }

    /// Like [`check`](Self::check), also refusing passwords built from `context`: words the
    /// attacker knows, such as the username, e-mail address or service name (zxcvbn treats them
    /// as a top-ranked dictionary).
    pub fn check_with_context(
        &self,
        password: &str,
        context: &[&str],
    ) -> Result<(), PolicyViolation> {
        self.check_rules(password)?;
        check_not_common(password, context)
    }

    /// The cheap rules: length and (guide) composition. Microseconds; safe on an async worker.
    pub fn check_rules(&self, password: &str) -> Result<(), PolicyViolation> {
        let chars = password.chars().count();
        let min = self.min_chars();
        if chars < min {
            return Err(PolicyViolation::new(
                PolicyRule::TooShort,
                format!("must be at least {min} characters long"),
            ));
        }
        if chars > MAX_PASSWORD_CHARS {
            return Err(PolicyViolation::new(
                PolicyRule::TooLong,
                format!("must be at most {MAX_PASSWORD_CHARS} characters long"),
            ));
        }
        if *self == Self::Guide {
            if !password.chars().any(|c| c.is_ascii_uppercase()) {
                return Err(PolicyViolation::new(
                    PolicyRule::MissingUppercase,
                    "must contain an uppercase letter (A-Z)",
                ));
            }
            if !password.chars().any(|c| c.is_ascii_lowercase()) {
                return Err(PolicyViolation::new(
                    PolicyRule::MissingLowercase,
                    "must contain a lowercase letter (a-z)",
                ));
            }
            if !password.chars().any(|c| c.is_ascii_digit()) {
                return Err(PolicyViolation::new(
                    PolicyRule::MissingDigit,
                    "must contain a digit (0-9)",
                ));
            }
            if !password.chars().any(|c| GUIDE_SPECIALS.contains(c)) {
                return Err(PolicyViolation::new(
                    PolicyRule::MissingSpecial,
                    format!("must contain one of these special characters: {GUIDE_SPECIALS}"),
                ));
            }
        }
        Ok(())
    }
}

/// How many leading characters the common-password check scores (see [`PasswordPolicy::check`]).
pub const SCORED_PREFIX_CHARS: usize = 64;

/// The common-password rule alone (the expensive part of [`PasswordPolicy::check`]).
pub(super) fn check_not_common(password: &str, context: &[&str]) -> Result<(), PolicyViolation> {
    // Zeroed on drop like the `Secret` it came from (zxcvbn's own internal copies are not).
    let scored = Zeroizing::new(
        password
            .chars()
            .take(SCORED_PREFIX_CHARS)
            .collect::<String>(),
    );
    if is_common(&scored, context) {
        return Err(PolicyViolation::new(
            PolicyRule::Common,
            "is too common or too easy to guess; choose a longer, less predictable one",
        ));
    }
    Ok(())
}

/// The "common" decision documented on [`PasswordPolicy::check`].
fn is_common(password: &str, context: &[&str]) -> bool {
    let estimate = zxcvbn::zxcvbn(password, context);
    match u8::from(estimate.score()) {
        0..=2 => true,
        3 => letters_only_from_one_common_password(password, estimate.sequence()),
        _ => false,
    }
}

/// True when exactly one match from zxcvbn's ranked "passwords" list contains letters and every
/// alphabetic character of `password` lies inside it (the rest being digits, punctuation or
/// other symbols, i.e. padding).
fn letters_only_from_one_common_password(password: &str, sequence: &[zxcvbn::Match]) -> bool {
    // zxcvbn's dictionary enum lives in a private module, so it cannot be named here; its
    // `Default` is the ranked passwords list (checked by a test).
    let passwords_list = DictionaryPattern::default().dictionary_name;
    let mut common_with_letters = sequence.iter().filter(|m| match &m.pattern {
        MatchPattern::Dictionary(d) => {
            d.dictionary_name == passwords_list && m.token.chars().any(char::is_alphabetic)
        }
        _ => false,
    });
    let (Some(only), None) = (common_with_letters.next(), common_with_letters.next()) else {
        return false;
    };
    // `i..=j` are character indices (zxcvbn indexes by char, not by byte).
    password
        .chars()
        .enumerate()
        .all(|(idx, c)| !c.is_alphabetic() || only.range_inclusive().contains(&idx))
}

#[cfg(test)]
mod tests {
    use super::*;

    // ----- policy -----------------------------------------------------------------------------

    fn rule_of(policy: PasswordPolicy, pw: &str) -> Option<PolicyRule> {
        policy.check(pw).err().map(|v| v.rule)
    }

    /// A strong, non-common base used to build minimal counterexamples.
    const STRONG: &str = "Tr0ub4dor&3-horse-Battery";

    #[test]
    fn each_guide_rule_fails_with_its_own_id() {
        use PolicyRule::*;
        let g = PasswordPolicy::Guide;
        assert_eq!(rule_of(g, "Vq7#kLm2!xR"), Some(TooShort)); // 11 chars
        let long = format!("Vq7#kLm2!xR{}", "z".repeat(118)); // 129 chars
        assert_eq!(rule_of(g, &long), Some(TooLong));
        assert_eq!(rule_of(g, "vq7#klm2!xrw9"), Some(MissingUppercase));
        assert_eq!(rule_of(g, "VQ7#KLM2!XRW9"), Some(MissingLowercase));
        assert_eq!(rule_of(g, "Vqz#kLmw!xRp"), Some(MissingDigit));
        assert_eq!(rule_of(g, "Vq7-kLm2_xRw9"), Some(MissingSpecial));
        assert_eq!(rule_of(g, "Password123!"), Some(Common));
        assert_eq!(rule_of(g, "Vq7#kLm2!xRw"), None);
    }

    #[test]
    fn each_nist_rule_fails_with_its_own_id_and_no_composition() {
        use PolicyRule::*;
        let n = PasswordPolicy::Nist;
        assert_eq!(rule_of(n, "vq7#klm2!xrw9p"), Some(TooShort)); // 14
        assert_eq!(rule_of(n, &"k".repeat(129)), Some(TooLong));
        assert_eq!(rule_of(n, "passwordpassword"), Some(Common));
        // No uppercase, no digit, no special: fine under NIST.
        assert_eq!(rule_of(n, "quirky lantern vortex"), None);
    }

    #[test]
    fn rule_names_are_stable_and_distinct() {
        use PolicyRule::*;
        let all = [
            TooShort,
            TooLong,
            MissingUppercase,
            MissingLowercase,
            MissingDigit,
            MissingSpecial,
            Common,
        ];
        let names: std::collections::HashSet<_> = all.iter().map(|r| r.as_str()).collect();
        assert_eq!(names.len(), all.len());
        assert_eq!(TooShort.as_str(), "min_length");
        assert_eq!(TooLong.as_str(), "max_length");
        assert_eq!(Common.as_str(), "common_password");
    }

    #[test]
    fn guide_length_boundaries() {
        let g = PasswordPolicy::Guide;
        let twelve = "Vq7#kLm2!xRw";
        assert_eq!(twelve.chars().count(), 12);
        assert_eq!(g.check(twelve), Ok(()));
        assert_eq!(rule_of(g, &twelve[..11]), Some(PolicyRule::TooShort));
    }

    #[test]
    fn nist_length_boundaries() {
        let n = PasswordPolicy::Nist;
        let fifteen = "vq7#klm2!xrw9pz";
        assert_eq!(fifteen.chars().count(), 15);
        assert_eq!(n.check(fifteen), Ok(()));
        assert_eq!(rule_of(n, &fifteen[..14]), Some(PolicyRule::TooShort));
    }

    #[test]
    fn max_length_boundaries_and_64_accepted() {
        // The filler avoids l33t-able characters only to keep zxcvbn quick in debug builds.
        let filler = "kQwZ#rTy^uXp&mNb*vCx).Hj,Gf?Ds:Ae}Lo>Wi";
        let pad = |n: usize| -> String {
            let mut s = "Vq7#kLm2!xRw".to_owned();
            let room = n - s.chars().count();
            s.extend(filler.chars().cycle().take(room));
            s
        };
        for policy in [PasswordPolicy::Guide, PasswordPolicy::Nist] {
            let p64 = pad(64);
            assert_eq!(p64.chars().count(), 64);
            assert_eq!(
                policy.check(&p64),
                Ok(()),
                "{policy:?} must accept 64 characters"
            );
            let p128 = pad(128);
            assert_eq!(
                policy.check(&p128),
                Ok(()),
                "{policy:?} must accept 128 characters"
            );
            let p129 = pad(129);
            assert_eq!(rule_of(policy, &p129), Some(PolicyRule::TooLong));
        }
        // A multi-byte 128 is still 128.
        let wide: String = "Vq7#kLm2!xRw"
            .chars()
            .chain("é€🔒ß".chars().cycle())
            .take(128)
            .collect();
        assert!(wide.len() > 128);
        assert_eq!(PasswordPolicy::Nist.check_rules(&wide), Ok(()));
        let wider: String = wide.chars().chain(['é']).collect();
        assert_eq!(
            rule_of(PasswordPolicy::Nist, &wider),
            Some(PolicyRule::TooLong)
        );
    }

    #[test]
    fn only_the_scored_prefix_decides_common() {
        // 64 guessable characters followed by random ones: the prefix decides (stricter).
        let weak_prefix = format!("{}{}", "a".repeat(SCORED_PREFIX_CHARS), "Vq7#kLm2!xRw");
        assert_eq!(
            check_not_common(&weak_prefix, &[]).map_err(|v| v.rule),
            Err(PolicyRule::Common)
        );
        let strong_prefix = format!("Vq7#kLm2!xRw{}", "kQwZ#rTy^uXp&mNb*vCx).Hj,Gf?Ds:Ae}Lo>Wi");
        assert_eq!(check_not_common(&strong_prefix, &[]), Ok(()));
    }

    #[test]
    fn every_listed_special_satisfies_the_rule_and_others_do_not() {
        let g = PasswordPolicy::Guide;
        assert_eq!(GUIDE_SPECIALS.chars().count(), 20);
        for special in GUIDE_SPECIALS.chars() {
            let pw = format!("Vq7{special}kLm2xRwz");
            assert_eq!(g.check(&pw), Ok(()), "special {special:?} must count");
        }
        for other in [
            '-', '_', '+', '=', '~', '/', '\\', '[', ']', ';', '\'', '`', ' ', '€', '§',
        ] {
            let pw = format!("Vq7{other}kLm2xRwz");
            assert_eq!(
                rule_of(g, &pw),
                Some(PolicyRule::MissingSpecial),
                "{other:?} alone must not count as special"
            );
        }
    }

    #[test]
    fn non_ascii_counts_as_one_character_each() {
        let g = PasswordPolicy::Guide;
        // 12 scalar values, 19 bytes: 'é' and 'ß' are two bytes, '€' three, '🔒' four.
        let pw = "Vq7#kLé€ß🔒xR";
        assert_eq!(pw.chars().count(), 12);
        assert!(pw.len() > 12);
        assert_eq!(g.check(pw), Ok(()));
        // Eleven scalar values fail even though there are more than 12 bytes.
        let short = "Vq7#kLé€ß🔒x";
        assert!(short.len() >= 12);
        assert_eq!(rule_of(g, short), Some(PolicyRule::TooShort));
        // Non-ASCII letters do not satisfy the ASCII letter rules.
        assert_eq!(rule_of(g, "ÉÀq7#kLm2!xÜ").map(|r| r.as_str()), None);
        assert_eq!(
            rule_of(g, "éàq7#klm2!xü"),
            Some(PolicyRule::MissingUppercase)
        );
    }

    #[test]
    fn passwords_are_not_trimmed() {
        // 11 visible characters plus a space: 12, accepted as sent.
        let g = PasswordPolicy::Guide;
        assert_eq!(g.check(" Vq7#kLm2!xR"), Ok(()));
        assert_eq!(rule_of(g, "Vq7#kLm2!xR"), Some(PolicyRule::TooShort));
    }

    #[test]
    fn common_passwords_are_rejected() {
        let g = PasswordPolicy::Guide;
        for pw in [
            "Password123!",
            "P@ssw0rd1234",
            "P@$$w0rd1234",
            "Qwerty123456!",
            "Iloveyou123!",
            "Welcome2024!",
            "Football2023#",
            "Letmein12345!",
            "Monkey123456!",
            "Summer2024!!",
            "Passw0rd!Passw0rd!",
            "drowssaP123!",
        ] {
            assert_eq!(
                rule_of(g, pw),
                Some(PolicyRule::Common),
                "{pw} must be refused as common"
            );
        }
        let n = PasswordPolicy::Nist;
        for pw in [
            "passwordpassword",
            "password12345678",
            "qwertyuiopasdfgh",
            "123456789012345",
            "iloveyouiloveyou",
            "mustang123456789",
            "Password123!!!!!",
        ] {
            assert_eq!(
                rule_of(n, pw),
                Some(PolicyRule::Common),
                "{pw} must be refused as common"
            );
        }
    }

    #[test]
    fn strong_passwords_are_accepted() {
        let g = PasswordPolicy::Guide;
        for pw in [
            STRONG,
            "Vq7#kLm2!xRw",
            "Zq8#Lw2!Rm5@",
            "Correct-Horse-Battery-Staple-9!",
            "gR4!pelican.Mosaic",
        ] {
            assert_eq!(g.check(pw), Ok(()), "{pw} must be accepted");
        }
        let n = PasswordPolicy::Nist;
        for pw in [
            STRONG,
            "correct horse battery staple",
            "quirky lantern vortex",
            "8%2#love$5!1&7=",
        ] {
            assert_eq!(n.check(pw), Ok(()), "{pw} must be accepted");
        }
    }

    #[test]
    fn context_words_make_a_password_common() {
        let g = PasswordPolicy::Guide;
        let pw = "Portcullis2024!";
        assert_eq!(
            g.check_with_context(pw, &["portcullis"])
                .map_err(|v| v.rule),
            Err(PolicyRule::Common)
        );
    }

    #[test]
    fn zxcvbn_default_dictionary_is_the_passwords_list() {
        // `letters_only_from_one_common_password` relies on this.
        let estimate = zxcvbn::zxcvbn("letmein", &[]);
        let [m] = estimate.sequence() else {
            panic!("one match expected")
        };
        let MatchPattern::Dictionary(d) = &m.pattern else {
            panic!("dictionary match expected")
        };
        assert_eq!(
            d.dictionary_name,
            DictionaryPattern::default().dictionary_name
        );
        let estimate = zxcvbn::zxcvbn("battery", &[]);
        let [m] = estimate.sequence() else {
            panic!("one match expected")
        };
        let MatchPattern::Dictionary(d) = &m.pattern else {
            panic!("dictionary match expected")
        };
        assert_ne!(
            d.dictionary_name,
            DictionaryPattern::default().dictionary_name
        );
    }

    #[test]
    fn messages_never_contain_the_password() {
        let cases = [
            (PasswordPolicy::Guide, "Sh0rt!x"),
            (
                PasswordPolicy::Guide,
                &*format!("Vq7#kLm2!xR{}", "q".repeat(200)),
            ),
            (PasswordPolicy::Guide, "vq7#klm2!xrw9"),
            (PasswordPolicy::Guide, "VQ7#KLM2!XRW9"),
            (PasswordPolicy::Guide, "Vqz#kLmw!xRp"),
            (PasswordPolicy::Guide, "Vq7-kLm2_xRw9"),
            (PasswordPolicy::Guide, "Password123!"),
            (PasswordPolicy::Nist, "passwordpassword"),
        ];
        for (policy, pw) in cases {
            let v = policy.check(pw).expect_err("each case breaks a rule");
            assert!(
                !v.message.contains(pw),
                "message leaks the password: {}",
                v.message
            );
            assert!(!v.to_string().contains(pw));
            assert!(!format!("{v:?}").contains(pw));
            // Nor a sizeable piece of it.
            for window in pw.as_bytes().windows(6) {
                if let Ok(piece) = std::str::from_utf8(window) {
                    assert!(!v.message.contains(piece), "message leaks {piece:?}");
                }
            }
        }
    }

    #[test]
    fn odd_inputs_do_not_panic() {
        let inputs = [
            String::new(),
            "\0".repeat(20),
            "🔒".repeat(128),
            "é".repeat(200),
            "\u{202e}Vq7#kLm2!xRw\u{200d}".to_owned(),
            "a\u{0301}".repeat(40),
            "Ⅻ٣߂𝟘Vq#kLm!xRw".to_owned(),
            format!("{}Aa1!", "\u{10FFFF}".repeat(60)),
        ];
        for pw in &inputs {
            for policy in [PasswordPolicy::Guide, PasswordPolicy::Nist] {
                let _ = policy.check(pw);
            }
        }
    }

    #[test]
    fn policy_parses_from_config() {
        #[derive(Deserialize)]
        struct Section {
            policy: PasswordPolicy,
        }
        let s: Section = serde_yaml_ng::from_str("policy: nist").unwrap();
        assert_eq!(s.policy, PasswordPolicy::Nist);
        let s: Section = serde_yaml_ng::from_str("policy: guide").unwrap();
        assert_eq!(s.policy, PasswordPolicy::Guide);
        assert!(serde_yaml_ng::from_str::<Section>("policy: Guide").is_err());
        assert_eq!(PasswordPolicy::default(), PasswordPolicy::Guide);
        assert_eq!("nist".parse::<PasswordPolicy>(), Ok(PasswordPolicy::Nist));
        assert!("strict".parse::<PasswordPolicy>().is_err());
    }
}
