//! Zip intake: arbitrary bytes as a `.zip` upload, unpacked into a sandbox folder.
//!
//! The first byte of an input chooses the mode. Bit 0 clear: the rest is the archive itself, so
//! real zips work as seeds. Bit 0 set: the rest is a structured description of entries (names
//! built from hostile components, files, folders, links, raw Unix modes, byte patches), which
//! is written as a zip first. Bit 1 chooses `open_into` over `open_with_temp_dir`.
//!
//! After each call the target checks that nothing changed in the sandbox outside the package
//! root and that a rejected archive left nothing behind. An accepted package must contain only
//! plain files and folders without setuid, setgid or sticky bits, and dropping it must remove its
//! folder. The sandbox is nested a few folders deep, so an entry that climbed out of the root
//! with `..` would land where the check sees it.
//!
//! When the fuzzer runs as root, each intake call runs with effective uid and gid 65534
//! (`nobody`), so an escape to an absolute path fails with a permission error instead of
//! writing to the host. The sandbox is made writable for that user.

#![no_main]

use std::collections::BTreeSet;
use std::fs;
use std::io::{Cursor, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use agentrun::package::{self, IntakeLimits};
use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

/// Uid and gid that intake runs as when the fuzzer runs as root.
const UNPRIVILEGED_ID: u32 = 65534;

/// Limits small enough that fuzz inputs reach them.
const LIMITS: IntakeLimits = IntakeLimits {
    max_archive_bytes: 1024 * 1024,
    max_entries: 64,
    max_unpacked_bytes: 256 * 1024,
    max_ratio: 50,
    ratio_floor_bytes: 4096,
};

/// Name components that intake must handle: traversal, absolute and drive prefixes,
/// backslashes, macOS metadata, the `Dockerfile` itself and non-ASCII text.
const COMPONENTS: [&str; 16] = [
    "Dockerfile",
    "agent",
    ".",
    "..",
    "",
    "__MACOSX",
    ".DS_Store",
    "C:",
    "a\\..\\b",
    "é",
    "integration.toml",
    "agentrun-fuzz-canary",
    "dir with space",
    "...",
    "dockerfile",
    "x\0y",
];

#[derive(Arbitrary, Debug)]
enum NamePart {
    Component(u8),
    Text(String),
}

#[derive(Arbitrary, Debug)]
enum Kind {
    File,
    Folder,
    Symlink(String),
    /// A regular file whose central directory record is patched to carry this Unix mode,
    /// such as a FIFO, a device, a link or a setuid file.
    RawMode(u32),
}

#[derive(Arbitrary, Debug)]
struct EntryInput {
    name: Vec<NamePart>,
    kind: Kind,
    content: Vec<u8>,
    /// Repeats `content` this many times, so that highly compressible entries are common.
    repeat: u8,
    deflate: bool,
    permissions: u16,
}

#[derive(Arbitrary, Debug)]
struct Built {
    entries: Vec<EntryInput>,
    /// Byte patches `(offset, value)` applied to the finished archive.
    patches: Vec<(u16, u8)>,
}

fn entry_name(parts: &[NamePart]) -> String {
    parts
        .iter()
        .map(|part| match part {
            NamePart::Component(index) => {
                COMPONENTS[usize::from(*index) % COMPONENTS.len()].to_owned()
            }
            NamePart::Text(text) => text.clone(),
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Writes the described archive, or `None` when the zip writer refuses it.
fn build_zip(built: &Built) -> Option<Vec<u8>> {
    let mut writer = ZipWriter::new(Cursor::new(Vec::new()));
    let mut raw_modes = Vec::new();
    let mut written = 0usize;
    for entry in &built.entries {
        let name = entry_name(&entry.name);
        let method = if entry.deflate {
            CompressionMethod::Deflated
        } else {
            CompressionMethod::Stored
        };
        let options = SimpleFileOptions::default()
            .compression_method(method)
            .unix_permissions(u32::from(entry.permissions) & 0o7777);
        let result = match &entry.kind {
            Kind::Folder => writer.add_directory(name, options),
            Kind::Symlink(target) => writer.add_symlink(name, target, options),
            Kind::File | Kind::RawMode(_) => writer.start_file(name, options).and_then(|()| {
                for _ in 0..=entry.repeat {
                    writer.write_all(&entry.content)?;
                }
                Ok(())
            }),
        };
        // The writer rejects some names, such as duplicates; such an entry is left out.
        if result.is_err() {
            continue;
        }
        if let Kind::RawMode(mode) = entry.kind {
            raw_modes.push((written, mode));
        }
        written += 1;
    }
    let mut bytes = writer.finish().ok()?.into_inner();
    patch_modes(&mut bytes, &raw_modes);
    for (offset, value) in &built.patches {
        if !bytes.is_empty() {
            let index = usize::from(*offset) % bytes.len();
            bytes[index] = *value;
        }
    }
    Some(bytes)
}

/// Sets the Unix mode of central directory records by index, and marks them as made on Unix
/// so that readers use the mode.
fn patch_modes(bytes: &mut [u8], modes: &[(usize, u32)]) {
    if modes.is_empty() || bytes.len() < 22 {
        return;
    }
    let Some(end) = (0..=bytes.len() - 22)
        .rev()
        .find(|&at| bytes[at..at + 4] == [0x50, 0x4b, 0x05, 0x06])
    else {
        return;
    };
    let read_u16 =
        |bytes: &[u8], at: usize| usize::from(u16::from_le_bytes([bytes[at], bytes[at + 1]]));
    let mut record = u32::from_le_bytes([
        bytes[end + 16],
        bytes[end + 17],
        bytes[end + 18],
        bytes[end + 19],
    ]) as usize;
    let mut index = 0;
    while record + 46 <= bytes.len() && bytes[record..record + 4] == [0x50, 0x4b, 0x01, 0x02] {
        if let Some((_, mode)) = modes.iter().find(|(entry, _)| *entry == index) {
            bytes[record + 4..record + 6].copy_from_slice(&[20, 3]);
            bytes[record + 38..record + 42].copy_from_slice(&(mode << 16).to_le_bytes());
        }
        let name = read_u16(bytes, record + 28);
        let extra = read_u16(bytes, record + 30);
        let comment = read_u16(bytes, record + 32);
        record += 46 + name + extra + comment;
        index += 1;
    }
}

/// Folder under which each run makes its sandbox: `AGENTRUN_FUZZ_TMP`, else `/dev/shm` (a
/// memory file system, which keeps runs fast), else the system's temporary folder.
///
/// NOTE: this empty `agentrun-fuzz-zip-*` folder stays after the fuzzer exits, because statics
/// are never dropped; each run's own sandbox is removed.
fn sandbox_base() -> &'static Path {
    static BASE: OnceLock<PathBuf> = OnceLock::new();
    BASE.get_or_init(|| {
        let parent = std::env::var_os("AGENTRUN_FUZZ_TMP")
            .map(PathBuf::from)
            .or_else(|| Some(PathBuf::from("/dev/shm")).filter(|path| path.is_dir()))
            .unwrap_or_else(std::env::temp_dir);
        tempfile::Builder::new()
            .prefix("agentrun-fuzz-zip-")
            .tempdir_in(parent)
            .expect("create the fuzz sandbox base")
            .keep()
    })
}

fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Runs `call` with the effective uid and gid of an unprivileged user when running as root.
fn unprivileged<T>(call: impl FnOnce() -> T) -> T {
    if !running_as_root() {
        return call();
    }
    // SAFETY: plain system calls. The real and saved uid stay 0, so the effective ids can be
    // set back afterwards; the group is switched first because that needs root.
    unsafe {
        assert_eq!(libc::setegid(UNPRIVILEGED_ID), 0, "setegid");
        assert_eq!(libc::seteuid(UNPRIVILEGED_ID), 0, "seteuid");
    }
    let result = call();
    // SAFETY: as above; the saved uid 0 allows returning to root.
    unsafe {
        assert_eq!(libc::seteuid(0), 0, "seteuid back");
        assert_eq!(libc::setegid(0), 0, "setegid back");
    }
    result
}

/// Lists every path under `root` with its type, mode and size, for before and after.
fn snapshot(root: &Path) -> BTreeSet<(PathBuf, u32, u64)> {
    let mut found = BTreeSet::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(folder) = pending.pop() {
        for item in fs::read_dir(&folder).expect("read sandbox folder") {
            let path = item.expect("read sandbox entry").path();
            let metadata = fs::symlink_metadata(&path).expect("sandbox entry metadata");
            if metadata.is_dir() {
                pending.push(path.clone());
            }
            let size = if metadata.is_file() {
                metadata.len()
            } else {
                0
            };
            found.insert((path, metadata.mode(), size));
        }
    }
    found
}

/// Checks that a package root contains only plain files and folders with safe modes.
fn check_package_tree(root: &Path) {
    let canonical_root = fs::canonicalize(root).expect("package root resolves");
    for (path, mode, _) in snapshot(root) {
        let metadata = fs::symlink_metadata(&path).expect("metadata");
        let kind = metadata.file_type();
        assert!(
            kind.is_file() || kind.is_dir(),
            "{} is neither file nor folder",
            path.display()
        );
        assert_eq!(mode & 0o7000, 0, "{} has mode {mode:o}", path.display());
        if kind.is_file() {
            let permissions = metadata.permissions().mode() & 0o777;
            assert!(
                permissions == 0o644 || permissions == 0o755,
                "{} has mode {permissions:o}",
                path.display()
            );
        }
        let resolved = fs::canonicalize(&path).expect("entry resolves");
        assert!(
            resolved.starts_with(&canonical_root),
            "{} leaves the root",
            path.display()
        );
    }
    assert!(
        canonical_root.join("Dockerfile").is_file(),
        "accepted package without Dockerfile"
    );
}

fn run(archive: &[u8], into_dest: bool) {
    // The sandbox: S/a/b/c/d/{input,temp}, readable and writable by the unprivileged user.
    let sandbox = tempfile::Builder::new()
        .prefix("run-")
        .tempdir_in(sandbox_base())
        .expect("create a sandbox");
    let deep = sandbox.path().join("a/b/c/d");
    let input = deep.join("input");
    let temp = deep.join("temp");
    fs::create_dir_all(&input).expect("create input folder");
    fs::create_dir_all(&temp).expect("create temp folder");
    let zip_path = input.join("package.zip");
    fs::write(&zip_path, archive).expect("write the archive");
    for path in [sandbox.path(), &deep, &input, &temp] {
        fs::set_permissions(path, fs::Permissions::from_mode(0o777)).expect("open the sandbox");
    }
    for path in ["a", "a/b", "a/b/c"] {
        fs::set_permissions(sandbox.path().join(path), fs::Permissions::from_mode(0o755))
            .expect("open the sandbox");
    }
    let before = snapshot(sandbox.path());
    let canary = Path::new("/agentrun-fuzz-canary");
    let canary_existed = canary.exists();

    let dest = temp.join("dest");
    let opened = unprivileged(|| {
        if into_dest {
            package::open_into(&zip_path, &dest, &LIMITS)
        } else {
            package::open_with_temp_dir(&zip_path, &temp, &LIMITS)
        }
    });

    match opened {
        Err(error) => {
            assert!(!error.to_string().is_empty());
            assert_eq!(
                snapshot(sandbox.path()),
                before,
                "a rejected archive left files: {error}"
            );
        }
        Ok(package) => {
            let root = package.root().to_path_buf();
            assert!(
                root.starts_with(&temp),
                "root {} is outside the temp folder",
                root.display()
            );
            assert_eq!(package.digest().len(), 64);
            check_package_tree(&root);
            let outside: BTreeSet<_> = snapshot(sandbox.path())
                .into_iter()
                .filter(|(path, _, _)| !path.starts_with(&root))
                .collect();
            let root_entry: BTreeSet<_> = outside.difference(&before).cloned().collect();
            assert!(
                root_entry.iter().all(|(path, _, _)| path == &root),
                "intake wrote outside the package root: {root_entry:?}"
            );
            drop(package);
            if into_dest {
                fs::remove_dir_all(&dest).expect("remove the destination");
            }
            assert_eq!(
                snapshot(sandbox.path()),
                before,
                "the package folder outlived its package"
            );
        }
    }
    assert_eq!(
        canary.exists(),
        canary_existed,
        "intake wrote to {}",
        canary.display()
    );
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let into_dest = mode & 2 != 0;
    if mode & 1 == 0 {
        run(rest, into_dest);
        return;
    }
    let Ok(built) = Built::arbitrary_take_rest(Unstructured::new(rest)) else {
        return;
    };
    if let Some(archive) = build_zip(&built) {
        run(&archive, into_dest);
    }
});
