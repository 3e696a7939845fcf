//! Intake tests against real folders in temporary directories and real zip archives, built with
//! the `zip` crate's writer or, for archives it refuses to write, byte by byte.

mod raw_zip;

use std::cell::Cell;
use std::fs;
use std::io::{self, Cursor, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use tempfile::TempDir;
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, DateTime, ZipWriter};

use super::archive::{self, Meter};
use super::*;
use raw_zip::RawEntry;

const DOCKERFILE: &[u8] = b"FROM scratch\nENTRYPOINT [\"/agent\"]\n";

/// A scratch area: `inputs/` for packages, `tmp/` as the parent of temporary folders and `data/`
/// as the parent of persistent ones. Tests check that `tmp/` and `data/` stay empty after a
/// rejection.
struct Setup {
    dir: TempDir,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("create scratch dir");
        for folder in ["inputs", "tmp", "data"] {
            fs::create_dir(dir.path().join(folder)).expect("create scratch folder");
        }
        Self { dir }
    }

    fn input(&self, name: &str) -> PathBuf {
        self.dir.path().join("inputs").join(name)
    }

    fn write_input(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.input(name);
        fs::write(&path, bytes).expect("write input");
        path
    }

    fn temp_parent(&self) -> PathBuf {
        self.dir.path().join("tmp")
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Opens `path` with a temporary folder under `tmp/`.
    fn open(&self, path: &Path) -> Result<Package, PackageError> {
        open_with_temp_dir(path, &self.temp_parent(), &IntakeLimits::default())
    }

    /// Opens `path` through both entry points, expects both to reject it with the same error,
    /// checks that neither left anything behind, and returns the error.
    fn reject(&self, path: &Path, limits: &IntakeLimits) -> PackageError {
        let in_temp = open_with_temp_dir(path, &self.temp_parent(), limits)
            .expect_err("package must be rejected");
        assert_empty(&self.temp_parent());

        let into = open_into(path, &self.data().join("package"), limits)
            .expect_err("package must be rejected");
        assert_empty(&self.data());

        assert_eq!(in_temp.to_string(), into.to_string());
        assert!(into.is_invalid_input(), "{into:?}");
        into
    }

    /// Like [`Setup::reject`] for a zip archive given as bytes.
    fn reject_zip(&self, bytes: &[u8], limits: &IntakeLimits) -> PackageError {
        let path = self.write_input("package.zip", bytes);
        self.reject(&path, limits)
    }
}

