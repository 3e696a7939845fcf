//! Unpacking a zip archive into an empty folder, with every check done before the first write
//! and limits enforced while decompressing.
//!
//! The work runs in three passes. The first reads only the central directory: entry count, names,
//! types, encryption, compression methods, declared sizes, collisions and the layout rule. The
//! second lets the zip reader compare local headers with the central directory and look for
//! overlapping entries. The third decompresses, counting the bytes it writes, because the sizes
//! in the headers come from the uploader.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::rc::Rc;

use zip::result::ZipError;
use zip::{CompressionMethod, ZipArchive};

use super::error::{NameRule, PackageError, SpecialKind};
use super::layout::{self, NodeKind, RootLocation};
use super::limits::IntakeLimits;
use super::names::check_entry_name;
use super::tree;

/// Size of the buffer used to decompress entries.
const BUFFER_BYTES: usize = 64 * 1024;

/// Central directory bytes allowed per entry of [`IntakeLimits::max_entries`]. A record is 46
/// bytes plus its name, extra fields and comment: an estimated 100 to 300 bytes for archives
/// that `zip -r` writes.
const DIRECTORY_BYTES_PER_ENTRY: u64 = 1024;
/// Bytes allowed on top of the per-entry budget, for finding the end of the central directory:
/// the zip reader searches the last 64 KiB, where the archive comment may be.
const DIRECTORY_BYTES_SLACK: u64 = 128 * 1024;

/// Type bits of a Unix mode, as stored in a zip entry's external attributes.
const S_IFMT: u32 = 0o170000;
const S_IFIFO: u32 = 0o010000;
const S_IFCHR: u32 = 0o020000;
const S_IFDIR: u32 = 0o040000;
const S_IFBLK: u32 = 0o060000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFSOCK: u32 = 0o140000;

/// Counts of what unpacking wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct UnpackStats {
    /// Files and folders written.
    pub(super) entries: u64,
    /// Bytes written to files.
    pub(super) bytes: u64,
}

