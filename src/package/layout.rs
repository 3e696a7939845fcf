//! The layout rule: where a package's `Dockerfile` may be, and so which folder is its root.
//!
//! The same rule applies to folders and zips: the `Dockerfile` is at the top level, or inside
//! the single top-level folder (what `zip -r package.zip folder` produces). Metadata that macOS
//! adds (`__MACOSX/`, `.DS_Store`) does not count as a top-level entry.

use super::error::PackageError;

/// The name the `Dockerfile` must have.
pub(super) const DOCKERFILE: &str = "Dockerfile";
/// Folder of resource forks that macOS's Archive Utility adds to zips.
pub(super) const MACOS_RESOURCE_FOLDER: &str = "__MACOSX";
/// Folder view settings that macOS Finder leaves in folders.
const MACOS_FOLDER_SETTINGS: &str = ".DS_Store";

/// The type of a layout entry, as far as the rule cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum NodeKind {
    File,
    Folder,
    Symlink,
    Special,
}

impl NodeKind {
    fn describe(self) -> &'static str {
        match self {
            Self::File => "file",
            Self::Folder => "folder",
            Self::Symlink => "symbolic link",
            Self::Special => "special file",
        }
    }
}

/// The location of the package root, relative to the top level.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum RootLocation {
    /// The `Dockerfile` is at the top level.
    Top,
    /// The `Dockerfile` is inside this single top-level folder.
    Folder(String),
}

impl RootLocation {
    /// Returns the root's path relative to the top level, `""` for the top itself.
    pub(super) fn prefix(&self) -> &str {
        match self {
            Self::Top => "",
            Self::Folder(name) => name,
        }
    }
}

/// Applies the layout rule to the `top` level entries; `list_folder` lists a top-level folder's
/// entries when the rule needs to look inside one.
pub(super) fn locate_root(
    top: &[(String, NodeKind)],
    list_folder: impl FnOnce(&str) -> Result<Vec<(String, NodeKind)>, PackageError>,
) -> Result<RootLocation, PackageError> {
    let top: Vec<&(String, NodeKind)> = top.iter().filter(|(name, _)| !is_metadata(name)).collect();

    if let Some((_, kind)) = top.iter().find(|(name, _)| name == DOCKERFILE) {
        return match kind {
            NodeKind::File => Ok(RootLocation::Top),
            other => Err(PackageError::DockerfileNotFile {
                entry: DOCKERFILE.to_owned(),
                kind: other.describe(),
            }),
        };
    }

    if let [(folder, NodeKind::Folder)] = top.as_slice() {
        let inside = list_folder(folder)?;
        return match inside.iter().find(|(name, _)| name == DOCKERFILE) {
            Some((_, NodeKind::File)) => Ok(RootLocation::Folder(folder.clone())),
            Some((_, other)) => Err(PackageError::DockerfileNotFile {
                entry: format!("{folder}/{DOCKERFILE}"),
                kind: other.describe(),
            }),
            None => Err(PackageError::NoDockerfile {
                folder: Some(folder.clone()),
                found: listing(inside.iter().filter(|(name, _)| !is_metadata(name))),
            }),
        };
    }

    Err(PackageError::NoDockerfile {
        folder: None,
        found: listing(top.into_iter()),
    })
}

fn is_metadata(name: &str) -> bool {
    name == MACOS_RESOURCE_FOLDER || name == MACOS_FOLDER_SETTINGS
}

