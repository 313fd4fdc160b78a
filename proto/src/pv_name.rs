//! Which names a PV may have. Shared by the brick (which refuses bad names),
//! the CSI driver and the kubectl plugin, so every layer gives the same answer.

/// Longest PV name: a Kubernetes object name (DNS-1123 subdomain).
pub const MAX_PV_NAME_LEN: usize = 253;

/// Prefix of archived PV directories; a PV cannot be named with it, so an
/// archive never collides with a live PV.
pub const ARCHIVE_PREFIX: &str = "archived-";

/// Checks a PV name against Kubernetes' object-name rules (lower-case letters,
/// digits, `-` and `.`, starting and ending with a letter or digit, at most 253
/// bytes). Those rules also keep the name a single safe path component: no
/// `/`, no NUL, never `.` or `..`. Returns what to fix.
pub fn validate_pv_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("PV name is empty".into());
    }
    if name.len() > MAX_PV_NAME_LEN {
        return Err(format!(
            "PV name is {} bytes long; at most {MAX_PV_NAME_LEN} are allowed",
            name.len()
        ));
    }
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.';
    if let Some(bad) = name.chars().find(|c| !ok_char(*c)) {
        return Err(format!(
            "PV name {name:?} contains {bad:?}; only lower-case letters, digits, '-' and '.' are allowed"
        ));
    }
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !alnum(name.chars().next()) || !alnum(name.chars().last()) {
        return Err(format!(
            "PV name {name:?} must start and end with a lower-case letter or a digit"
        ));
    }
    if name.starts_with(ARCHIVE_PREFIX) {
        return Err(format!(
            "PV name {name:?} starts with {ARCHIVE_PREFIX:?}, which is kept for archived PVs"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn kubernetes_names_pass_and_path_tricks_fail() {
        for good in ["pvc-0b6f1c2e-1234", "a", "web.data", "0"] {
            assert!(validate_pv_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "A",
            "a_b",
            "-a",
            "a-",
            "a\0b",
            ".hidden",
            "archived-x",
        ] {
            assert!(validate_pv_name(bad).is_err(), "{bad:?}");
        }
        assert!(validate_pv_name(&"a".repeat(253)).is_ok());
        assert!(validate_pv_name(&"a".repeat(254)).is_err());
    }

    proptest! {
        #[test]
        fn an_accepted_name_is_one_safe_path_component(name in "\\PC{0,40}") {
            if validate_pv_name(&name).is_ok() {
                prop_assert!(!name.contains('/') && !name.contains('\0'));
                prop_assert!(name != "." && name != "..");
                prop_assert!(name.len() <= 255);
            }
        }
    }
}
