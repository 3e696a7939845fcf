//! Walking a package tree on disk: validation, the content digest, and copying.
//!
//! Both folder packages and unpacked zips end up as a tree under a root folder, and the digest is
//! always computed from that tree, so a folder and a zip of it get the same digest by
//! construction.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::error::{NameRule, PackageError, SpecialKind};
use super::limits::IntakeLimits;

/// Prefix of the digest's byte stream. Changing the stream format must change this text, so
/// that old and new digests never compare equal by accident.
const DIGEST_FORMAT: &[u8] = b"agentrun package digest v1\0";

/// Size of the buffer used to hash and copy file contents.
const BUFFER_BYTES: usize = 64 * 1024;

/// Who owns a tree, which decides how a read error is reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Origin {
    /// The user's folder: read errors are a problem of the package.
    Source,
    /// A tree the engine unpacked or copied: read errors are the engine's own.
    Unpacked,
}

impl Origin {
    fn read_error(self, path: &Path, source: io::Error) -> PackageError {
        match self {
            Self::Source => PackageError::Unreadable {
                path: path.to_owned(),
                source,
            },
            Self::Unpacked => {
                PackageError::io(format!("reading unpacked file {}", path.display()), source)
            }
        }
    }
}

/// One entry under a package root.
#[derive(Clone, Debug)]
pub(super) struct TreeEntry {
    /// Path relative to the root, with `/` separators.
    pub(super) path: String,
    pub(super) kind: TreeKind,
    /// Device and inode seen by the walk, so that a file swapped afterwards is detected.
    identity: (u64, u64),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum TreeKind {
    Folder,
    File { executable: bool, len: u64 },
    Symlink { target: PathBuf },
}

/// Walks the tree under `root` without following links, validates every entry, and returns the
/// entries sorted by path bytes.
///
/// Rejects special files, names that are not UTF-8, and symbolic links that are absolute,
/// resolve outside `root` or do not resolve at all. For [`Origin::Source`], also rejects trees
/// with more entries or file bytes than `limits` allow. An unpacked tree was counted while it
/// was written, and counting it again would add the parent folders a zip leaves implicit.
pub(super) fn scan(
    root: &Path,
    origin: Origin,
    limits: &IntakeLimits,
) -> Result<Vec<TreeEntry>, PackageError> {
    let (max_entries, max_unpacked_bytes) = match origin {
        Origin::Source => (limits.max_entries, limits.max_unpacked_bytes),
        Origin::Unpacked => (u64::MAX, u64::MAX),
    };
    let canonical_root = fs::canonicalize(root).map_err(|error| origin.read_error(root, error))?;
    let mut entries = Vec::new();
    let mut total_bytes: u64 = 0;
    let mut pending_folders = vec![String::new()];

    while let Some(folder) = pending_folders.pop() {
        let folder_path = root.join(&folder);
        let read_error = |error| origin.read_error(&folder_path, error);
        let mut listing = Vec::new();
        for item in fs::read_dir(&folder_path).map_err(read_error)? {
            listing.push(item.map_err(read_error)?);
            // Checked while listing, so a huge folder is not read into memory first.
            let count = (entries.len() + listing.len()) as u64;
            if count > max_entries {
                return Err(PackageError::TooManyEntries { count, max_entries });
            }
        }
        // Sorted, so that the same tree always reports the same first problem.
        listing.sort_by_key(|item| item.file_name());

        for item in listing {
            let name = item.file_name();
            let relative = join_relative(&folder, &name.to_string_lossy());
            if name.to_str().is_none() {
                return Err(PackageError::InvalidEntryName {
                    entry: relative,
                    rule: NameRule::NotUtf8,
                });
            }

            let path = item.path();
            let metadata =
                fs::symlink_metadata(&path).map_err(|error| origin.read_error(&path, error))?;
            let file_type = metadata.file_type();
            let kind = if file_type.is_dir() {
                pending_folders.push(relative.clone());
                TreeKind::Folder
            } else if file_type.is_file() {
                total_bytes = total_bytes.saturating_add(metadata.len());
                if total_bytes > max_unpacked_bytes {
                    return Err(PackageError::ContentTooLarge {
                        entry: relative,
                        max_unpacked_bytes,
                    });
                }
                TreeKind::File {
                    executable: metadata.permissions().mode() & 0o111 != 0,
                    len: metadata.len(),
                }
            } else if file_type.is_symlink() {
                let target = check_symlink(&path, &relative, &canonical_root, origin)?;
                TreeKind::Symlink { target }
            } else {
                return Err(PackageError::SpecialFile {
                    entry: relative,
                    kind: special_kind(&file_type, metadata.mode()),
                });
            };

            entries.push(TreeEntry {
                path: relative,
                kind,
                identity: (metadata.dev(), metadata.ino()),
            });
        }
    }

    entries.sort_by(|a, b| a.path.as_bytes().cmp(b.path.as_bytes()));
    Ok(entries)
}

/// Checks that the link at `path` resolves to an existing file or folder inside
/// `canonical_root`, and returns its target as stored.
///
/// The check resolves the link on disk rather than by text, because a chain such as
/// `a -> .` and `b -> a/..` looks harmless as text but leaves the root.
fn check_symlink(
    path: &Path,
    relative: &str,
    canonical_root: &Path,
    origin: Origin,
) -> Result<PathBuf, PackageError> {
    let target = fs::read_link(path).map_err(|error| origin.read_error(path, error))?;
    let target_text = target.to_string_lossy().into_owned();
    if target.is_absolute() {
        return Err(PackageError::SymlinkOutside {
            entry: relative.to_owned(),
            target: target_text,
        });
    }
    match fs::canonicalize(path) {
        Ok(resolved) if resolved.starts_with(canonical_root) => Ok(target),
        Ok(_) => Err(PackageError::SymlinkOutside {
            entry: relative.to_owned(),
            target: target_text,
        }),
        Err(error) if error.kind() == io::ErrorKind::PermissionDenied => {
            Err(origin.read_error(path, error))
        }
        // Not found, a loop of links, or a file used as a folder.
        Err(_) => Err(PackageError::BrokenSymlink {
            entry: relative.to_owned(),
            target: target_text,
        }),
    }
}

fn special_kind(file_type: &fs::FileType, mode: u32) -> SpecialKind {
    if file_type.is_fifo() {
        SpecialKind::Fifo
    } else if file_type.is_socket() {
        SpecialKind::Socket
    } else if file_type.is_char_device() {
        SpecialKind::CharDevice
    } else if file_type.is_block_device() {
        SpecialKind::BlockDevice
    } else {
        SpecialKind::Unknown(mode & 0o170000)
    }
}

fn join_relative(folder: &str, name: &str) -> String {
    if folder.is_empty() {
        name.to_owned()
    } else {
        format!("{folder}/{name}")
    }
}

/// Computes the package digest: lowercase hex SHA-256 over `entries` of the tree under `root`.
///
/// The hashed stream is [`DIGEST_FORMAT`] followed by the entries in path byte order. Each entry
/// is a type byte (`d` folder, `f` file, `l` symbolic link) and the path. A file adds one byte
/// for the executable bit and its contents, and a link adds its target. Every variable field is preceded
/// by its length as a big-endian `u64`, so the stream can be parsed back and two different trees
/// never produce the same stream. Timestamps, owners and permission bits other than "any execute
/// bit" do not count. Folders are entries of their own, so an empty folder changes the digest,
/// as it changes what a `COPY` instruction puts into an image.
///
/// # Errors
///
/// Read errors, and a file that changed since `entries` were collected.
pub(super) fn digest(
    root: &Path,
    entries: &[TreeEntry],
    origin: Origin,
) -> Result<String, PackageError> {
    let mut hasher = Sha256::new();
    hasher.update(DIGEST_FORMAT);
    let mut buffer = vec![0; BUFFER_BYTES];

    for entry in entries {
        match &entry.kind {
            TreeKind::Folder => {
                hasher.update(b"d");
                update_framed(&mut hasher, entry.path.as_bytes());
            }
            TreeKind::File { executable, len } => {
                hasher.update(b"f");
                update_framed(&mut hasher, entry.path.as_bytes());
                hasher.update([u8::from(*executable)]);
                hasher.update(len.to_be_bytes());
                let path = root.join(&entry.path);
                let mut file = open_scanned(&path, entry, origin)?;
                let mut hashed: u64 = 0;
                loop {
                    let read = match file.read(&mut buffer) {
                        Ok(0) => break,
                        Ok(read) => read,
                        Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                        Err(error) => return Err(origin.read_error(&path, error)),
                    };
                    hashed += read as u64;
                    if hashed > *len {
                        break;
                    }
                    hasher.update(&buffer[..read]);
                }
                if hashed != *len {
                    return Err(changed_while_reading(&path, origin));
                }
            }
            TreeKind::Symlink { target } => {
                hasher.update(b"l");
                update_framed(&mut hasher, entry.path.as_bytes());
                update_framed(&mut hasher, target.as_os_str().as_encoded_bytes());
            }
        }
    }

    Ok(hex::encode(hasher.finalize()))
}

fn update_framed(hasher: &mut Sha256, bytes: &[u8]) {
    hasher.update((bytes.len() as u64).to_be_bytes());
    hasher.update(bytes);
}

/// Opens a file that [`scan`] listed, and checks that it is still the same regular file of the
/// same length, so that a file replaced by a link after the walk is not followed.
fn open_scanned(path: &Path, entry: &TreeEntry, origin: Origin) -> Result<File, PackageError> {
    let file = File::open(path).map_err(|error| origin.read_error(path, error))?;
    let metadata = file
        .metadata()
        .map_err(|error| origin.read_error(path, error))?;
    let same_len = match entry.kind {
        TreeKind::File { len, .. } => metadata.len() == len,
        _ => false,
    };
    if !metadata.is_file() || (metadata.dev(), metadata.ino()) != entry.identity || !same_len {
        return Err(changed_while_reading(path, origin));
    }
    Ok(file)
}

fn changed_while_reading(path: &Path, origin: Origin) -> PackageError {
    origin.read_error(
        path,
        io::Error::other("the file changed while the package was read"),
    )
}

/// Copies `entries` of the tree under `root` into the empty folder `dest`, keeping the
/// executable bit and links as links.
pub(super) fn copy_tree(
    root: &Path,
    entries: &[TreeEntry],
    dest: &Path,
) -> Result<(), PackageError> {
    // Sorting by path bytes puts every folder before its contents, because a path sorts before
    // any longer path that it is a prefix of.
    for entry in entries {
        let from = root.join(&entry.path);
        let to = dest.join(&entry.path);
        match &entry.kind {
            TreeKind::Folder => fs::DirBuilder::new()
                .mode(0o755)
                .create(&to)
                .map_err(|error| {
                    PackageError::io(format!("creating folder {}", to.display()), error)
                })?,
            TreeKind::File { executable, len } => {
                let mut source = open_scanned(&from, entry, Origin::Source)?;
                let mut target = create_file(&to, *executable)?;
                let copied =
                    io::copy(&mut (&mut source).take(*len + 1), &mut target).map_err(|error| {
                        PackageError::io(
                            format!("copying {} to {}", from.display(), to.display()),
                            error,
                        )
                    })?;
                if copied != *len {
                    return Err(changed_while_reading(&from, Origin::Source));
                }
            }
            TreeKind::Symlink { target } => {
                std::os::unix::fs::symlink(target, &to).map_err(|error| {
                    PackageError::io(format!("creating link {}", to.display()), error)
                })?
            }
        }
    }
    Ok(())
}

/// Creates a new file at `path` with mode `0755` or `0644`. Never replaces an existing file.
pub(super) fn create_file(path: &Path, executable: bool) -> Result<File, PackageError> {
    let mode = if executable { 0o755 } else { 0o644 };
    let file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|error| PackageError::io(format!("creating file {}", path.display()), error))?;
    // The process umask may have cleared bits of `mode`, so set it exactly. The digest and the
    // build context then see the same executable bit everywhere.
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(|error| {
            PackageError::io(format!("setting the mode of {}", path.display()), error)
        })?;
    Ok(file)
}