fn listing<'a>(entries: impl Iterator<Item = &'a (String, NodeKind)>) -> Vec<String> {
    let mut names: Vec<String> = entries
        .map(|(name, kind)| match kind {
            NodeKind::Folder => format!("{name}/"),
            _ => name.clone(),
        })
        .collect();
    names.sort();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(list: &[(&str, NodeKind)]) -> Vec<(String, NodeKind)> {
        list.iter()
            .map(|(name, kind)| ((*name).to_owned(), *kind))
            .collect()
    }

    fn no_folder(_: &str) -> Result<Vec<(String, NodeKind)>, PackageError> {
        panic!("the rule must not look inside a folder here")
    }

    #[test]
    fn layout_top_level_dockerfile() {
        let top = entries(&[("Dockerfile", NodeKind::File), ("src", NodeKind::Folder)]);
        assert_eq!(
            locate_root(&top, no_folder).expect("valid"),
            RootLocation::Top
        );
    }

    #[test]
    fn layout_single_folder_ignores_macos_metadata() {
        let top = entries(&[
            ("__MACOSX", NodeKind::Folder),
            ("agent", NodeKind::Folder),
            (".DS_Store", NodeKind::File),
        ]);
        let root = locate_root(&top, |folder| {
            assert_eq!(folder, "agent");
            Ok(entries(&[("Dockerfile", NodeKind::File)]))
        })
        .expect("valid");
        assert_eq!(root, RootLocation::Folder("agent".into()));
    }

    #[test]
    fn layout_two_folders_is_rejected() {
        let top = entries(&[
            ("b", NodeKind::Folder),
            ("a", NodeKind::Folder),
            ("README.md", NodeKind::File),
        ]);
        match locate_root(&top, no_folder) {
            Err(PackageError::NoDockerfile { folder, found }) => {
                assert_eq!(folder, None);
                assert_eq!(found, ["README.md", "a/", "b/"]);
            }
            other => panic!("expected NoDockerfile, got {other:?}"),
        }
    }

    #[test]
    fn layout_single_folder_without_dockerfile() {
        let top = entries(&[("agent", NodeKind::Folder)]);
        let result = locate_root(&top, |_| {
            Ok(entries(&[
                ("main.py", NodeKind::File),
                (".DS_Store", NodeKind::File),
                ("lib", NodeKind::Folder),
            ]))
        });
        match result {
            Err(PackageError::NoDockerfile { folder, found }) => {
                assert_eq!(folder.as_deref(), Some("agent"));
                assert_eq!(found, ["lib/", "main.py"]);
            }
            other => panic!("expected NoDockerfile, got {other:?}"),
        }
    }

    /// A single top-level file is not a folder to look into.
    #[test]
    fn layout_single_file_is_rejected() {
        let top = entries(&[("agent.py", NodeKind::File)]);
        assert!(matches!(
            locate_root(&top, no_folder),
            Err(PackageError::NoDockerfile { folder: None, .. })
        ));
    }

    #[test]
    fn layout_dockerfile_folder_is_rejected() {
        let top = entries(&[("Dockerfile", NodeKind::Folder)]);
        match locate_root(&top, no_folder) {
            Err(PackageError::DockerfileNotFile { entry, kind }) => {
                assert_eq!(entry, "Dockerfile");
                assert_eq!(kind, "folder");
            }
            other => panic!("expected DockerfileNotFile, got {other:?}"),
        }
    }

    #[test]
    fn layout_nested_dockerfile_symlink_is_rejected() {
        let top = entries(&[("agent", NodeKind::Folder)]);
        match locate_root(&top, |_| Ok(entries(&[("Dockerfile", NodeKind::Symlink)]))) {
            Err(PackageError::DockerfileNotFile { entry, kind }) => {
                assert_eq!(entry, "agent/Dockerfile");
                assert_eq!(kind, "symbolic link");
            }
            other => panic!("expected DockerfileNotFile, got {other:?}"),
        }
    }

    /// The name is matched exactly, so `dockerfile` does not count.
    #[test]
    fn layout_lowercase_dockerfile_is_not_found() {
        let top = entries(&[("dockerfile", NodeKind::File)]);
        match locate_root(&top, no_folder) {
            Err(PackageError::NoDockerfile { found, .. }) => assert_eq!(found, ["dockerfile"]),
            other => panic!("expected NoDockerfile, got {other:?}"),
        }
    }
}