/// An entry that passed the first pass and will be unpacked.
#[derive(Debug)]
struct PlannedEntry {
    index: usize,
    name: String,
    path: String,
    kind: PlannedKind,
    compressed_bytes: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PlannedKind {
    Folder,
    File { executable: bool },
}

/// A path that the archive creates, explicitly or as the parent of another entry.
#[derive(Debug)]
struct Slot {
    kind: PlannedKind,
    /// True when an entry names this path itself, false when it is only a parent.
    explicit: bool,
    /// The entry that created the slot, for error messages.
    name: String,
}

/// Unpacks the zip archive read from `reader` into the empty folder `dest`.
///
/// Only the package root is written: when the `Dockerfile` is inside a single top-level folder,
/// that folder's contents land directly in `dest` and anything beside it is skipped. Entries
/// under a top-level `__MACOSX/` folder are never written.
///
/// `archive_path` only names the archive in errors. On error, `dest` may hold partial files,
/// and the caller removes it.
pub(super) fn unpack<R: Read + Seek>(
    reader: R,
    archive_path: &Path,
    dest: &Path,
    limits: &IntakeLimits,
) -> Result<UnpackStats, PackageError> {
    // The zip reader parses the whole central directory before the entry count can be checked,
    // and keeps about 210 bytes of memory per record. Capping the bytes it may read caps that
    // memory too. Without the cap, zip 9.9 took about 400 MB to parse a 93 MiB archive of
    // 1.9 million empty records.
    let max_directory_bytes = limits
        .max_entries
        .saturating_mul(DIRECTORY_BYTES_PER_ENTRY)
        .saturating_add(DIRECTORY_BYTES_SLACK);
    let budget = Rc::new(ReadBudget {
        remaining: Cell::new(Some(max_directory_bytes)),
        exceeded: Cell::new(false),
    });
    let reader = BudgetReader {
        inner: reader,
        budget: Rc::clone(&budget),
    };
    let opened = ZipArchive::new(reader);
    if budget.exceeded.get() {
        return Err(PackageError::DirectoryTooLarge {
            max_directory_bytes,
            max_entries: limits.max_entries,
        });
    }
    let mut archive = opened.map_err(|error| PackageError::InvalidArchive {
        path: archive_path.to_owned(),
        reason: error.to_string(),
    })?;
    budget.remaining.set(None);

    // First pass: the central directory only.
    let count = archive.len() as u64;
    if count > limits.max_entries {
        return Err(PackageError::TooManyEntries {
            count,
            max_entries: limits.max_entries,
        });
    }
    if archive.has_duplicate_names() {
        return Err(PackageError::DuplicateNames);
    }
    let (planned, slots) = plan(&archive, archive_path, limits)?;
    let root = layout::locate_root(&top_level(&slots, ""), |folder| {
        Ok(top_level(&slots, folder))
    })?;

    // Second pass: local headers against the central directory.
    match archive.has_overlapping_entries() {
        Ok(false) => {}
        Ok(true) => return Err(PackageError::OverlappingEntries),
        Err(error) => {
            return Err(PackageError::InvalidArchive {
                path: archive_path.to_owned(),
                reason: error.to_string(),
            })
        }
    }
    archive
        .validate_header_consistency()
        .map_err(|error| PackageError::InconsistentHeaders {
            reason: error.to_string(),
        })?;

    // Third pass: decompress what lies under the root.
    let mut meter = Meter::new(limits);
    let mut stats = UnpackStats::default();
    let mut buffer = vec![0; BUFFER_BYTES];
    for entry in &planned {
        let Some(relative) = strip_root(&entry.path, &root) else {
            continue;
        };
        let target = dest.join(relative);
        match entry.kind {
            PlannedKind::Folder => create_folders(&target)?,
            PlannedKind::File { executable } => {
                if let Some(parent) = target.parent() {
                    create_folders(parent)?;
                }
                let mut file = tree::create_file(&target, executable)?;
                let mut reader = archive
                    .by_index(entry.index)
                    .map_err(|error| entry_open_error(&entry.name, error))?;
                stats.bytes += meter.copy(
                    &entry.name,
                    entry.compressed_bytes,
                    &mut reader,
                    &mut buffer,
                    |chunk| tree::write_all(&mut file, &target, chunk),
                )?;
            }
        }
        stats.entries += 1;
    }

    tracing::debug!(
        archive = %archive_path.display(),
        entries = stats.entries,
        bytes = stats.bytes,
        "zip unpacked"
    );
    Ok(stats)
}

/// Bytes a [`BudgetReader`] may still read, shared so that the caller can lift the budget after
/// the zip reader has taken ownership of the reader.
#[derive(Debug)]
struct ReadBudget {
    /// Bytes left, or `None` for no limit.
    remaining: Cell<Option<u64>>,
    /// Set once a read went past the budget.
    exceeded: Cell<bool>,
}

/// A reader that fails every read once it has read more than its budget.
struct BudgetReader<R> {
    inner: R,
    budget: Rc<ReadBudget>,
}

impl<R: Read> Read for BudgetReader<R> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        let Some(remaining) = self.budget.remaining.get() else {
            return self.inner.read(buffer);
        };
        if self.budget.exceeded.get() {
            return Err(io::Error::other("central directory read budget exceeded"));
        }
        // Asking for one byte more than the budget distinguishes "used up" from "exceeded".
        let allowed = usize::try_from(remaining.saturating_add(1))
            .unwrap_or(usize::MAX)
            .min(buffer.len());
        let read = self.inner.read(&mut buffer[..allowed])?;
        let read_bytes = read as u64;
        if read_bytes > remaining {
            self.budget.exceeded.set(true);
            return Err(io::Error::other("central directory read budget exceeded"));
        }
        self.budget.remaining.set(Some(remaining - read_bytes));
        Ok(read)
    }
}

impl<R: Seek> Seek for BudgetReader<R> {
    fn seek(&mut self, position: SeekFrom) -> io::Result<u64> {
        self.inner.seek(position)
    }
}

