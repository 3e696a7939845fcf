//! Package intake: turns a folder or a `.zip` upload into a validated package folder with a
//! content digest.
//!
//! A package is the folder that contains the integration's `Dockerfile`; that folder is the
//! build context. The `Dockerfile` must be a regular file at the top level, or inside the single
//! top-level folder (what `zip -r package.zip folder` produces). macOS metadata (`__MACOSX/`,
//! `.DS_Store`) does not count when applying that rule, and anything else is rejected with a
//! message that lists what was found.
//!
//! # Folders and zips
//!
//! A folder is used in place and never copied by [`open`]. Its walk does not follow links, and
//! rejects special files and links that are absolute, resolve outside the package root or do not
//! resolve. A zip is unpacked into a private temporary folder (mode `0700`) that the returned
//! [`Package`] owns and removes when dropped; [`open_into`] unpacks into a folder that persists
//! instead. Zips may contain only regular files and folders, and intake rejects every link in a
//! zip. That is simpler to get right than checking where each link points, and costs little,
//! because `zip -r` stores the file a link points to unless it is given `-y`.
//!
//! A zip is checked entirely before the first byte is written: names, types, encryption,
//! compression methods, collisions, declared sizes and the layout rule. The limits in
//! [`IntakeLimits`] are enforced again while decompressing, because the sizes in zip headers come
//! from the uploader. Files are written with mode `0644`, or `0755` when the entry has any
//! execute bit; setuid, setgid and sticky bits are never set. Every rejection leaves nothing
//! behind: work happens in a fresh temporary folder that is removed on any error.
//!
//! # Digest
//!
//! [`Package::digest`] is a SHA-256 over the tree under the root: for every entry in path order,
//! its type, path, executable bit and contents, each length-prefixed so that two different trees
//! never produce the same byte stream. Timestamps, owners, zip entry order and whether the
//! package arrived as a folder or as a zip of that folder do not matter. Empty folders count,
//! because `COPY` reproduces them in the image.
//!
//! # Known Limitations
//!
//! A folder package is read in place, so a folder that changes during intake or after it can
//! make the digest disagree with what is later built. A file that changes between the walk and
//! the digest is detected and reported; later changes are not.

mod archive;
mod error;
mod layout;
mod limits;
mod names;
mod tree;

#[cfg(test)]
mod tests;

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use tempfile::TempDir;

pub use error::{NameRule, PackageError, SpecialKind};
pub use limits::{
    IntakeLimits, DEFAULT_MAX_ARCHIVE_BYTES, DEFAULT_MAX_ENTRIES, DEFAULT_MAX_RATIO,
    DEFAULT_MAX_UNPACKED_BYTES, DEFAULT_RATIO_FLOOR_BYTES,
};

use layout::{NodeKind, RootLocation};
use tree::Origin;

/// Prefix of the private temporary folders that hold unpacked zips.
const TEMP_PREFIX: &str = ".agentrun-package-";
/// Prefix of the staging folders that [`open_into`] renames into place.
const STAGING_PREFIX: &str = ".agentrun-unpack-";

/// A validated package: a root folder with a `Dockerfile`, and its content digest.
#[derive(Debug)]
pub struct Package {
    root: PathBuf,
    digest: String,
    name_hint: String,
    source: PackageSource,
    /// The temporary folder holding an unpacked zip, removed when the package is dropped.
    _temp: Option<TempDir>,
}

impl Package {
    /// Returns the folder that contains the `Dockerfile`: the build context.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Returns the content digest: lowercase hex SHA-256, 64 characters.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Returns a name for integrations without a manifest: the folder's name, or the zip file's
    /// name without its extension. It may contain any character a file name can.
    pub fn name_hint(&self) -> &str {
        &self.name_hint
    }

    /// Returns where the package came from.
    pub fn source(&self) -> &PackageSource {
        &self.source
    }
}

/// The origin of a package.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PackageSource {
    /// A folder, by its canonical path.
    Folder(PathBuf),
    /// A zip archive, by the path given.
    Zip(PathBuf),
}

impl PackageSource {
    /// Returns the folder or archive path.
    pub fn path(&self) -> &Path {
        match self {
            Self::Folder(path) | Self::Zip(path) => path,
        }
    }
}

/// Opens the package at `path`: a folder, used in place, or a zip archive, unpacked into a
/// private temporary folder in [`std::env::temp_dir`].
///
/// A file is taken as a zip archive when it starts with a zip signature, whatever its name.
/// The temporary folder has mode `0700`, so only the engine's own user can read the unpacked
/// files. This function blocks on file I/O, so async callers run it on a blocking thread.
///
/// # Errors
///
/// [`PackageError::Io`] when the engine cannot create or write its temporary folder, and another
/// variant, for which [`PackageError::is_invalid_input`] is true, when the package is rejected.
pub fn open(path: &Path, limits: &IntakeLimits) -> Result<Package, PackageError> {
    open_with_temp_dir(path, &std::env::temp_dir(), limits)
}