fn assert_empty(folder: &Path) {
    let names: Vec<String> = fs::read_dir(folder)
        .expect("list folder")
        .map(|item| {
            item.expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert!(names.is_empty(), "{} holds {names:?}", folder.display());
}

fn write_file(root: &Path, path: &str, contents: &[u8]) {
    let path = root.join(path);
    fs::create_dir_all(path.parent().expect("has parent")).expect("create parents");
    fs::write(path, contents).expect("write file");
}

fn set_mode(root: &Path, path: &str, mode: u32) {
    fs::set_permissions(root.join(path), fs::Permissions::from_mode(mode)).expect("chmod");
}

fn mode_of(path: &Path) -> u32 {
    fs::symlink_metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o7777
}

/// Writes a small valid package: a Dockerfile, an executable agent and a data file in a
/// subfolder.
fn sample_folder(root: &Path) {
    write_file(root, "Dockerfile", DOCKERFILE);
    write_file(
        root,
        "agent.sh",
        b"#!/bin/sh\necho '{\"type\":\"heartbeat\"}'\n",
    );
    set_mode(root, "agent.sh", 0o755);
    write_file(root, "data/config.json", b"{\"a\": 1}\n");
}

/// One entry for [`zip_of`].
enum Item<'a> {
    File(&'a str, &'a [u8], u32),
    Folder(&'a str),
    Link(&'a str, &'a str),
}

fn options() -> SimpleFileOptions {
    SimpleFileOptions::default()
        .compression_method(CompressionMethod::Deflated)
        .last_modified_time(DateTime::default())
}

/// Builds a zip archive with the `zip` crate's writer.
fn zip_of(items: &[Item<'_>]) -> Vec<u8> {
    zip_with(items, options())
}

fn zip_with(items: &[Item<'_>], options: SimpleFileOptions) -> Vec<u8> {
    let mut writer = ZipWriter::new(Cursor::new(Vec::new()));
    for item in items {
        match item {
            Item::File(name, contents, mode) => {
                writer
                    .start_file(*name, options.unix_permissions(*mode))
                    .expect("start file");
                writer.write_all(contents).expect("write entry");
            }
            Item::Folder(name) => writer.add_directory(*name, options).expect("add folder"),
            Item::Link(name, target) => writer
                .add_symlink(*name, *target, options)
                .expect("add link"),
        }
    }
    writer.finish().expect("finish zip").into_inner()
}

/// Zips the tree under `root` like `zip -r`, with every name under `prefix`, entries in path
/// order or reversed, and every timestamp set to `time`.
fn zip_folder(root: &Path, prefix: &str, reversed: bool, time: DateTime) -> Vec<u8> {
    let mut paths = Vec::new();
    collect_paths(root, Path::new(""), &mut paths);
    paths.sort();
    if reversed {
        paths.reverse();
    }

    let options = options().last_modified_time(time);
    let mut writer = ZipWriter::new(Cursor::new(Vec::new()));
    for relative in paths {
        let full = root.join(&relative);
        let name = format!("{prefix}{}", relative.display());
        let metadata = fs::symlink_metadata(&full).expect("metadata");
        let mode = metadata.permissions().mode() & 0o777;
        if metadata.is_dir() {
            writer
                .add_directory(format!("{name}/"), options.unix_permissions(mode))
                .expect("add folder");
        } else {
            writer
                .start_file(name, options.unix_permissions(mode))
                .expect("start file");
            writer
                .write_all(&fs::read(&full).expect("read"))
                .expect("write entry");
        }
    }
    writer.finish().expect("finish zip").into_inner()
}

fn collect_paths(root: &Path, relative: &Path, out: &mut Vec<PathBuf>) {
    for item in fs::read_dir(root.join(relative)).expect("list") {
        let item = item.expect("entry");
        let path = relative.join(item.file_name());
        let is_dir = item.file_type().expect("type").is_dir();
        out.push(path.clone());
        if is_dir {
            collect_paths(root, &path, out);
        }
    }
}

fn limits_with(update: impl FnOnce(&mut IntakeLimits)) -> IntakeLimits {
    let mut limits = IntakeLimits::default();
    update(&mut limits);
    limits
}

// ---------------------------------------------------------------------------------------------
// Layout, folders

/// A folder with a top-level Dockerfile is its own root and is used in place.
#[test]
fn folder_top_level_dockerfile_is_root() {
    let setup = Setup::new();
    let folder = setup.input("echo-agent");
    sample_folder(&folder);

    let package = setup.open(&folder).expect("valid package");

    let canonical = fs::canonicalize(&folder).expect("canonical");
    assert_eq!(package.root(), canonical);
    assert_eq!(package.source(), &PackageSource::Folder(canonical));
    assert_eq!(package.name_hint(), "echo-agent");
    assert_eq!(package.digest().len(), 64);
    assert_empty(&setup.temp_parent());
}

#[test]
fn folder_single_subfolder_is_root() {
    let setup = Setup::new();
    let outer = setup.input("upload");
    sample_folder(&outer.join("agent"));
    write_file(&outer, ".DS_Store", b"\0\0\0\x01Bud1");
    write_file(&outer, "__MACOSX/agent/._Dockerfile", b"\0\x05\x16\x07");

    let package = setup.open(&outer).expect("valid package");

    assert_eq!(
        package.root(),
        fs::canonicalize(&outer).expect("canonical").join("agent")
    );
    assert_eq!(package.name_hint(), "upload");
}

#[test]
fn folder_without_dockerfile_lists_entries() {
    let setup = Setup::new();
    let folder = setup.input("mixed");
    write_file(&folder, "a/x", b"1");
    write_file(&folder, "b/y", b"2");
    write_file(&folder, "README.md", b"hello");

    match setup.reject(&folder, &IntakeLimits::default()) {
        PackageError::NoDockerfile { folder, found } => {
            assert_eq!(folder, None);
            assert_eq!(found, ["README.md", "a/", "b/"]);
        }
        other => panic!("expected NoDockerfile, got {other:?}"),
    }
}

#[test]
fn folder_message_says_found_and_expected() {
    let setup = Setup::new();
    let folder = setup.input("mixed");
    write_file(&folder, "a/x", b"1");
    write_file(&folder, "b/y", b"2");
    write_file(&folder, "README.md", b"hello");

    let message = setup.reject(&folder, &IntakeLimits::default()).to_string();

    assert!(
        message.starts_with(
            "found 3 top-level entries: \"README.md\", \"a/\", \"b/\", and no Dockerfile; \
             expected a Dockerfile at the top level, or inside a single top-level folder"
        ),
        "{message}"
    );
}

#[test]
fn folder_subfolder_without_dockerfile() {
    let setup = Setup::new();
    let folder = setup.input("outer");
    write_file(&folder, "agent/main.py", b"print()");

    match setup.reject(&folder, &IntakeLimits::default()) {
        PackageError::NoDockerfile { folder, found } => {
            assert_eq!(folder.as_deref(), Some("agent"));
            assert_eq!(found, ["main.py"]);
        }
        other => panic!("expected NoDockerfile, got {other:?}"),
    }
}

#[test]
fn folder_dockerfile_folder_is_rejected() {
    let setup = Setup::new();
    let folder = setup.input("pkg");
    write_file(&folder, "Dockerfile/inner", b"FROM scratch\n");

    match setup.reject(&folder, &IntakeLimits::default()) {
        PackageError::DockerfileNotFile { entry, kind } => {
            assert_eq!(entry, "Dockerfile");
            assert_eq!(kind, "folder");
        }
        other => panic!("expected DockerfileNotFile, got {other:?}"),
    }
}

/// A Dockerfile that is a link is rejected even when it points inside the package.
#[test]
fn folder_dockerfile_link_is_rejected() {
    let setup = Setup::new();
    let folder = setup.input("pkg");
    write_file(&folder, "real.Dockerfile", DOCKERFILE);
    symlink("real.Dockerfile", folder.join("Dockerfile")).expect("symlink");

    match setup.reject(&folder, &IntakeLimits::default()) {
        PackageError::DockerfileNotFile { entry, kind } => {
            assert_eq!(entry, "Dockerfile");
            assert_eq!(kind, "symbolic link");
        }
        other => panic!("expected DockerfileNotFile, got {other:?}"),
    }
}

#[test]
fn folder_empty_is_rejected() {
    let setup = Setup::new();
    let folder = setup.input("empty");
    fs::create_dir(&folder).expect("mkdir");

    match setup.reject(&folder, &IntakeLimits::default()) {
        PackageError::NoDockerfile { folder, found } => {
            assert_eq!(folder, None);
            assert!(found.is_empty());
        }
        other => panic!("expected NoDockerfile, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Folders: links, special files, names and limits

#[test]
fn folder_link_inside_is_kept() {
    let setup = Setup::new();
    let folder = setup.input("pkg");
    sample_folder(&folder);
    symlink("data/config.json", folder.join("config.json")).expect("symlink");
    symlink("data", folder.join("data-link")).expect("symlink");

    let package = setup
        .open(&folder)
        .expect("links inside the package are allowed");

    assert_eq!(
        fs::read_link(package.root().join("config.json")).expect("still a link"),
        Path::new("data/config.json")
    );
}

#[test]
fn folder_absolute_link_is_rejected() {
    let setup = Setup::new();
    let folder = setup.input("pkg");
    sample_folder(&folder);
    symlink("/etc/passwd", folder.join("data/passwd")).expect("symlink");

    match setup.reject(&folder, &IntakeLimits::default()) {
        PackageError::SymlinkOutside { entry, target } => {
            assert_eq!(entry, "data/passwd");
            assert_eq!(target, "/etc/passwd");
        }
        other => panic!("expected SymlinkOutside, got {other:?}"),
    }
}

#[test]
fn folder_relative_link_outside_is_rejected() {
    let setup = Setup::new();
    let folder = setup.input("pkg");
    sample_folder(&folder);
    write_file(&setup.input(""), "secret", b"token");
    symlink("../../secret", folder.join("data/secret")).expect("symlink");

    match setup.reject(&folder, &IntakeLimits::default()) {
        PackageError::SymlinkOutside { entry, target } => {
            assert_eq!(entry, "data/secret");
            assert_eq!(target, "../../secret");
        }
        other => panic!("expected SymlinkOutside, got {other:?}"),
    }
}

/// `up -> .` and `escape -> up/..` each look harmless as text, but `escape` resolves to the
/// package's parent folder.
#[test]
fn folder_link_chain_outside_is_rejected() {
    let setup = Setup::new();
    let folder = setup.input("pkg");
    sample_folder(&folder);
    symlink(".", folder.join("up")).expect("symlink");
    symlink("up/..", folder.join("escape")).expect("symlink");

    match setup.reject(&folder, &IntakeLimits::default()) {
        PackageError::SymlinkOutside { entry, target } => {
            assert_eq!(entry, "escape");
            assert_eq!(target, "up/..");
        }
        other => panic!("expected SymlinkOutside, got {other:?}"),
    }
}

#[test]
fn folder_dangling_link_is_rejected() {
    let setup = Setup::new();
    let folder = setup.input("pkg");
    sample_folder(&folder);
    symlink("missing.txt", folder.join("data/link")).expect("symlink");

    match setup.reject(&folder, &IntakeLimits::default()) {
        PackageError::BrokenSymlink { entry, target } => {
            assert_eq!(entry, "data/link");
            assert_eq!(target, "missing.txt");
        }
        other => panic!("expected BrokenSymlink, got {other:?}"),
    }
}

#[test]
fn folder_link_loop_is_rejected() {
    let setup = Setup::new();
    let folder = setup.input("pkg");
    sample_folder(&folder);
    symlink("b", folder.join("a")).expect("symlink");
    symlink("a", folder.join("b")).expect("symlink");

    match setup.reject(&folder, &IntakeLimits::default()) {
        PackageError::BrokenSymlink { entry, .. } => assert_eq!(entry, "a"),
        other => panic!("expected BrokenSymlink, got {other:?}"),
    }
}

#[test]
fn folder_socket_is_rejected() {
    let setup = Setup::new();
    let folder = setup.input("pkg");
    sample_folder(&folder);
    let _listener =
        std::os::unix::net::UnixListener::bind(folder.join("data/agent.sock")).expect("bind");

    match setup.reject(&folder, &IntakeLimits::default()) {
        PackageError::SpecialFile { entry, kind } => {
            assert_eq!(entry, "data/agent.sock");
            assert_eq!(kind, SpecialKind::Socket);
        }
        other => panic!("expected SpecialFile, got {other:?}"),
    }
}

#[test]
fn folder_non_utf8_name_is_rejected() {
    use std::os::unix::ffi::OsStrExt;

    let setup = Setup::new();
    let folder = setup.input("pkg");
    sample_folder(&folder);
    let name = std::ffi::OsStr::from_bytes(b"caf\xe9.txt");
    fs::write(folder.join("data").join(name), b"latin-1").expect("write");

    match setup.reject(&folder, &IntakeLimits::default()) {
        PackageError::InvalidEntryName { entry, rule } => {
            assert_eq!(entry, "data/caf\u{fffd}.txt");
            assert_eq!(rule, NameRule::NotUtf8);
        }
        other => panic!("expected InvalidEntryName, got {other:?}"),
    }
}

#[test]
fn folder_entry_limit() {
    let setup = Setup::new();
    let folder = setup.input("pkg");
    sample_folder(&folder); // 4 entries: Dockerfile, agent.sh, data/, data/config.json

    let at_limit = limits_with(|limits| limits.max_entries = 4);
    open_with_temp_dir(&folder, &setup.temp_parent(), &at_limit).expect("4 entries pass");

    let below = limits_with(|limits| limits.max_entries = 3);
    match setup.reject(&folder, &below) {
        PackageError::TooManyEntries { count, max_entries } => {
            assert_eq!(count, 4);
            assert_eq!(max_entries, 3);
        }
        other => panic!("expected TooManyEntries, got {other:?}"),
    }
}

#[test]
fn folder_size_limit() {
    let setup = Setup::new();
    let folder = setup.input("pkg");
    write_file(&folder, "Dockerfile", DOCKERFILE);
    write_file(&folder, "blob", &[7; 4096]);

    let limits = limits_with(|limits| limits.max_unpacked_bytes = 4096);
    match setup.reject(&folder, &limits) {
        PackageError::ContentTooLarge {
            max_unpacked_bytes, ..
        } => assert_eq!(max_unpacked_bytes, 4096),
        other => panic!("expected ContentTooLarge, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Inputs that are not packages

#[test]
fn missing_path_is_not_found() {
    let setup = Setup::new();
    let path = setup.input("nope.zip");
    match setup.reject(&path, &IntakeLimits::default()) {
        PackageError::NotFound { path: reported } => assert_eq!(reported, path),
        other => panic!("expected NotFound, got {other:?}"),
    }
}

/// The extension does not decide: a text file named `.zip` is rejected, and the error names
/// what the file is.
#[test]
fn non_zip_files_are_described() {
    let mut tar_header = vec![0; 512];
    tar_header[257..262].copy_from_slice(b"ustar");
    let cases: [(&[u8], &str); 5] = [
        (b"FROM scratch\n", "a text file"),
        (b"\x1f\x8b\x08\x00rest", "a gzip file"),
        (b"", "an empty file"),
        (&tar_header, "a tar archive"),
        (b"\x00\x01\x02\xff", "a file without a zip signature"),
    ];
    let setup = Setup::new();
    for (bytes, expected) in cases {
        let path = setup.write_input("package.zip", bytes);
        match setup.reject(&path, &IntakeLimits::default()) {
            PackageError::NotAPackage { found, .. } => assert_eq!(found, expected),
            other => panic!("expected NotAPackage, got {other:?}"),
        }
    }
}

#[test]
fn socket_path_is_not_a_package() {
    let setup = Setup::new();
    let path = setup.input("package.zip");
    let _listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
    match setup.reject(&path, &IntakeLimits::default()) {
        PackageError::NotAPackage { found, .. } => assert_eq!(found, "a socket"),
        other => panic!("expected NotAPackage, got {other:?}"),
    }
}

/// The zip signature decides, whatever the name.
#[test]
fn zip_without_extension_is_opened() {
    let setup = Setup::new();
    let path = setup.write_input(
        "upload.bin",
        &zip_of(&[Item::File("Dockerfile", DOCKERFILE, 0o644)]),
    );
    let package = setup.open(&path).expect("valid package");
    assert_eq!(package.name_hint(), "upload");
    assert_eq!(package.source(), &PackageSource::Zip(path));
}

// ---------------------------------------------------------------------------------------------
// Layout, zips

#[test]
fn zip_top_level_dockerfile() {
    let setup = Setup::new();
    let path = setup.write_input(
        "echo.zip",
        &zip_of(&[
            Item::File("Dockerfile", DOCKERFILE, 0o644),
            Item::File("bin/agent", b"#!/bin/sh\n", 0o755),
        ]),
    );

    let package = setup.open(&path).expect("valid package");

    assert_eq!(
        fs::read(package.root().join("Dockerfile")).expect("read"),
        DOCKERFILE
    );
    assert_eq!(package.name_hint(), "echo");
    assert!(package.root().starts_with(setup.temp_parent()));
    assert_eq!(mode_of(package.root()), 0o700);

    let root = package.root().to_owned();
    drop(package);
    assert!(!root.exists(), "dropping the package removes its folder");
    assert_empty(&setup.temp_parent());
}

/// What `zip -r package.zip mydir` produces, plus the metadata macOS adds: the root is `mydir`,
/// and nothing beside it is unpacked.
#[test]
fn zip_single_top_level_folder() {
    let setup = Setup::new();
    let path = setup.write_input(
        "package.zip",
        &zip_of(&[
            Item::Folder("mydir/"),
            Item::File("mydir/Dockerfile", DOCKERFILE, 0o644),
            Item::File("mydir/src/main.py", b"print()\n", 0o644),
            Item::File(".DS_Store", b"\0\0\0\x01Bud1", 0o644),
            Item::File("__MACOSX/mydir/._Dockerfile", b"\0\x05\x16\x07", 0o644),
        ]),
    );

    let package = setup.open(&path).expect("valid package");

    let mut names: Vec<String> = fs::read_dir(package.root())
        .expect("list root")
        .map(|item| {
            item.expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    assert_eq!(names, ["Dockerfile", "src"]);
    assert_eq!(package.root(), package._temp.as_ref().expect("temp").path());
}

/// `__MACOSX/` at the top of a package is never unpacked, also beside a top-level Dockerfile.
#[test]
fn zip_macos_resource_folder_is_skipped() {
    let setup = Setup::new();
    let path = setup.write_input(
        "package.zip",
        &zip_of(&[
            Item::File("Dockerfile", DOCKERFILE, 0o644),
            Item::File("__MACOSX/._Dockerfile", b"\0\x05\x16\x07", 0o644),
        ]),
    );
    let package = setup.open(&path).expect("valid package");
    assert!(!package.root().join("__MACOSX").exists());
}

#[test]
fn zip_two_top_level_folders_are_rejected() {
    let setup = Setup::new();
    let bytes = zip_of(&[
        Item::File("a/Dockerfile", DOCKERFILE, 0o644),
        Item::File("b/Dockerfile", DOCKERFILE, 0o644),
        Item::File("README.md", b"hello", 0o644),
    ]);
    match setup.reject_zip(&bytes, &IntakeLimits::default()) {
        PackageError::NoDockerfile { folder, found } => {
            assert_eq!(folder, None);
            assert_eq!(found, ["README.md", "a/", "b/"]);
        }
        other => panic!("expected NoDockerfile, got {other:?}"),
    }
}

#[test]
fn zip_nested_too_deep_is_rejected() {
    let setup = Setup::new();
    let bytes = zip_of(&[Item::File("outer/inner/Dockerfile", DOCKERFILE, 0o644)]);
    match setup.reject_zip(&bytes, &IntakeLimits::default()) {
        PackageError::NoDockerfile { folder, found } => {
            assert_eq!(folder.as_deref(), Some("outer"));
            assert_eq!(found, ["inner/"]);
        }
        other => panic!("expected NoDockerfile, got {other:?}"),
    }
}

#[test]
fn zip_dockerfile_folder_is_rejected() {
    let setup = Setup::new();
    let bytes = zip_of(&[Item::Folder("pkg/Dockerfile/")]);
    match setup.reject_zip(&bytes, &IntakeLimits::default()) {
        PackageError::DockerfileNotFile { entry, kind } => {
            assert_eq!(entry, "pkg/Dockerfile");
            assert_eq!(kind, "folder");
        }
        other => panic!("expected DockerfileNotFile, got {other:?}"),
    }
}

#[test]
fn zip_empty_archive_is_rejected() {
    let setup = Setup::new();
    let bytes = zip_of(&[]);
    let error = setup.reject_zip(&bytes, &IntakeLimits::default());
    assert!(
        error.to_string().starts_with("the package is empty;"),
        "{error}"
    );
}

// ---------------------------------------------------------------------------------------------
// Hostile zips: names

fn assert_invalid_name(error: PackageError, name: &str, expected: NameRule) {
    match error {
        PackageError::InvalidEntryName { entry, rule } => {
            assert_eq!(entry, name);
            assert_eq!(rule, expected);
        }
        other => panic!("expected InvalidEntryName for {name:?}, got {other:?}"),
    }
}

/// Each unsafe name is rejected with its rule, next to a valid Dockerfile, and nothing is
/// written anywhere: not in the target and not where the name points.
#[test]
fn zip_unsafe_names_are_rejected() {
    let cases = [
        ("/tmp/agentrun-intake-escape", NameRule::Absolute),
        ("../agentrun-intake-escape", NameRule::ParentComponent),
        (
            "data/../../agentrun-intake-escape",
            NameRule::ParentComponent,
        ),
        ("..\\agentrun-intake-escape", NameRule::Backslash),
        ("data\\config", NameRule::Backslash),
        ("C:/agentrun-intake-escape", NameRule::DriveLetter),
        ("C:agentrun-intake-escape", NameRule::DriveLetter),
    ];
    for (name, rule) in cases {
        let setup = Setup::new();
        let bytes = zip_of(&[
            Item::File("Dockerfile", DOCKERFILE, 0o644),
            Item::File(name, b"escaped", 0o644),
        ]);
        assert_invalid_name(
            setup.reject_zip(&bytes, &IntakeLimits::default()),
            name,
            rule,
        );
        assert!(!setup.dir.path().join("agentrun-intake-escape").exists());
        assert!(!Path::new("/tmp/agentrun-intake-escape").exists());
    }
}

#[test]
fn zip_nul_in_name_is_rejected() {
    let setup = Setup::new();
    let bytes = raw_zip::build(&[
        RawEntry::stored("Dockerfile", DOCKERFILE),
        RawEntry::stored("data\0.txt", b"x"),
    ]);
    assert_invalid_name(
        setup.reject_zip(&bytes, &IntakeLimits::default()),
        "data\0.txt",
        NameRule::Nul,
    );
}

/// Names differ only in `.` and empty components, so they unpack to one path.
#[test]
fn zip_normalised_duplicates_are_rejected() {
    let cases: [(&str, &str); 3] = [
        ("data/config", "data/./config"),
        ("data/config", "data//config"),
        ("data/", "./data/"),
    ];
    for (first, second) in cases {
        let setup = Setup::new();
        let item = |name: &'static str| {
            if name.ends_with('/') {
                Item::Folder(name)
            } else {
                Item::File(name, b"x", 0o644)
            }
        };
        let bytes = zip_of(&[
            Item::File("Dockerfile", DOCKERFILE, 0o644),
            item(first),
            item(second),
        ]);
        match setup.reject_zip(&bytes, &IntakeLimits::default()) {
            PackageError::ConflictingEntries { entry, other } => {
                assert_eq!(entry, second);
                assert_eq!(other, first);
            }
            other => panic!("expected ConflictingEntries for {second:?}, got {other:?}"),
        }
    }
}

/// A file and a folder of the same path collide, in either order.
#[test]
fn zip_file_and_folder_collide() {
    for names in [["data", "data/config"], ["data/config", "data"]] {
        let setup = Setup::new();
        let bytes = zip_of(&[
            Item::File("Dockerfile", DOCKERFILE, 0o644),
            Item::File(names[0], b"x", 0o644),
            Item::File(names[1], b"y", 0o644),
        ]);
        match setup.reject_zip(&bytes, &IntakeLimits::default()) {
            PackageError::ConflictingEntries { entry, other } => {
                assert_eq!(entry, names[1]);
                assert_eq!(other, names[0]);
            }
            other => panic!("expected ConflictingEntries for {names:?}, got {other:?}"),
        }
    }
}

/// Names are compared case-sensitively, as Linux file systems do.
#[test]
fn zip_names_differing_in_case_are_distinct() {
    let setup = Setup::new();
    let path = setup.write_input(
        "package.zip",
        &zip_of(&[
            Item::File("Dockerfile", DOCKERFILE, 0o644),
            Item::File("readme", b"lower", 0o644),
            Item::File("README", b"upper", 0o644),
        ]),
    );
    let package = setup.open(&path).expect("valid package");
    assert_eq!(
        fs::read(package.root().join("README")).expect("read"),
        b"upper"
    );
}

/// The exact same name twice in the central directory: the zip reader keeps one entry per name,
/// so this is the only way to see it.
#[test]
fn zip_repeated_name_is_rejected() {
    let setup = Setup::new();
    let bytes = raw_zip::build(&[
        RawEntry::stored("Dockerfile", DOCKERFILE),
        RawEntry::stored("Dockerfile", b"FROM evil\n"),
    ]);
    assert!(matches!(
        setup.reject_zip(&bytes, &IntakeLimits::default()),
        PackageError::DuplicateNames
    ));
}

// ---------------------------------------------------------------------------------------------
// Hostile zips: entry types, encryption, compression

#[test]
fn zip_symlink_is_rejected() {
    let setup = Setup::new();
    let bytes = zip_of(&[
        Item::File("Dockerfile", DOCKERFILE, 0o644),
        Item::Link("passwd", "/etc/passwd"),
    ]);
    match setup.reject_zip(&bytes, &IntakeLimits::default()) {
        PackageError::SymlinkInZip { entry } => assert_eq!(entry, "passwd"),
        other => panic!("expected SymlinkInZip, got {other:?}"),
    }
}

/// Even a link that stays inside the package is rejected: links are never unpacked from zips.
#[test]
fn zip_symlink_inside_is_rejected() {
    let setup = Setup::new();
    let bytes = zip_of(&[
        Item::File("Dockerfile", DOCKERFILE, 0o644),
        Item::Link("Dockerfile.link", "Dockerfile"),
    ]);
    assert!(matches!(
        setup.reject_zip(&bytes, &IntakeLimits::default()),
        PackageError::SymlinkInZip { .. }
    ));
}

#[test]
fn zip_special_files_are_rejected() {
    let cases = [
        (0o010644, SpecialKind::Fifo),
        (0o020644, SpecialKind::CharDevice),
        (0o060644, SpecialKind::BlockDevice),
        (0o140644, SpecialKind::Socket),
        (0o170644, SpecialKind::Unknown(0o170000)),
    ];
    for (mode, kind) in cases {
        let setup = Setup::new();
        let special = RawEntry {
            mode,
            ..RawEntry::stored("dev/node", b"")
        };
        let bytes = raw_zip::build(&[RawEntry::stored("Dockerfile", DOCKERFILE), special]);
        match setup.reject_zip(&bytes, &IntakeLimits::default()) {
            PackageError::SpecialFile { entry, kind: found } => {
                assert_eq!(entry, "dev/node");
                assert_eq!(found, kind);
            }
            other => panic!("expected SpecialFile for mode {mode:o}, got {other:?}"),
        }
    }
}

#[test]
fn zip_encrypted_entry_is_rejected() {
    let setup = Setup::new();
    let encrypted = RawEntry {
        flags: 1,
        ..RawEntry::stored("secret.txt", b"\x8a\x11garbled")
    };
    let bytes = raw_zip::build(&[RawEntry::stored("Dockerfile", DOCKERFILE), encrypted]);
    match setup.reject_zip(&bytes, &IntakeLimits::default()) {
        PackageError::EncryptedEntry { entry } => assert_eq!(entry, "secret.txt"),
        other => panic!("expected EncryptedEntry, got {other:?}"),
    }
}

#[test]
fn zip_unsupported_compression_is_rejected() {
    for method in [12, 14, 93, 99, 1234] {
        let setup = Setup::new();
        let entry = RawEntry {
            method,
            ..RawEntry::stored("data.bin", b"BZh91AY&SY")
        };
        let bytes = raw_zip::build(&[RawEntry::stored("Dockerfile", DOCKERFILE), entry]);
        match setup.reject_zip(&bytes, &IntakeLimits::default()) {
            PackageError::UnsupportedCompression {
                entry,
                method: found,
            } => {
                assert_eq!(entry, "data.bin");
                assert_eq!(found, method);
            }
            other => panic!("expected UnsupportedCompression for {method}, got {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Hostile zips: structure

#[test]
fn zip_over_archive_limit_is_rejected_before_parsing() {
    let setup = Setup::new();
    // A zip signature followed by garbage: parsing would fail, so the size check came first.
    let mut bytes = b"PK\x03\x04".to_vec();
    bytes.resize(4096, 0xAA);
    let limits = limits_with(|limits| limits.max_archive_bytes = 4095);
    match setup.reject_zip(&bytes, &limits) {
        PackageError::ArchiveTooLarge {
            bytes,
            max_archive_bytes,
            ..
        } => {
            assert_eq!(bytes, 4096);
            assert_eq!(max_archive_bytes, 4095);
        }
        other => panic!("expected ArchiveTooLarge, got {other:?}"),
    }
}

#[test]
fn zip_truncated_is_invalid() {
    let setup = Setup::new();
    let mut bytes = zip_of(&[Item::File("Dockerfile", DOCKERFILE, 0o644)]);
    bytes.truncate(bytes.len() - 30);
    assert!(matches!(
        setup.reject_zip(&bytes, &IntakeLimits::default()),
        PackageError::InvalidArchive { .. }
    ));
}

#[test]
fn zip_entry_count_limit() {
    let names: Vec<String> = (0..5).map(|i| format!("file{i}")).collect();
    let mut items = vec![Item::File("Dockerfile", DOCKERFILE, 0o644)];
    items.extend(names.iter().map(|name| Item::File(name, b"x", 0o644)));
    let bytes = zip_of(&items);
    let setup = Setup::new();

    let at_limit = limits_with(|limits| limits.max_entries = 6);
    let path = setup.write_input("package.zip", &bytes);
    open_with_temp_dir(&path, &setup.temp_parent(), &at_limit).expect("6 entries pass");

    let below = limits_with(|limits| limits.max_entries = 5);
    match setup.reject_zip(&bytes, &below) {
        PackageError::TooManyEntries { count, max_entries } => {
            assert_eq!(count, 6);
            assert_eq!(max_entries, 5);
        }
        other => panic!("expected TooManyEntries, got {other:?}"),
    }
}

/// Folders that a zip leaves implicit are created, but do not count as entries.
#[test]
fn zip_implied_folders_are_not_counted() {
    let setup = Setup::new();
    let path = setup.write_input(
        "package.zip",
        &zip_of(&[
            Item::File("Dockerfile", DOCKERFILE, 0o644),
            Item::File("a/b/c/one", b"1", 0o644),
            Item::File("a/b/c/two", b"2", 0o644),
        ]),
    );
    let limits = limits_with(|limits| limits.max_entries = 3);
    let package = open_with_temp_dir(&path, &setup.temp_parent(), &limits).expect("3 entries pass");
    assert!(package.root().join("a/b/c/two").is_file());
}

/// A central directory far larger than `max_entries` records need is not parsed to the end, so
/// its records never fill memory.
#[test]
fn zip_huge_central_directory_is_rejected() {
    // 65,535 records with 150-byte names: about 12.8 MB of central directory, while the default
    // limits allow 10,000 KiB + 128 KiB.
    let entries: Vec<RawEntry> = (0..65_535)
        .map(|i| RawEntry::stored(&format!("{i:0150}"), b""))
        .collect();
    let bytes = raw_zip::build(&entries);
    let limits = IntakeLimits::default();
    let budget = limits.max_entries * 1024 + 128 * 1024;

    let (result, read) = unpack_counting(bytes.clone(), &limits);

    match result {
        Err(PackageError::DirectoryTooLarge {
            max_directory_bytes,
            max_entries,
        }) => {
            assert_eq!(max_directory_bytes, budget);
            assert_eq!(max_entries, DEFAULT_MAX_ENTRIES);
        }
        other => panic!("expected DirectoryTooLarge, got {other:?}"),
    }
    assert!(read <= budget + 1, "read {read} bytes");

    let setup = Setup::new();
    assert!(matches!(
        setup.reject_zip(&bytes, &limits),
        PackageError::DirectoryTooLarge { .. }
    ));
}

/// Below the directory budget, the entry count decides the error.
#[test]
fn zip_small_directory_reports_entry_count() {
    let entries: Vec<RawEntry> = (0..3)
        .map(|i| RawEntry::stored(&format!("f{i}"), b""))
        .collect();
    let bytes = raw_zip::build(&entries);
    let limits = limits_with(|limits| limits.max_entries = 2);

    let (result, _) = unpack_counting(bytes, &limits);

    assert!(
        matches!(result, Err(PackageError::TooManyEntries { count: 3, .. })),
        "{result:?}"
    );
}

/// Two central directory records that point to one local header: the overlap that makes
/// "better zip bombs" small.
#[test]
fn zip_overlapping_entries_are_rejected() {
    let setup = Setup::new();
    let data = vec![b'z'; 1000];
    let second = RawEntry {
        shares_local_header_of: Some(1),
        ..RawEntry::stored("b", &data)
    };
    let bytes = raw_zip::build(&[
        RawEntry::stored("Dockerfile", DOCKERFILE),
        RawEntry::stored("a", &data),
        second,
    ]);
    assert!(matches!(
        setup.reject_zip(&bytes, &IntakeLimits::default()),
        PackageError::OverlappingEntries
    ));
}

/// A local header that names another file than the central directory: readers that trust one
/// or the other would unpack different trees.
#[test]
fn zip_local_name_mismatch_is_rejected() {
    let setup = Setup::new();
    let entry = RawEntry {
        local_name: Some(b"evil.sh".to_vec()),
        ..RawEntry::stored("agent.sh", b"#!/bin/sh\n")
    };
    let bytes = raw_zip::build(&[RawEntry::stored("Dockerfile", DOCKERFILE), entry]);
    assert!(matches!(
        setup.reject_zip(&bytes, &IntakeLimits::default()),
        PackageError::InconsistentHeaders { .. }
    ));
}

#[test]
fn zip_checksum_mismatch_is_corrupt() {
    let setup = Setup::new();
    let entry = RawEntry {
        crc32: 0xDEAD_BEEF,
        ..RawEntry::stored("data.txt", b"some data")
    };
    let bytes = raw_zip::build(&[RawEntry::stored("Dockerfile", DOCKERFILE), entry]);
    match setup.reject_zip(&bytes, &IntakeLimits::default()) {
        PackageError::CorruptEntry { entry, .. } => assert_eq!(entry, "data.txt"),
        other => panic!("expected CorruptEntry, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Hostile zips: sizes and bombs

#[test]
fn zip_unpacked_size_limit() {
    let setup = Setup::new();
    let bytes = zip_of(&[
        Item::File("Dockerfile", DOCKERFILE, 0o644),
        Item::File("a", &[1; 1000], 0o644),
        Item::File("b", &[2; 1000], 0o644),
    ]);
    let limit = DOCKERFILE.len() as u64 + 1999;
    let limits = limits_with(|limits| limits.max_unpacked_bytes = limit);
    match setup.reject_zip(&bytes, &limits) {
        PackageError::ContentTooLarge {
            entry,
            max_unpacked_bytes,
        } => {
            assert_eq!(entry, "b");
            assert_eq!(max_unpacked_bytes, limit);
        }
        other => panic!("expected ContentTooLarge, got {other:?}"),
    }
}

/// 8 MiB of zeros deflate to a few kilobytes: a genuine high-ratio entry.
#[test]
fn zip_high_ratio_entry_is_rejected() {
    let setup = Setup::new();
    let zeros = vec![0; 8 * 1024 * 1024];
    let bytes = zip_of(&[
        Item::File("Dockerfile", DOCKERFILE, 0o644),
        Item::File("zeros.bin", &zeros, 0o644),
    ]);
    match setup.reject_zip(&bytes, &IntakeLimits::default()) {
        PackageError::RatioExceeded {
            entry,
            uncompressed_bytes,
            compressed_bytes,
            max_ratio,
        } => {
            assert_eq!(entry, "zeros.bin");
            assert_eq!(uncompressed_bytes, 8 * 1024 * 1024);
            assert!(compressed_bytes < 64 * 1024, "{compressed_bytes}");
            assert_eq!(max_ratio, DEFAULT_MAX_RATIO);
        }
        other => panic!("expected RatioExceeded, got {other:?}"),
    }
}

/// Files up to the floor may compress as well as they like.
#[test]
fn zip_high_ratio_below_floor_is_allowed() {
    let setup = Setup::new();
    let zeros = vec![0; DEFAULT_RATIO_FLOOR_BYTES as usize];
    let path = setup.write_input(
        "package.zip",
        &zip_of(&[
            Item::File("Dockerfile", DOCKERFILE, 0o644),
            Item::File("zeros.bin", &zeros, 0o644),
        ]),
    );
    let package = setup.open(&path).expect("valid package");
    assert_eq!(
        fs::metadata(package.root().join("zeros.bin"))
            .expect("metadata")
            .len(),
        DEFAULT_RATIO_FLOOR_BYTES
    );
}

/// Number of 258-byte matches that make [`raw_zip::deflate_zeros`] expand to 2 GiB.
const TWO_GIB_REPEATS: usize = (2 << 30) / 258;

/// Counts the bytes read through it, so a test can see how much of an archive was consumed.
struct CountingReader<R> {
    inner: R,
    read: Rc<Cell<u64>>,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(buffer)?;
        self.read.set(self.read.get() + read as u64);
        Ok(read)
    }
}

impl<R: Seek> Seek for CountingReader<R> {
    fn seek(&mut self, position: SeekFrom) -> io::Result<u64> {
        self.inner.seek(position)
    }
}

/// Unpacks `bytes` through a [`CountingReader`] into a fresh folder and returns the result with
/// the number of archive bytes read.
fn unpack_counting(bytes: Vec<u8>, limits: &IntakeLimits) -> (Result<(), PackageError>, u64) {
    let dest = tempfile::tempdir().expect("temp dir");
    let read = Rc::new(Cell::new(0));
    let reader = CountingReader {
        inner: Cursor::new(bytes),
        read: Rc::clone(&read),
    };
    let result = archive::unpack(reader, Path::new("bomb.zip"), dest.path(), limits).map(drop);
    (result, read.get())
}

/// 2 GiB of zeros in a 13 MB entry that claims 1 MiB: the reader stops once the claim is
/// exceeded, after a few kilobytes of the archive, and reports the entry as damaged.
#[test]
fn zip_bomb_claiming_small_size_stops_early() {
    let stream = raw_zip::deflate_zeros(TWO_GIB_REPEATS);
    let archive_bytes = stream.len() as u64;
    let bomb = RawEntry::deflated("zeros.bin", stream, 1024 * 1024, 0);
    let bytes = raw_zip::build(&[RawEntry::stored("Dockerfile", DOCKERFILE), bomb]);

    let (result, read) = unpack_counting(bytes.clone(), &IntakeLimits::default());

    match result {
        Err(PackageError::CorruptEntry { entry, .. }) => assert_eq!(entry, "zeros.bin"),
        other => panic!("expected CorruptEntry, got {other:?}"),
    }
    assert!(
        read < 1024 * 1024,
        "read {read} of {archive_bytes} archive bytes"
    );

    let setup = Setup::new();
    assert!(matches!(
        setup.reject_zip(&bytes, &IntakeLimits::default()),
        PackageError::CorruptEntry { .. }
    ));
}

/// The same 2 GiB entry declaring its true size is rejected from the central directory alone.
#[test]
fn zip_bomb_declaring_size_is_rejected_unread() {
    let stream = raw_zip::deflate_zeros(TWO_GIB_REPEATS);
    let size = 1 + 258 * TWO_GIB_REPEATS as u32;
    let bomb = RawEntry::deflated("zeros.bin", stream, size, 0);
    let bytes = raw_zip::build(&[RawEntry::stored("Dockerfile", DOCKERFILE), bomb]);

    let (result, read) = unpack_counting(bytes, &IntakeLimits::default());

    match result {
        Err(PackageError::ContentTooLarge { entry, .. }) => assert_eq!(entry, "zeros.bin"),
        other => panic!("expected ContentTooLarge, got {other:?}"),
    }
    assert!(read < 64 * 1024, "read {read} archive bytes");
}

/// The deflate stream that the bomb tests rely on inflates to what it claims.
#[test]
fn deflate_zeros_inflates_to_zeros() {
    let repeats = 40;
    let len = 1 + 258 * repeats;
    let expected = vec![0; len];
    let entry = RawEntry::deflated(
        "zeros.bin",
        raw_zip::deflate_zeros(repeats),
        len as u32,
        raw_zip::crc32(&expected),
    );
    let bytes = raw_zip::build(&[entry]);

    let mut archive = zip::ZipArchive::new(Cursor::new(bytes)).expect("valid archive");
    let mut contents = Vec::new();
    archive
        .by_index(0)
        .expect("entry")
        .read_to_end(&mut contents)
        .expect("inflate");
    assert_eq!(contents, expected);
}

/// The meter stops before handing over the chunk that passes the total limit.
#[test]
fn meter_stops_at_total_limit() {
    let limits = limits_with(|limits| {
        limits.max_unpacked_bytes = 1000;
        limits.max_ratio = u32::MAX;
    });
    let mut meter = Meter::new(&limits);
    let mut written = 0;
    let mut buffer = [0; 64];
    let result = meter.copy(
        "big",
        10,
        &mut io::repeat(0).take(1_000_000),
        &mut buffer,
        |chunk| {
            written += chunk.len();
            Ok(())
        },
    );
    match result {
        Err(PackageError::ContentTooLarge {
            entry,
            max_unpacked_bytes,
        }) => {
            assert_eq!(entry, "big");
            assert_eq!(max_unpacked_bytes, 1000);
        }
        other => panic!("expected ContentTooLarge, got {other:?}"),
    }
    assert!(written <= 1000, "wrote {written} bytes");
}

/// The total counts across entries.
#[test]
fn meter_total_spans_entries() {
    let limits = limits_with(|limits| limits.max_unpacked_bytes = 100);
    let mut meter = Meter::new(&limits);
    let mut buffer = [0; 16];
    let first = meter.copy("a", 60, &mut &[1u8; 60][..], &mut buffer, |_| Ok(()));
    assert_eq!(first.expect("within limit"), 60);
    let second = meter.copy("b", 60, &mut &[1u8; 60][..], &mut buffer, |_| Ok(()));
    assert!(matches!(
        second,
        Err(PackageError::ContentTooLarge { ref entry, .. }) if entry == "b"
    ));
}

/// The meter counts real bytes, so an entry whose header understates its size still stops at
/// the ratio limit.
#[test]
fn meter_stops_at_ratio() {
    let limits = limits_with(|limits| {
        limits.ratio_floor_bytes = 100;
        limits.max_ratio = 10;
    });
    let mut meter = Meter::new(&limits);
    let mut written = 0;
    let mut buffer = [0; 7];
    let result = meter.copy(
        "bomb",
        20,
        &mut io::repeat(0).take(1_000_000),
        &mut buffer,
        |chunk| {
            written += chunk.len();
            Ok(())
        },
    );
    match result {
        Err(PackageError::RatioExceeded {
            uncompressed_bytes,
            compressed_bytes,
            max_ratio,
            ..
        }) => {
            assert!(uncompressed_bytes > 200, "{uncompressed_bytes}");
            assert!(uncompressed_bytes <= 207, "{uncompressed_bytes}");
            assert_eq!(compressed_bytes, 20);
            assert_eq!(max_ratio, 10);
        }
        other => panic!("expected RatioExceeded, got {other:?}"),
    }
    assert!(written <= 200, "wrote {written} bytes");
}

// ---------------------------------------------------------------------------------------------
// Modes

/// The executable bit survives; setuid, setgid and sticky bits never reach the disk.
#[test]
fn zip_modes_keep_only_executable_bit() {
    let setup = Setup::new();
    let entries = [
        ("Dockerfile", 0o100644),
        ("run.sh", 0o100700),
        ("setuid", 0o104755),
        ("setgid", 0o102711),
        ("sticky", 0o101644),
        ("world", 0o100777),
    ];
    let raw: Vec<RawEntry> = entries
        .iter()
        .map(|(name, mode)| RawEntry {
            mode: *mode,
            ..RawEntry::stored(name, DOCKERFILE)
        })
        .collect();
    let path = setup.write_input("package.zip", &raw_zip::build(&raw));

    let package = setup.open(&path).expect("valid package");

    let modes: Vec<(&str, u32)> = entries
        .iter()
        .map(|(name, _)| (*name, mode_of(&package.root().join(name))))
        .collect();
    assert_eq!(
        modes,
        [
            ("Dockerfile", 0o644),
            ("run.sh", 0o755),
            ("setuid", 0o755),
            ("setgid", 0o755),
            ("sticky", 0o644),
            ("world", 0o755),
        ]
    );
}

/// Archives made on Windows carry no Unix mode: files are unpacked without the executable bit.
#[test]
fn zip_without_unix_mode() {
    let setup = Setup::new();
    let entry = RawEntry {
        mode: 0,
        ..RawEntry::stored("Dockerfile", DOCKERFILE)
    };
    let path = setup.write_input("package.zip", &raw_zip::build(&[entry]));
    let package = setup.open(&path).expect("valid package");
    assert_eq!(mode_of(&package.root().join("Dockerfile")), 0o644);
}

// ---------------------------------------------------------------------------------------------
// Persistent packages

#[test]
fn open_into_zip_places_root_at_dest() {
    let setup = Setup::new();
    let path = setup.write_input(
        "package.zip",
        &zip_of(&[
            Item::File("mydir/Dockerfile", DOCKERFILE, 0o644),
            Item::File("mydir/agent.sh", b"#!/bin/sh\n", 0o755),
        ]),
    );
    let dest = setup.data().join("packages").join("echo");
    fs::create_dir(dest.parent().expect("parent")).expect("mkdir");

    let package = open_into(&path, &dest, &IntakeLimits::default()).expect("valid package");

    assert_eq!(package.root(), dest);
    assert_eq!(fs::read(dest.join("Dockerfile")).expect("read"), DOCKERFILE);
    assert_eq!(mode_of(&dest.join("agent.sh")), 0o755);
    assert_eq!(mode_of(&dest), 0o755);
    let digest = package.digest().to_owned();
    drop(package);
    assert!(dest.join("Dockerfile").exists(), "dest persists after drop");

    let names: Vec<String> = fs::read_dir(dest.parent().expect("parent"))
        .expect("list")
        .map(|item| {
            item.expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(names, ["echo"], "no staging folder is left beside dest");

    let temp = setup.open(&path).expect("valid package");
    assert_eq!(temp.digest(), digest);
}

/// A folder is copied, with its links, and gets the same digest as when used in place.
#[test]
fn open_into_folder_copies_tree() {
    let setup = Setup::new();
    let folder = setup.input("pkg");
    sample_folder(&folder);
    symlink("data/config.json", folder.join("config.json")).expect("symlink");
    let dest = setup.data().join("pkg");

    let copied = open_into(&folder, &dest, &IntakeLimits::default()).expect("valid package");
    let in_place = setup.open(&folder).expect("valid package");

    assert_eq!(copied.digest(), in_place.digest());
    assert_eq!(mode_of(&dest.join("agent.sh")), 0o755);
    assert_eq!(
        fs::read_link(dest.join("config.json")).expect("link"),
        Path::new("data/config.json")
    );
    assert!(
        folder.join("Dockerfile").exists(),
        "the source is untouched"
    );
}

#[test]
fn open_into_existing_dest_is_engine_error() {
    let setup = Setup::new();
    let folder = setup.input("pkg");
    sample_folder(&folder);
    let dest = setup.data().join("pkg");
    fs::create_dir(&dest).expect("mkdir");

    let error = open_into(&folder, &dest, &IntakeLimits::default()).expect_err("dest exists");

    assert!(!error.is_invalid_input());
    match error {
        PackageError::Io { source, .. } => {
            assert_eq!(source.kind(), io::ErrorKind::AlreadyExists);
        }
        other => panic!("expected Io, got {other:?}"),
    }
    assert_empty(&dest);
}

/// A temporary folder that cannot be created is the engine's problem, not the package's.
#[test]
fn open_missing_temp_parent_is_engine_error() {
    let setup = Setup::new();
    let path = setup.write_input(
        "package.zip",
        &zip_of(&[Item::File("Dockerfile", DOCKERFILE, 0o644)]),
    );
    let error = open_with_temp_dir(
        &path,
        &setup.temp_parent().join("missing"),
        &IntakeLimits::default(),
    )
    .expect_err("no temp parent");
    assert!(matches!(error, PackageError::Io { .. }), "{error:?}");
    assert!(!error.is_invalid_input());
}

// ---------------------------------------------------------------------------------------------
// Digest

fn digest_of_zip(setup: &Setup, bytes: &[u8]) -> String {
    let path = setup.write_input("digest.zip", bytes);
    setup
        .open(&path)
        .expect("valid package")
        .digest()
        .to_owned()
}

fn digest_of_folder(setup: &Setup, folder: &Path) -> String {
    setup
        .open(folder)
        .expect("valid package")
        .digest()
        .to_owned()
}

/// A folder, a zip of its contents and a zip of the folder itself all get one digest.
#[test]
fn digest_same_for_folder_and_zip() {
    let setup = Setup::new();
    let folder = setup.input("pkg");
    sample_folder(&folder);
    fs::create_dir(folder.join("empty")).expect("mkdir");

    let from_folder = digest_of_folder(&setup, &folder);
    let flat = digest_of_zip(&setup, &zip_folder(&folder, "", false, DateTime::default()));
    let nested = digest_of_zip(
        &setup,
        &zip_folder(&folder, "pkg/", false, DateTime::default()),
    );

    assert_eq!(flat, from_folder);
    assert_eq!(nested, from_folder);
}

#[test]
fn digest_ignores_entry_order_and_timestamps() {
    let setup = Setup::new();
    let folder = setup.input("pkg");
    sample_folder(&folder);
    let later = DateTime::from_date_and_time(2024, 6, 30, 12, 34, 56).expect("valid date");

    let forward = digest_of_zip(&setup, &zip_folder(&folder, "", false, DateTime::default()));
    let backward = digest_of_zip(&setup, &zip_folder(&folder, "", true, later));

    assert_eq!(forward, backward);
}

/// Stored and deflated entries of the same files get one digest.
#[test]
fn digest_ignores_compression_method() {
    let setup = Setup::new();
    let items = [
        Item::File("Dockerfile", DOCKERFILE, 0o644),
        Item::File("agent.sh", b"#!/bin/sh\n", 0o755),
    ];
    let deflated = digest_of_zip(&setup, &zip_of(&items));
    let stored = digest_of_zip(
        &setup,
        &zip_with(
            &items,
            options().compression_method(CompressionMethod::Stored),
        ),
    );
    assert_eq!(deflated, stored);
}

#[test]
fn digest_changes_with_one_byte() {
    let setup = Setup::new();
    let folder = setup.input("pkg");
    sample_folder(&folder);
    let before = digest_of_folder(&setup, &folder);

    write_file(&folder, "data/config.json", b"{\"a\": 2}\n");

    assert_ne!(digest_of_folder(&setup, &folder), before);
}

#[test]
fn digest_changes_with_rename() {
    let setup = Setup::new();
    let folder = setup.input("pkg");
    sample_folder(&folder);
    let before = digest_of_folder(&setup, &folder);

    fs::rename(
        folder.join("data/config.json"),
        folder.join("data/settings.json"),
    )
    .expect("rename");

    assert_ne!(digest_of_folder(&setup, &folder), before);
}

#[test]
fn digest_changes_with_executable_bit() {
    let setup = Setup::new();
    let folder = setup.input("pkg");
    sample_folder(&folder);
    let before = digest_of_folder(&setup, &folder);

    set_mode(&folder, "agent.sh", 0o644);
    let without = digest_of_folder(&setup, &folder);
    set_mode(&folder, "agent.sh", 0o744);
    let owner_only = digest_of_folder(&setup, &folder);

    assert_ne!(without, before);
    assert_eq!(owner_only, before, "any execute bit counts the same");
}

/// Permission bits other than execute do not count.
#[test]
fn digest_ignores_read_write_bits() {
    let setup = Setup::new();
    let folder = setup.input("pkg");
    sample_folder(&folder);
    let before = digest_of_folder(&setup, &folder);

    set_mode(&folder, "data/config.json", 0o600);

    assert_eq!(digest_of_folder(&setup, &folder), before);
}

#[test]
fn digest_counts_empty_folders() {
    let setup = Setup::new();
    let folder = setup.input("pkg");
    sample_folder(&folder);
    let before = digest_of_folder(&setup, &folder);

    fs::create_dir(folder.join("cache")).expect("mkdir");

    assert_ne!(digest_of_folder(&setup, &folder), before);
}

/// A link and a file holding the link's target text are different trees.
#[test]
fn digest_distinguishes_link_from_file() {
    let setup = Setup::new();
    let folder = setup.input("pkg");
    sample_folder(&folder);
    symlink("data/config.json", folder.join("config")).expect("symlink");
    let with_link = digest_of_folder(&setup, &folder);

    fs::remove_file(folder.join("config")).expect("remove");
    write_file(&folder, "config", b"data/config.json");

    assert_ne!(digest_of_folder(&setup, &folder), with_link);
}

/// Moving the root into a single top-level folder does not change the package.
#[test]
fn digest_same_for_root_and_single_folder() {
    let setup = Setup::new();
    let flat = setup.input("flat");
    sample_folder(&flat);
    let nested = setup.input("nested");
    sample_folder(&nested.join("agent"));

    assert_eq!(
        digest_of_folder(&setup, &flat),
        digest_of_folder(&setup, &nested)
    );
}