/// Runs the first pass over the central directory, and returns the entries to unpack in archive
/// order with the map of every path they create.
fn plan<R: Read + Seek>(
    archive: &ZipArchive<R>,
    archive_path: &Path,
    limits: &IntakeLimits,
) -> Result<(Vec<PlannedEntry>, BTreeMap<String, Slot>), PackageError> {
    let metadata = archive.metadata();
    let mut planned = Vec::with_capacity(archive.len());
    let mut slots: BTreeMap<String, Slot> = BTreeMap::new();
    let mut declared_total: u64 = 0;

    for index in 0..archive.len() {
        let entry = metadata
            .entry(index)
            .map_err(|error| PackageError::InvalidArchive {
                path: archive_path.to_owned(),
                reason: error.to_string(),
            })?;
        let name = match entry.name() {
            Ok(name) => name.into_owned(),
            Err(error) => {
                return Err(PackageError::InvalidArchive {
                    path: archive_path.to_owned(),
                    reason: format!(
                        "entry name {:?}: {error}",
                        String::from_utf8_lossy(entry.name_raw())
                    ),
                })
            }
        };
        let checked = check_entry_name(&name).map_err(|rule| PackageError::InvalidEntryName {
            entry: name.clone(),
            rule,
        })?;
        if checked.path.split('/').next() == Some(layout::MACOS_RESOURCE_FOLDER) {
            continue;
        }

        let kind = match entry.unix_mode().map_or(0, |mode| mode & S_IFMT) {
            S_IFLNK => return Err(PackageError::SymlinkInZip { entry: name }),
            S_IFDIR => PlannedKind::Folder,
            0 | S_IFREG if checked.trailing_slash => PlannedKind::Folder,
            0 | S_IFREG => PlannedKind::File {
                executable: entry.unix_mode().is_some_and(|mode| mode & 0o111 != 0),
            },
            bits => {
                return Err(PackageError::SpecialFile {
                    entry: name,
                    kind: special_kind(bits),
                })
            }
        };
        if checked.path.is_empty() {
            // `./` names the root folder, which exists already. A file cannot have that name.
            if kind == PlannedKind::Folder {
                continue;
            }
            return Err(PackageError::InvalidEntryName {
                entry: name,
                rule: NameRule::Empty,
            });
        }

        if let PlannedKind::File { .. } = kind {
            if entry.encrypted() {
                return Err(PackageError::EncryptedEntry { entry: name });
            }
            let method = entry.compression();
            if method != CompressionMethod::Stored && method != CompressionMethod::Deflated {
                return Err(PackageError::UnsupportedCompression {
                    entry: name,
                    method: u16::from(method.into_compression()),
                });
            }

            // These sizes come from the uploader, so passing here proves nothing, and the third
            // pass counts again. Checking them now rejects honest oversized archives before
            // anything is written.
            let declared = entry.size();
            declared_total = declared_total.saturating_add(declared);
            if declared_total > limits.max_unpacked_bytes {
                return Err(PackageError::ContentTooLarge {
                    entry: name,
                    max_unpacked_bytes: limits.max_unpacked_bytes,
                });
            }
            if limits.ratio_exceeded(declared, entry.compressed_size()) {
                return Err(PackageError::RatioExceeded {
                    entry: name,
                    uncompressed_bytes: declared,
                    compressed_bytes: entry.compressed_size(),
                    max_ratio: limits.max_ratio,
                });
            }
        }

        claim_path(&mut slots, &checked.path, kind, &name)?;
        planned.push(PlannedEntry {
            index,
            name,
            path: checked.path,
            kind,
            compressed_bytes: entry.compressed_size(),
        });
    }
    Ok((planned, slots))
}

/// Records that `name` creates `path` of `kind`, with its parents as folders, and rejects
/// collisions: two entries for one path, or a file where a folder is needed.
fn claim_path(
    slots: &mut BTreeMap<String, Slot>,
    path: &str,
    kind: PlannedKind,
    name: &str,
) -> Result<(), PackageError> {
    let conflict = |other: &Slot| PackageError::ConflictingEntries {
        entry: name.to_owned(),
        other: other.name.clone(),
    };

    for (end, _) in path.match_indices('/') {
        let parent = &path[..end];
        match slots.get(parent) {
            Some(slot) if slot.kind != PlannedKind::Folder => return Err(conflict(slot)),
            Some(_) => {}
            None => {
                slots.insert(
                    parent.to_owned(),
                    Slot {
                        kind: PlannedKind::Folder,
                        explicit: false,
                        name: name.to_owned(),
                    },
                );
            }
        }
    }

    match slots.get_mut(path) {
        None => {
            slots.insert(
                path.to_owned(),
                Slot {
                    kind,
                    explicit: true,
                    name: name.to_owned(),
                },
            );
            Ok(())
        }
        // A folder entry after files inside it, as some tools write them.
        Some(slot) if !slot.explicit && kind == PlannedKind::Folder => {
            slot.explicit = true;
            Ok(())
        }
        Some(slot) => Err(conflict(slot)),
    }
}

/// Lists the entries directly inside `folder` (`""` for the top level) for the layout rule.
fn top_level(slots: &BTreeMap<String, Slot>, folder: &str) -> Vec<(String, NodeKind)> {
    let prefix = if folder.is_empty() {
        String::new()
    } else {
        format!("{folder}/")
    };
    slots
        .range(prefix.clone()..)
        .take_while(|(path, _)| path.starts_with(&prefix))
        .filter_map(|(path, slot)| {
            let name = &path[prefix.len()..];
            if name.is_empty() || name.contains('/') {
                return None;
            }
            let kind = match slot.kind {
                PlannedKind::Folder => NodeKind::Folder,
                PlannedKind::File { .. } => NodeKind::File,
            };
            Some((name.to_owned(), kind))
        })
        .collect()
}

/// Returns `path` relative to the package root, or `None` when it lies outside the root or is
/// the root itself.
fn strip_root<'a>(path: &'a str, root: &RootLocation) -> Option<&'a str> {
    let prefix = root.prefix();
    if prefix.is_empty() {
        return Some(path);
    }
    path.strip_prefix(prefix)?
        .strip_prefix('/')
        .filter(|rest| !rest.is_empty())
}

