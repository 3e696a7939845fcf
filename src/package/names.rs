//! Validation of zip entry names, which come from the uploader and must never leave the target.

use super::error::NameRule;

/// Maximum length of one path component in bytes (`NAME_MAX` on Linux).
const MAX_COMPONENT_BYTES: usize = 255;
/// Maximum length of a whole entry name in bytes (`PATH_MAX` on Linux, less the trailing NUL).
const MAX_NAME_BYTES: usize = 4095;

/// A zip entry name, checked and reduced to its normal components.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct EntryName {
    /// The components joined with `/`, without `.` or empty components and without a trailing
    /// `/`. Empty for the archive's root folder (`./`).
    pub(super) path: String,
    /// True when the name ends with `/`, which marks a folder in zip archives.
    pub(super) trailing_slash: bool,
}

/// Checks a zip entry name and returns its normal form.
///
/// Rejects names that are absolute, have a `..` component, contain a backslash or a NUL byte,
/// start with a drive letter, or are too long for Linux. Drops `.` and empty components, so that
/// `a/./b` and `a//b` both become `a/b`; the caller detects the collisions this creates.
pub(super) fn check_entry_name(name: &str) -> Result<EntryName, NameRule> {
    let bytes = name.as_bytes();
    if bytes.is_empty() {
        return Err(NameRule::Empty);
    }
    if bytes.contains(&0) {
        return Err(NameRule::Nul);
    }
    if bytes.contains(&b'\\') {
        return Err(NameRule::Backslash);
    }
    if bytes[0] == b'/' {
        return Err(NameRule::Absolute);
    }
    if bytes.len() >= 2 && bytes[0].is_ascii_alphabetic() && bytes[1] == b':' {
        return Err(NameRule::DriveLetter);
    }
    if bytes.len() > MAX_NAME_BYTES {
        return Err(NameRule::TooLong);
    }

    let mut components = Vec::new();
    for component in name.split('/') {
        match component {
            "" | "." => {}
            ".." => return Err(NameRule::ParentComponent),
            _ if component.len() > MAX_COMPONENT_BYTES => return Err(NameRule::ComponentTooLong),
            _ => components.push(component),
        }
    }

    let trailing_slash = name.ends_with('/');
    if components.is_empty() && !trailing_slash && name != "." {
        return Err(NameRule::Empty);
    }
    Ok(EntryName {
        path: components.join("/"),
        trailing_slash,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(name: &str) -> String {
        check_entry_name(name).expect("name is valid").path
    }

    #[test]
    fn name_plain_paths_pass() {
        assert_eq!(path("Dockerfile"), "Dockerfile");
        assert_eq!(path("agent/bin/run.sh"), "agent/bin/run.sh");
        assert_eq!(path("dir with space/ü.txt"), "dir with space/ü.txt");
    }

    #[test]
    fn name_dot_and_empty_components_are_dropped() {
        assert_eq!(path("./a/./b"), "a/b");
        assert_eq!(path("a//b"), "a/b");
        assert_eq!(path("..."), "...");
        assert_eq!(path("..a/b.."), "..a/b..");
    }

    #[test]
    fn name_trailing_slash_marks_folder() {
        let name = check_entry_name("agent/").expect("valid");
        assert_eq!(name.path, "agent");
        assert!(name.trailing_slash);
        assert!(!check_entry_name("agent").expect("valid").trailing_slash);
    }

    /// `./` names the archive root, which some tools store as a folder entry.
    #[test]
    fn name_root_folder_is_empty_path() {
        let name = check_entry_name("./").expect("valid");
        assert_eq!(name.path, "");
        assert!(name.trailing_slash);
    }

    #[test]
    fn name_rules_reject() {
        let cases = [
            ("", NameRule::Empty),
            ("//", NameRule::Absolute),
            ("/etc/passwd", NameRule::Absolute),
            ("../x", NameRule::ParentComponent),
            ("a/../../x", NameRule::ParentComponent),
            ("a/..", NameRule::ParentComponent),
            ("a/../b", NameRule::ParentComponent),
            ("a\\b", NameRule::Backslash),
            ("..\\x", NameRule::Backslash),
            ("C:/x", NameRule::DriveLetter),
            ("c:x", NameRule::DriveLetter),
            ("a\0b", NameRule::Nul),
        ];
        for (name, rule) in cases {
            assert_eq!(check_entry_name(name), Err(rule), "name {name:?}");
        }
    }

    #[test]
    fn name_length_limits() {
        let component = "a".repeat(255);
        assert!(check_entry_name(&component).is_ok());
        assert_eq!(
            check_entry_name(&"a".repeat(256)),
            Err(NameRule::ComponentTooLong)
        );
        let at_limit = vec!["b"; 2048].join("/");
        assert_eq!(at_limit.len(), 4095);
        assert!(check_entry_name(&at_limit).is_ok());
        let long = vec!["b"; 2049].join("/");
        assert_eq!(check_entry_name(&long), Err(NameRule::TooLong));
    }

    /// Only a letter and a colon at the start look like a drive; elsewhere a colon is an
    /// ordinary character on Linux.
    #[test]
    fn name_colon_elsewhere_passes() {
        assert_eq!(path("ab:c/d"), "ab:c/d");
        assert_eq!(path("1:x"), "1:x");
        assert_eq!(path("x/C:y"), "x/C:y");
    }
}
