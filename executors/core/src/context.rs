//! Build contexts: a package folder as the tar stream that container runtimes build from.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Writes `root` as a tar build context to `out`.
///
/// The stream is deterministic, so the same tree always gives the same bytes. Entries are sorted
/// by path, owner and group are 0, modification times are 0, and the mode is `0755` for
/// directories and executable files and `0644` for other files. Symbolic links are stored as
/// links; other special files (sockets, devices, FIFOs) are skipped, since a build cannot use
/// them. Package intake has already rejected links that point outside the package.
///
/// # Errors
///
/// Any error reading the tree or writing to `out`.
pub fn write_context_tar<W: Write>(root: &Path, out: W) -> io::Result<W> {
    let mut builder = tar::Builder::new(out);
    builder.follow_symlinks(false);
    append_dir(&mut builder, root, Path::new(""))?;
    builder.into_inner()
}

/// Returns `root` as a tar build context in memory. See [`write_context_tar`].
///
/// # Errors
///
/// Any error reading the tree.
pub fn build_context_tar(root: &Path) -> io::Result<Vec<u8>> {
    write_context_tar(root, Vec::new())
}

fn append_dir<W: Write>(
    builder: &mut tar::Builder<W>,
    dir: &Path,
    relative: &Path,
) -> io::Result<()> {
    let mut entries = fs::read_dir(dir)?.collect::<Result<Vec<_>, _>>()?;
    entries.sort_by_key(|entry| entry.file_name());

    for entry in entries {
        let path = entry.path();
        let name = relative.join(entry.file_name());
        let metadata = fs::symlink_metadata(&path)?;
        let file_type = metadata.file_type();

        let mut header = tar::Header::new_gnu();
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);

        if file_type.is_dir() {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(0o755);
            header.set_size(0);
            builder.append_data(&mut header, &name, io::empty())?;
            append_dir(builder, &path, &name)?;
        } else if file_type.is_file() {
            let executable = metadata.permissions().mode() & 0o111 != 0;
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(if executable { 0o755 } else { 0o644 });
            header.set_size(metadata.len());
            builder.append_data(&mut header, &name, fs::File::open(&path)?)?;
        } else if file_type.is_symlink() {
            let target = fs::read_link(&path)?;
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_mode(0o777);
            header.set_size(0);
            builder.append_link(&mut header, &name, &target)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(tar_bytes: &[u8]) -> Vec<(String, u32, Vec<u8>)> {
        let mut archive = tar::Archive::new(tar_bytes);
        let mut found = Vec::new();
        for entry in archive
            .entries()
            .expect("tar from build_context_tar is readable")
        {
            let mut entry = entry.expect("entry is readable");
            let path = entry.path().expect("path is valid").display().to_string();
            let mode = entry.header().mode().expect("mode is set");
            let mut content = Vec::new();
            io::Read::read_to_end(&mut entry, &mut content).expect("content is readable");
            found.push((path, mode, content));
        }
        found
    }

    #[test]
    fn context_lists_sorted_entries_with_modes() {
        let dir = tempfile::tempdir().expect("temp dir");
        fs::write(dir.path().join("Dockerfile"), "FROM scratch\n").expect("write");
        fs::create_dir(dir.path().join("bin")).expect("mkdir");
        fs::write(dir.path().join("bin/agent"), "#!/bin/sh\n").expect("write");
        fs::set_permissions(
            dir.path().join("bin/agent"),
            fs::Permissions::from_mode(0o700),
        )
        .expect("chmod");

        let found = entries(&build_context_tar(dir.path()).expect("tar"));

        let names: Vec<_> = found
            .iter()
            .map(|(path, mode, _)| (path.as_str(), *mode))
            .collect();
        assert_eq!(
            names,
            [("Dockerfile", 0o644), ("bin", 0o755), ("bin/agent", 0o755)]
        );
        assert_eq!(found[0].2, b"FROM scratch\n");
    }

    #[test]
    fn context_is_deterministic() {
        let dir = tempfile::tempdir().expect("temp dir");
        fs::write(dir.path().join("b"), "2").expect("write");
        fs::write(dir.path().join("a"), "1").expect("write");
        let first = build_context_tar(dir.path()).expect("tar");

        // A newer modification time must not change the stream.
        fs::write(dir.path().join("a"), "1").expect("rewrite");
        let second = build_context_tar(dir.path()).expect("tar");

        assert_eq!(first, second);
    }

    #[test]
    fn context_keeps_symlinks_as_links() {
        let dir = tempfile::tempdir().expect("temp dir");
        fs::write(dir.path().join("target"), "x").expect("write");
        std::os::unix::fs::symlink("target", dir.path().join("link")).expect("symlink");

        let tar_bytes = build_context_tar(dir.path()).expect("tar");
        let mut archive = tar::Archive::new(tar_bytes.as_slice());
        let link = archive
            .entries()
            .expect("entries")
            .map(|entry| entry.expect("entry"))
            .find(|entry| entry.path().expect("path").as_os_str() == "link")
            .expect("link entry present");

        assert_eq!(link.header().entry_type(), tar::EntryType::Symlink);
        assert_eq!(
            link.link_name()
                .expect("link name")
                .expect("is set")
                .as_os_str(),
            "target"
        );
    }
}
