//! Size and count limits that package intake enforces.

use serde::{Deserialize, Serialize};

/// Default for [`IntakeLimits::max_archive_bytes`]: 100 MiB.
pub const DEFAULT_MAX_ARCHIVE_BYTES: u64 = 100 * 1024 * 1024;
/// Default for [`IntakeLimits::max_entries`].
pub const DEFAULT_MAX_ENTRIES: u64 = 10_000;
/// Default for [`IntakeLimits::max_unpacked_bytes`]: 1 GiB.
pub const DEFAULT_MAX_UNPACKED_BYTES: u64 = 1024 * 1024 * 1024;
/// Default for [`IntakeLimits::max_ratio`].
pub const DEFAULT_MAX_RATIO: u32 = 200;
/// Default for [`IntakeLimits::ratio_floor_bytes`]: 1 MiB.
pub const DEFAULT_RATIO_FLOOR_BYTES: u64 = 1024 * 1024;

/// Limits on what a package may contain, so that a hostile upload costs bounded disk and time.
///
/// Every field has a default (see the `DEFAULT_*` constants), and a configuration file may set
/// any subset of them; unknown fields are an error.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IntakeLimits {
    /// Maximum size of a `.zip` file, in bytes. Checked before any entry is read.
    /// Default 100 MiB.
    pub max_archive_bytes: u64,
    /// Maximum number of entries (files, folders and links) in a package: in a zip's central
    /// directory, or under a folder package's root. Default 10,000.
    pub max_entries: u64,
    /// Maximum total size of all files, in bytes: the uncompressed size for a zip, counted while
    /// decompressing, and the sum of file sizes for a folder. Default 1 GiB.
    pub max_unpacked_bytes: u64,
    /// Maximum ratio of uncompressed to compressed size for one zip entry; 200 means 200:1.
    /// Real files rarely pass 100:1, while zip bombs reach 1000:1. Default 200.
    pub max_ratio: u32,
    /// Zip entries whose uncompressed size is at most this many bytes are exempt from
    /// `max_ratio`, because small files of repeated bytes compress well and cost little.
    /// Default 1 MiB.
    pub ratio_floor_bytes: u64,
}

impl Default for IntakeLimits {
    fn default() -> Self {
        Self {
            max_archive_bytes: DEFAULT_MAX_ARCHIVE_BYTES,
            max_entries: DEFAULT_MAX_ENTRIES,
            max_unpacked_bytes: DEFAULT_MAX_UNPACKED_BYTES,
            max_ratio: DEFAULT_MAX_RATIO,
            ratio_floor_bytes: DEFAULT_RATIO_FLOOR_BYTES,
        }
    }
}

impl IntakeLimits {
    /// Returns true when `uncompressed` bytes from `compressed` bytes pass the ratio limit.
    pub(crate) fn ratio_exceeded(&self, uncompressed: u64, compressed: u64) -> bool {
        uncompressed > self.ratio_floor_bytes
            && u128::from(uncompressed) > u128::from(self.max_ratio) * u128::from(compressed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An empty table yields the defaults, so a configuration file may omit the section.
    #[test]
    fn limits_empty_toml_is_default() {
        let limits: IntakeLimits = toml::from_str("").expect("empty table parses");
        assert_eq!(limits, IntakeLimits::default());
    }

    /// A partial table overrides only the fields it names.
    #[test]
    fn limits_partial_toml_keeps_other_defaults() {
        let limits: IntakeLimits = toml::from_str("max_entries = 5").expect("parses");
        assert_eq!(limits.max_entries, 5);
        assert_eq!(limits.max_unpacked_bytes, DEFAULT_MAX_UNPACKED_BYTES);
    }

    /// A misspelt field is an error rather than a silently ignored setting.
    #[test]
    fn limits_unknown_field_is_rejected() {
        let error = toml::from_str::<IntakeLimits>("max_entrys = 5").expect_err("typo rejected");
        assert!(error.to_string().contains("max_entrys"), "{error}");
    }

    #[test]
    fn limits_defaults_match_constants() {
        let limits = IntakeLimits::default();
        assert_eq!(limits.max_archive_bytes, 104_857_600);
        assert_eq!(limits.max_entries, 10_000);
        assert_eq!(limits.max_unpacked_bytes, 1_073_741_824);
        assert_eq!(limits.max_ratio, 200);
        assert_eq!(limits.ratio_floor_bytes, 1_048_576);
    }

    #[test]
    fn ratio_below_floor_is_allowed() {
        let limits = IntakeLimits::default();
        assert!(!limits.ratio_exceeded(DEFAULT_RATIO_FLOOR_BYTES, 1));
        assert!(limits.ratio_exceeded(DEFAULT_RATIO_FLOOR_BYTES + 1, 1));
    }

    #[test]
    fn ratio_at_limit_is_allowed() {
        let limits = IntakeLimits::default();
        assert!(!limits.ratio_exceeded(200 * 10_000, 10_000));
        assert!(limits.ratio_exceeded(200 * 10_000 + 1, 10_000));
    }

    /// An entry that claims zero compressed bytes cannot expand past the floor.
    #[test]
    fn ratio_with_zero_compressed_bytes() {
        let limits = IntakeLimits::default();
        assert!(limits.ratio_exceeded(DEFAULT_RATIO_FLOOR_BYTES + 1, 0));
    }
}