/// Writes all of `bytes` to `file`, naming `path` in the error.
pub(super) fn write_all(file: &mut File, path: &Path, bytes: &[u8]) -> Result<(), PackageError> {
    file.write_all(bytes)
        .map_err(|error| PackageError::io(format!("writing {}", path.display()), error))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, path: &str, contents: &str) {
        let path = root.join(path);
        fs::create_dir_all(path.parent().expect("has parent")).expect("mkdir");
        fs::write(path, contents).expect("write");
    }

    fn tree_digest(root: &Path) -> String {
        let entries = scan(root, Origin::Source, &IntakeLimits::default()).expect("scan");
        digest(root, &entries, Origin::Source).expect("digest")
    }

    #[test]
    fn scan_lists_sorted_entries() {
        let dir = tempfile::tempdir().expect("temp dir");
        write(dir.path(), "b/z", "1");
        write(dir.path(), "a.b", "22");
        write(dir.path(), "a/y", "");
        let entries = scan(dir.path(), Origin::Source, &IntakeLimits::default()).expect("scan");
        let paths: Vec<&str> = entries.iter().map(|entry| entry.path.as_str()).collect();
        assert_eq!(paths, ["a", "a.b", "a/y", "b", "b/z"]);
        assert_eq!(
            entries[1].kind,
            TreeKind::File {
                executable: false,
                len: 2
            }
        );
        assert_eq!(entries[0].kind, TreeKind::Folder);
    }

    /// Moving bytes between a name and the contents must change the digest: with plain
    /// concatenation, file `ab` holding `c` and file `a` holding `bc` would hash alike.
    #[test]
    fn digest_framing_separates_name_and_contents() {
        let first = tempfile::tempdir().expect("temp dir");
        write(first.path(), "ab", "c");
        let second = tempfile::tempdir().expect("temp dir");
        write(second.path(), "a", "bc");
        assert_ne!(tree_digest(first.path()), tree_digest(second.path()));
    }

    /// Pins the stream format: a change to it must also change [`DIGEST_FORMAT`].
    #[test]
    fn digest_of_known_tree() {
        let dir = tempfile::tempdir().expect("temp dir");
        write(dir.path(), "Dockerfile", "FROM scratch\n");
        write(dir.path(), "bin/run", "#!/bin/sh\n");
        fs::set_permissions(
            dir.path().join("bin/run"),
            fs::Permissions::from_mode(0o755),
        )
        .expect("chmod");

        let mut expected = Vec::new();
        expected.extend_from_slice(DIGEST_FORMAT);
        expected.extend_from_slice(b"f");
        expected.extend_from_slice(&10u64.to_be_bytes());
        expected.extend_from_slice(b"Dockerfile");
        expected.push(0);
        expected.extend_from_slice(&13u64.to_be_bytes());
        expected.extend_from_slice(b"FROM scratch\n");
        expected.extend_from_slice(b"d");
        expected.extend_from_slice(&3u64.to_be_bytes());
        expected.extend_from_slice(b"bin");
        expected.extend_from_slice(b"f");
        expected.extend_from_slice(&7u64.to_be_bytes());
        expected.extend_from_slice(b"bin/run");
        expected.push(1);
        expected.extend_from_slice(&10u64.to_be_bytes());
        expected.extend_from_slice(b"#!/bin/sh\n");

        assert_eq!(
            tree_digest(dir.path()),
            hex::encode(Sha256::digest(&expected))
        );
    }

    #[test]
    fn digest_is_lowercase_hex_sha256() {
        let dir = tempfile::tempdir().expect("temp dir");
        write(dir.path(), "Dockerfile", "FROM scratch\n");
        let digest = tree_digest(dir.path());
        assert_eq!(digest.len(), 64);
        assert!(
            digest
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)),
            "{digest}"
        );
    }

    /// A file that grows after the walk is reported, not hashed with a wrong length.
    #[test]
    fn digest_detects_changed_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        write(dir.path(), "Dockerfile", "FROM scratch\n");
        let entries = scan(dir.path(), Origin::Source, &IntakeLimits::default()).expect("scan");
        write(dir.path(), "Dockerfile", "FROM scratch\nUSER nobody\n");
        match digest(dir.path(), &entries, Origin::Source) {
            Err(PackageError::Unreadable { path, .. }) => {
                assert_eq!(path, dir.path().join("Dockerfile"));
            }
            other => panic!("expected Unreadable, got {other:?}"),
        }
    }

    /// A file replaced by a link after the walk is not followed.
    #[test]
    fn digest_detects_file_swapped_for_link() {
        let dir = tempfile::tempdir().expect("temp dir");
        let outside = tempfile::tempdir().expect("temp dir");
        write(outside.path(), "secret", "FROM scratch\n");
        write(dir.path(), "Dockerfile", "FROM scratch\n");
        let entries = scan(dir.path(), Origin::Source, &IntakeLimits::default()).expect("scan");
        fs::remove_file(dir.path().join("Dockerfile")).expect("remove");
        std::os::unix::fs::symlink(outside.path().join("secret"), dir.path().join("Dockerfile"))
            .expect("symlink");
        assert!(matches!(
            digest(dir.path(), &entries, Origin::Source),
            Err(PackageError::Unreadable { .. })
        ));
    }

    #[test]
    fn copy_tree_keeps_modes_and_links() {
        let source = tempfile::tempdir().expect("temp dir");
        write(source.path(), "Dockerfile", "FROM scratch\n");
        write(source.path(), "bin/run", "#!/bin/sh\n");
        fs::set_permissions(
            source.path().join("bin/run"),
            fs::Permissions::from_mode(0o700),
        )
        .expect("chmod");
        std::os::unix::fs::symlink("bin/run", source.path().join("run")).expect("symlink");
        let entries = scan(source.path(), Origin::Source, &IntakeLimits::default()).expect("scan");

        let dest = tempfile::tempdir().expect("temp dir");
        copy_tree(source.path(), &entries, dest.path()).expect("copy");

        let mode = fs::metadata(dest.path().join("bin/run"))
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o755);
        assert_eq!(
            fs::read_link(dest.path().join("run")).expect("link"),
            Path::new("bin/run")
        );
        assert_eq!(tree_digest(source.path()), tree_digest(dest.path()));
    }
}
