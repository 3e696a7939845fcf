//! The error type of package intake.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// An error of package intake: a rejected package, or a failure of the engine itself.
///
/// Every variant except [`PackageError::Io`] describes a problem with the package the user
/// supplied ([`PackageError::is_invalid_input`]). Entry paths are relative to the archive or to
/// the folder that was opened, with `/` separators, as the archive or the file system stores them.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PackageError {
    /// The package path does not exist.
    #[error(
        "package {} does not exist: pass a folder that contains a Dockerfile, or a .zip of one",
        path.display()
    )]
    NotFound {
        /// The path as given.
        path: PathBuf,
    },

    /// A file or folder of the package could not be read.
    #[error("reading {} failed: check that the package is readable by agentrun", path.display())]
    Unreadable {
        /// The file or folder that could not be read.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// The path is neither a folder nor a zip archive.
    #[error(
        "{} is {found}, not a folder or a zip archive: pass a folder that contains a Dockerfile, \
         or a .zip of one",
        path.display()
    )]
    NotAPackage {
        /// The path as given.
        path: PathBuf,
        /// Description of the path, for example `a gzip file` or `a named pipe`.
        found: String,
    },

    /// The zip file is larger than [`IntakeLimits::max_archive_bytes`](super::IntakeLimits).
    #[error(
        "zip archive {} is {bytes} bytes, more than the limit of {max_archive_bytes} bytes \
         (max_archive_bytes): make the package smaller or raise the limit",
        path.display()
    )]
    ArchiveTooLarge {
        /// The zip file.
        path: PathBuf,
        /// Its size.
        bytes: u64,
        /// The limit in force.
        max_archive_bytes: u64,
    },

    /// The zip file cannot be parsed.
    #[error(
        "{} is not a valid zip archive ({reason}): create it again, for example with \
         `zip -r package.zip folder`",
        path.display()
    )]
    InvalidArchive {
        /// The zip file.
        path: PathBuf,
        /// The zip reader's error message.
        reason: String,
    },

    /// The package has more entries than [`IntakeLimits::max_entries`](super::IntakeLimits).
    #[error(
        "the package has at least {count} entries, more than the limit of {max_entries} \
         (max_entries): remove files or raise the limit"
    )]
    TooManyEntries {
        /// Entries found: the archive's total for a zip, or the count at which the walk of a
        /// folder stopped.
        count: u64,
        /// The limit in force.
        max_entries: u64,
    },

    /// The zip's central directory is larger than [`IntakeLimits::max_entries`] entries of
    /// ordinary size need, and was not read to the end.
    ///
    /// [`IntakeLimits::max_entries`]: super::IntakeLimits
    #[error(
        "the zip archive's central directory is larger than {max_directory_bytes} bytes, more \
         than {max_entries} entries (max_entries) of up to 1 KiB each need: remove files or \
         raise the limit"
    )]
    DirectoryTooLarge {
        /// Bytes the central directory may take: 1 KiB per allowed entry, plus 128 KiB.
        max_directory_bytes: u64,
        /// The entry limit in force.
        max_entries: u64,
    },

    /// An entry name is unsafe or unusable as a path.
    #[error("invalid entry name {entry:?}, which {rule}: rename or remove the entry")]
    InvalidEntryName {
        /// The name as stored (lossy UTF-8 when it is not UTF-8).
        entry: String,
        /// The rule it breaks.
        rule: NameRule,
    },

    /// Two zip entries unpack to the same path (for example `a/b` and `a/./b`), or one is a file
    /// where another needs a folder (`a` and `a/b`).
    #[error(
        "zip entries {other:?} and {entry:?} collide: they unpack to the same path, or one is a \
         file where the other needs a folder; remove or rename one"
    )]
    ConflictingEntries {
        /// The later entry.
        entry: String,
        /// The earlier entry it collides with.
        other: String,
    },

    /// The zip's central directory lists one name more than once.
    #[error("the zip archive lists the same entry name more than once: create the archive again")]
    DuplicateNames,

    /// Two zip entries share bytes of the archive, a construction only zip bombs use.
    #[error(
        "zip entries overlap in the archive, a construction only zip bombs use: create the \
         archive again"
    )]
    OverlappingEntries,

    /// The zip's local headers disagree with its central directory.
    #[error(
        "the zip archive's local headers disagree with its central directory ({reason}): create \
         the archive again"
    )]
    InconsistentHeaders {
        /// The zip reader's error message.
        reason: String,
    },

    /// A zip entry is a symbolic link. Intake does not unpack links from zips at all.
    #[error(
        "zip entry {entry:?} is a symbolic link, and links are not unpacked from zips: store the \
         file it points to instead (`zip -r` without `-y` does)"
    )]
    SymlinkInZip {
        /// The entry name.
        entry: String,
    },

    /// A symbolic link in a folder package points outside the package.
    #[error(
        "symbolic link {entry:?} points to {target:?}, outside the package: replace it with the \
         file it points to, or with a relative link to a file inside the package"
    )]
    SymlinkOutside {
        /// The link, relative to the package root.
        entry: String,
        /// The link's target as stored.
        target: String,
    },

    /// A symbolic link in a folder package points to nothing, or to a loop of links.
    #[error(
        "symbolic link {entry:?} points to {target:?}, which does not resolve to a file or \
         folder: remove the link or add its target"
    )]
    BrokenSymlink {
        /// The link, relative to the package root.
        entry: String,
        /// The link's target as stored.
        target: String,
    },

    /// An entry is a device, a named pipe, a socket or of unknown type.
    #[error(
        "entry {entry:?} is a {kind}, but a package may contain only files, folders and links \
         inside it: remove it"
    )]
    SpecialFile {
        /// The entry.
        entry: String,
        /// Its type.
        kind: SpecialKind,
    },

    /// A zip entry is encrypted.
    #[error("zip entry {entry:?} is encrypted: create the archive again without a password")]
    EncryptedEntry {
        /// The entry name.
        entry: String,
    },

    /// A zip entry uses a compression method other than stored (0) or deflate (8).
    #[error(
        "zip entry {entry:?} uses compression method {method} ({}), but only stored (0) and \
         deflate (8) are supported: create the archive again with default settings",
        zip::CompressionMethod::name_from_u16(*method)
    )]
    UnsupportedCompression {
        /// The entry name.
        entry: String,
        /// The method number from the zip header.
        method: u16,
    },

    /// The package's files add up to more than
    /// [`IntakeLimits::max_unpacked_bytes`](super::IntakeLimits).
    #[error(
        "the package's files exceed the limit of {max_unpacked_bytes} bytes (max_unpacked_bytes) \
         at entry {entry:?}: remove files or raise the limit"
    )]
    ContentTooLarge {
        /// The entry at which the total passed the limit.
        entry: String,
        /// The limit in force.
        max_unpacked_bytes: u64,
    },

    /// A zip entry expands more than [`IntakeLimits::max_ratio`](super::IntakeLimits) allows,
    /// which marks a zip bomb.
    #[error(
        "zip entry {entry:?} expands to {uncompressed_bytes} bytes or more from \
         {compressed_bytes} compressed bytes, past the ratio limit of {max_ratio}:1 (max_ratio) \
         that marks a zip bomb: store the file with less compression or raise the limit"
    )]
    RatioExceeded {
        /// The entry name.
        entry: String,
        /// Uncompressed bytes, as declared in the header or as counted when the limit was hit.
        uncompressed_bytes: u64,
        /// Compressed size from the header, which bounds the bytes the zip reader consumes.
        compressed_bytes: u64,
        /// The limit in force.
        max_ratio: u32,
    },

    /// A zip entry's data is damaged: a checksum mismatch, more data than the header declares,
    /// or an invalid deflate stream.
    #[error("zip entry {entry:?} is damaged ({reason}): create the archive again")]
    CorruptEntry {
        /// The entry name.
        entry: String,
        /// The zip reader's error message.
        reason: String,
    },

    /// The package has no `Dockerfile` where one is expected.
    #[error("{}", describe_missing_dockerfile(folder.as_deref(), found))]
    NoDockerfile {
        /// The single top-level folder that was searched, or `None` for the top level.
        folder: Option<String>,
        /// Names found where the `Dockerfile` was expected, with `/` after folders. Metadata
        /// that macOS adds (`__MACOSX/`, `.DS_Store`) is left out.
        found: Vec<String>,
    },

    /// The `Dockerfile` exists but is not a regular file.
    #[error("{entry:?} is a {kind}, but the Dockerfile must be a regular file")]
    DockerfileNotFile {
        /// Path of the `Dockerfile` entry.
        entry: String,
        /// The entry's type, such as `folder` or `symbolic link`.
        kind: &'static str,
    },

    /// An I/O operation of the engine's own file system failed, such as creating the temporary
    /// folder or writing an unpacked file. Not a problem of the package.
    #[error("{operation} failed")]
    Io {
        /// Description of the failed operation, with the path involved.
        operation: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

impl PackageError {
    /// Returns true when the package is at fault (the CLI exits with status 2), and false for
    /// failures of the engine's own file system ([`PackageError::Io`]).
    pub fn is_invalid_input(&self) -> bool {
        !matches!(self, Self::Io { .. })
    }

    /// Builds a [`PackageError::Io`] from a description of the operation and its error.
    pub(crate) fn io(operation: impl Into<String>, source: io::Error) -> Self {
        Self::Io {
            operation: operation.into(),
            source,
        }
    }
}

/// A rule that an entry name breaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NameRule {
    /// The name is empty, or only `.` and `/`.
    Empty,
    /// The name starts with `/`.
    Absolute,
    /// The name has a `..` component.
    ParentComponent,
    /// The name contains `\`, which Windows tools treat as a separator.
    Backslash,
    /// The name starts with a Windows drive letter such as `C:`.
    DriveLetter,
    /// The name contains a NUL byte.
    Nul,
    /// A component is longer than 255 bytes, the limit of common Linux file systems.
    ComponentTooLong,
    /// The name is longer than 4095 bytes, the Linux path limit.
    TooLong,
    /// The name is not valid UTF-8. Only folder packages break this rule, because the zip reader
    /// decodes names.
    NotUtf8,
}