/// Like [`open`], but creates the temporary folder for a zip under `temp_parent`.
///
/// # Errors
///
/// As for [`open`].
pub fn open_with_temp_dir(
    path: &Path,
    temp_parent: &Path,
    limits: &IntakeLimits,
) -> Result<Package, PackageError> {
    let started = Instant::now();
    let package = match inspect(path, limits)? {
        Input::Folder(top) => {
            let root = folder_root(&top)?;
            let entries = tree::scan(&root, Origin::Source, limits)?;
            let digest = tree::digest(&root, &entries, Origin::Source)?;
            Package {
                root,
                digest,
                name_hint: folder_name(&top),
                source: PackageSource::Folder(top),
                _temp: None,
            }
        }
        Input::Zip(file) => {
            let temp = private_temp_dir(TEMP_PREFIX, temp_parent)?;
            archive::unpack(io::BufReader::new(file), path, temp.path(), limits)?;
            let entries = tree::scan(temp.path(), Origin::Unpacked, limits)?;
            let digest = tree::digest(temp.path(), &entries, Origin::Unpacked)?;
            Package {
                root: temp.path().to_owned(),
                digest,
                name_hint: zip_stem(path),
                source: PackageSource::Zip(path.to_owned()),
                _temp: Some(temp),
            }
        }
    };
    log_opened(&package, started);
    Ok(package)
}

/// Opens the package at `path` like [`open`], and places its root at `dest`, which persists.
///
/// `dest` must not exist, and its parent folder must. The package is unpacked (a zip) or copied
/// (a folder) into a new staging folder beside `dest`, which is renamed to `dest` once the
/// package passed every check, so `dest` never contains a partial package. The staging folder is
/// removed on any error. `dest` gets mode `0755`, because the caller's data folder is what keeps
/// other users out.
///
/// # Errors
///
/// As for [`open`], and [`PackageError::Io`] with [`io::ErrorKind::AlreadyExists`] when `dest`
/// exists.
pub fn open_into(path: &Path, dest: &Path, limits: &IntakeLimits) -> Result<Package, PackageError> {
    let started = Instant::now();
    if fs::symlink_metadata(dest).is_ok() {
        return Err(PackageError::io(
            format!("unpacking a package into {}", dest.display()),
            io::Error::new(io::ErrorKind::AlreadyExists, "the destination exists"),
        ));
    }
    let parent = match dest.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };

    let input = inspect(path, limits)?;
    let staging = private_temp_dir(STAGING_PREFIX, parent)?;
    let (name_hint, source) = match input {
        Input::Folder(top) => {
            let root = folder_root(&top)?;
            let entries = tree::scan(&root, Origin::Source, limits)?;
            tree::copy_tree(&root, &entries, staging.path())?;
            (folder_name(&top), PackageSource::Folder(top))
        }
        Input::Zip(file) => {
            archive::unpack(io::BufReader::new(file), path, staging.path(), limits)?;
            (zip_stem(path), PackageSource::Zip(path.to_owned()))
        }
    };
    let entries = tree::scan(staging.path(), Origin::Unpacked, limits)?;
    let digest = tree::digest(staging.path(), &entries, Origin::Unpacked)?;

    fs::set_permissions(staging.path(), fs::Permissions::from_mode(0o755)).map_err(|error| {
        PackageError::io(
            format!("setting the mode of {}", staging.path().display()),
            error,
        )
    })?;
    fs::rename(staging.path(), dest).map_err(|error| {
        PackageError::io(
            format!("moving {} to {}", staging.path().display(), dest.display()),
            error,
        )
    })?;
    // The folder now lives at `dest`, so the handle must not remove anything.
    let _ = staging.keep();

    let package = Package {
        root: dest.to_owned(),
        digest,
        name_hint,
        source,
        _temp: None,
    };
    log_opened(&package, started);
    Ok(package)
}

/// The package path, classified.
enum Input {
    /// A folder, by its canonical path.
    Folder(PathBuf),
    /// An open zip archive, positioned at its start.
    Zip(File),
}