fn create_folders(path: &Path) -> Result<(), PackageError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(path)
        .map_err(|error| PackageError::io(format!("creating folder {}", path.display()), error))
}

fn special_kind(type_bits: u32) -> SpecialKind {
    match type_bits {
        S_IFIFO => SpecialKind::Fifo,
        S_IFSOCK => SpecialKind::Socket,
        S_IFCHR => SpecialKind::CharDevice,
        S_IFBLK => SpecialKind::BlockDevice,
        other => SpecialKind::Unknown(other),
    }
}

fn entry_open_error(name: &str, error: ZipError) -> PackageError {
    match error {
        ZipError::CompressionMethodNotSupported(method) => PackageError::UnsupportedCompression {
            entry: name.to_owned(),
            method,
        },
        other => PackageError::CorruptEntry {
            entry: name.to_owned(),
            reason: other.to_string(),
        },
    }
}

/// Counts decompressed bytes against the limits, per entry and in total.
#[derive(Debug)]
pub(super) struct Meter<'a> {
    limits: &'a IntakeLimits,
    total_bytes: u64,
}

impl<'a> Meter<'a> {
    pub(super) fn new(limits: &'a IntakeLimits) -> Self {
        Self {
            limits,
            total_bytes: 0,
        }
    }

    /// Reads the entry `name` from `reader` to its end and hands each chunk to `write`, and
    /// returns the number of bytes read.
    ///
    /// Stops with [`PackageError::ContentTooLarge`] or [`PackageError::RatioExceeded`] before
    /// handing over the chunk that passes a limit, so at most the limit is ever written.
    /// `compressed_bytes` is the entry's compressed size from the header; the zip reader never
    /// consumes more archive bytes than that for the entry.
    pub(super) fn copy(
        &mut self,
        name: &str,
        compressed_bytes: u64,
        reader: &mut impl Read,
        buffer: &mut [u8],
        mut write: impl FnMut(&[u8]) -> Result<(), PackageError>,
    ) -> Result<u64, PackageError> {
        let mut entry_bytes: u64 = 0;
        loop {
            let read = match reader.read(buffer) {
                Ok(0) => return Ok(entry_bytes),
                Ok(read) => read,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => {
                    return Err(PackageError::CorruptEntry {
                        entry: name.to_owned(),
                        reason: error.to_string(),
                    })
                }
            };
            entry_bytes += read as u64;
            self.total_bytes += read as u64;
            if self.total_bytes > self.limits.max_unpacked_bytes {
                return Err(PackageError::ContentTooLarge {
                    entry: name.to_owned(),
                    max_unpacked_bytes: self.limits.max_unpacked_bytes,
                });
            }
            if self.limits.ratio_exceeded(entry_bytes, compressed_bytes) {
                return Err(PackageError::RatioExceeded {
                    entry: name.to_owned(),
                    uncompressed_bytes: entry_bytes,
                    compressed_bytes,
                    max_ratio: self.limits.max_ratio,
                });
            }
            write(&buffer[..read])?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget_reader(
        data: &[u8],
        budget: u64,
    ) -> (BudgetReader<io::Cursor<Vec<u8>>>, Rc<ReadBudget>) {
        let budget = Rc::new(ReadBudget {
            remaining: Cell::new(Some(budget)),
            exceeded: Cell::new(false),
        });
        let reader = BudgetReader {
            inner: io::Cursor::new(data.to_vec()),
            budget: Rc::clone(&budget),
        };
        (reader, budget)
    }

    /// Reading exactly the budget and then hitting the end is not an overrun.
    #[test]
    fn budget_reader_allows_exact_budget() {
        let (mut reader, budget) = budget_reader(&[1; 10], 10);
        let mut out = Vec::new();
        reader.read_to_end(&mut out).expect("within budget");
        assert_eq!(out.len(), 10);
        assert!(!budget.exceeded.get());
    }

    #[test]
    fn budget_reader_fails_past_budget() {
        let (mut reader, budget) = budget_reader(&[1; 11], 10);
        let mut out = Vec::new();
        reader.read_to_end(&mut out).expect_err("past budget");
        assert!(budget.exceeded.get());
        assert!(out.len() <= 10, "{} bytes handed out", out.len());
        reader.read(&mut [0; 4]).expect_err("stays failed");
    }

    /// Once the budget is lifted, reads pass through without counting.
    #[test]
    fn budget_reader_lifted_budget_is_unlimited() {
        let (mut reader, budget) = budget_reader(&[1; 100], 10);
        budget.remaining.set(None);
        let mut out = Vec::new();
        reader.read_to_end(&mut out).expect("no budget");
        assert_eq!(out.len(), 100);
    }
}