impl fmt::Display for NameRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Empty => "is empty",
            Self::Absolute => "is an absolute path",
            Self::ParentComponent => "has a `..` component",
            Self::Backslash => "contains a backslash",
            Self::DriveLetter => "starts with a drive letter",
            Self::Nul => "contains a NUL byte",
            Self::ComponentTooLong => "has a component longer than 255 bytes",
            Self::TooLong => "is longer than 4095 bytes",
            Self::NotUtf8 => "is not valid UTF-8",
        })
    }
}

/// The type of an entry that is neither a regular file, a folder nor a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SpecialKind {
    /// A named pipe (FIFO).
    Fifo,
    /// A Unix domain socket.
    Socket,
    /// A character device.
    CharDevice,
    /// A block device.
    BlockDevice,
    /// A file type the engine does not know, with the type bits of its Unix mode.
    Unknown(u32),
}

impl fmt::Display for SpecialKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Fifo => f.write_str("named pipe"),
            Self::Socket => f.write_str("socket"),
            Self::CharDevice => f.write_str("character device"),
            Self::BlockDevice => f.write_str("block device"),
            Self::Unknown(bits) => write!(f, "file of unknown type (mode {bits:#o})"),
        }
    }
}

/// Maximum number of names that a [`PackageError::NoDockerfile`] message lists.
const MAX_LISTED_NAMES: usize = 10;