/// Decides whether `path` is a folder or a zip archive, and checks the archive's size.
fn inspect(path: &Path, limits: &IntakeLimits) -> Result<Input, PackageError> {
    let metadata = fs::metadata(path).map_err(|error| match error.kind() {
        io::ErrorKind::NotFound => PackageError::NotFound {
            path: path.to_owned(),
        },
        _ => PackageError::Unreadable {
            path: path.to_owned(),
            source: error,
        },
    })?;
    if metadata.is_dir() {
        let canonical = fs::canonicalize(path).map_err(|error| PackageError::Unreadable {
            path: path.to_owned(),
            source: error,
        })?;
        return Ok(Input::Folder(canonical));
    }
    if !metadata.is_file() {
        return Err(PackageError::NotAPackage {
            path: path.to_owned(),
            found: describe_file_type(&metadata.file_type()).to_owned(),
        });
    }

    let unreadable = |error| PackageError::Unreadable {
        path: path.to_owned(),
        source: error,
    };
    let mut file = File::open(path).map_err(unreadable)?;
    // Check the opened file itself, in case the path was replaced after the first look.
    let metadata = file.metadata().map_err(unreadable)?;
    if !metadata.is_file() {
        return Err(PackageError::NotAPackage {
            path: path.to_owned(),
            found: describe_file_type(&metadata.file_type()).to_owned(),
        });
    }

    let mut head = Vec::with_capacity(HEAD_BYTES);
    (&mut file)
        .take(HEAD_BYTES as u64)
        .read_to_end(&mut head)
        .map_err(unreadable)?;
    if !is_zip_signature(&head) {
        return Err(PackageError::NotAPackage {
            path: path.to_owned(),
            found: describe_contents(&head).to_owned(),
        });
    }
    if metadata.len() > limits.max_archive_bytes {
        return Err(PackageError::ArchiveTooLarge {
            path: path.to_owned(),
            bytes: metadata.len(),
            max_archive_bytes: limits.max_archive_bytes,
        });
    }
    file.seek(SeekFrom::Start(0)).map_err(unreadable)?;
    Ok(Input::Zip(file))
}

/// Bytes read from the start of a file to recognise its format; tar's signature ends at 262.
const HEAD_BYTES: usize = 512;

fn is_zip_signature(head: &[u8]) -> bool {
    // A local file header, the end record of an empty archive, or the marker of a split archive.
    [b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08"]
        .iter()
        .any(|signature| head.starts_with(*signature))
}

fn describe_contents(head: &[u8]) -> &'static str {
    const SIGNATURES: &[(&[u8], &str)] = &[
        (b"\x1f\x8b", "a gzip file"),
        (b"BZh", "a bzip2 file"),
        (b"\xfd7zXZ\x00", "an xz file"),
        (b"\x28\xb5\x2f\xfd", "a zstd file"),
        (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
        (b"Rar!\x1a\x07", "a RAR archive"),
        (b"\x7fELF", "an ELF executable"),
        (b"MZ", "a Windows executable"),
    ];
    if head.is_empty() {
        return "an empty file";
    }
    if let Some((_, description)) = SIGNATURES
        .iter()
        .find(|(signature, _)| head.starts_with(signature))
    {
        return description;
    }
    if head.get(257..262) == Some(b"ustar".as_slice()) {
        return "a tar archive";
    }
    if !head.contains(&0) && std::str::from_utf8(head).is_ok() {
        return "a text file";
    }
    "a file without a zip signature"
}

fn describe_file_type(file_type: &fs::FileType) -> &'static str {
    if file_type.is_fifo() {
        "a named pipe"
    } else if file_type.is_socket() {
        "a socket"
    } else if file_type.is_char_device() {
        "a character device"
    } else if file_type.is_block_device() {
        "a block device"
    } else {
        "a special file"
    }
}

/// Applies the layout rule to the folder `top` and returns the package root.
fn folder_root(top: &Path) -> Result<PathBuf, PackageError> {
    let location = layout::locate_root(&list_folder(top)?, |name| list_folder(&top.join(name)))?;
    Ok(match location {
        RootLocation::Top => top.to_owned(),
        RootLocation::Folder(name) => top.join(name),
    })
}

/// Lists the entries of one folder for the layout rule, without following links.
fn list_folder(folder: &Path) -> Result<Vec<(String, NodeKind)>, PackageError> {
    let unreadable = |error| PackageError::Unreadable {
        path: folder.to_owned(),
        source: error,
    };
    let mut entries = Vec::new();
    for item in fs::read_dir(folder).map_err(unreadable)? {
        let item = item.map_err(unreadable)?;
        let file_type = item.file_type().map_err(unreadable)?;
        let kind = if file_type.is_dir() {
            NodeKind::Folder
        } else if file_type.is_file() {
            NodeKind::File
        } else if file_type.is_symlink() {
            NodeKind::Symlink
        } else {
            NodeKind::Special
        };
        entries.push((item.file_name().to_string_lossy().into_owned(), kind));
    }
    Ok(entries)
}

fn private_temp_dir(prefix: &str, parent: &Path) -> Result<TempDir, PackageError> {
    tempfile::Builder::new()
        .prefix(prefix)
        .permissions(fs::Permissions::from_mode(0o700))
        .tempdir_in(parent)
        .map_err(|error| {
            PackageError::io(
                format!("creating a temporary folder in {}", parent.display()),
                error,
            )
        })
}

fn folder_name(folder: &Path) -> String {
    folder.file_name().map_or_else(
        || "package".to_owned(),
        |name| name.to_string_lossy().into_owned(),
    )
}

fn zip_stem(path: &Path) -> String {
    path.file_stem().map_or_else(
        || "package".to_owned(),
        |stem| stem.to_string_lossy().into_owned(),
    )
}

fn log_opened(package: &Package, started: Instant) {
    tracing::debug!(
        source = %package.source.path().display(),
        root = %package.root.display(),
        digest = %package.digest,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "package opened"
    );
}