const EXPECTED_LAYOUT: &str = "expected a Dockerfile at the top level, or inside a single \
                               top-level folder (what `zip -r package.zip folder` produces)";

fn describe_missing_dockerfile(folder: Option<&str>, found: &[String]) -> String {
    let mut names: Vec<String> = found
        .iter()
        .take(MAX_LISTED_NAMES)
        .map(|name| format!("{name:?}"))
        .collect();
    if found.len() > MAX_LISTED_NAMES {
        names.push(format!("{} more", found.len() - MAX_LISTED_NAMES));
    }
    let list = names.join(", ");
    let count = found.len();
    let entries = if count == 1 { "entry" } else { "entries" };

    match (folder, count) {
        (None, 0) => format!("the package is empty; {EXPECTED_LAYOUT}"),
        (None, _) => {
            format!(
                "found {count} top-level {entries}: {list}, and no Dockerfile; {EXPECTED_LAYOUT}"
            )
        }
        (Some(folder), 0) => {
            format!("the single top-level folder {folder:?} is empty; {EXPECTED_LAYOUT}")
        }
        (Some(folder), _) => format!(
            "found a single top-level folder {folder:?} with {count} {entries}: {list}, and no \
             Dockerfile in it; {EXPECTED_LAYOUT}"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_dockerfile_lists_top_level() {
        let error = PackageError::NoDockerfile {
            folder: None,
            found: vec!["a/".into(), "b/".into(), "README.md".into()],
        };
        assert_eq!(
            error.to_string(),
            format!(
                "found 3 top-level entries: \"a/\", \"b/\", \"README.md\", and no Dockerfile; \
                 {EXPECTED_LAYOUT}"
            )
        );
    }

    #[test]
    fn missing_dockerfile_in_folder() {
        let error = PackageError::NoDockerfile {
            folder: Some("agent".into()),
            found: vec!["main.py".into()],
        };
        let message = error.to_string();
        assert!(
            message.starts_with(
                "found a single top-level folder \"agent\" with 1 entry: \"main.py\", and no \
                 Dockerfile in it; expected"
            ),
            "{message}"
        );
    }

    #[test]
    fn missing_dockerfile_list_is_capped() {
        let found: Vec<String> = (0..25).map(|i| format!("f{i}")).collect();
        let message = PackageError::NoDockerfile {
            folder: None,
            found,
        }
        .to_string();
        assert!(
            message.contains("\"f9\", 15 more, and no Dockerfile"),
            "{message}"
        );
        assert!(!message.contains("f10"), "{message}");
    }

    #[test]
    fn missing_dockerfile_in_empty_package() {
        let message = PackageError::NoDockerfile {
            folder: None,
            found: Vec::new(),
        }
        .to_string();
        assert!(
            message.starts_with("the package is empty; expected"),
            "{message}"
        );
    }

    /// Control characters in hostile names are escaped, so a message cannot rewrite a terminal.
    #[test]
    fn entry_names_are_escaped() {
        let error = PackageError::InvalidEntryName {
            entry: "a\n\u{1b}[2Jb/../x".into(),
            rule: NameRule::ParentComponent,
        };
        let message = error.to_string();
        assert!(message.contains(r#""a\n\u{1b}[2Jb/../x""#), "{message}");
        assert!(!message.contains('\n'));
    }

    #[test]
    fn invalid_name_message_names_rule() {
        let error = PackageError::InvalidEntryName {
            entry: "/etc/passwd".into(),
            rule: NameRule::Absolute,
        };
        assert_eq!(
            error.to_string(),
            "invalid entry name \"/etc/passwd\", which is an absolute path: rename or remove the \
             entry"
        );
    }

    #[test]
    fn only_io_is_not_invalid_input() {
        let io = PackageError::io("creating x", io::Error::other("disk full"));
        assert!(!io.is_invalid_input());
        assert!(PackageError::DuplicateNames.is_invalid_input());
        assert!(PackageError::Unreadable {
            path: "x".into(),
            source: io::Error::other("denied"),
        }
        .is_invalid_input());
    }

    #[test]
    fn unsupported_compression_names_method() {
        let message = PackageError::UnsupportedCompression {
            entry: "a".into(),
            method: 12,
        }
        .to_string();
        assert!(message.contains("method 12 (Bzip2)"), "{message}");
    }
}
