//! Opening a package from the command line: intake, manifest and the dispatcher's integration.

use std::path::Path;

use crate::dispatcher::Integration;
use crate::error::Error;
use crate::manifest::Manifest;
use crate::package::{self, IntakeLimits, Package};

/// An opened package and the integration made from it.
///
/// The package owns the temporary folder of an unpacked zip, so it must live as long as any job
/// runs from `integration.root`.
#[derive(Debug)]
pub struct LoadedPackage {
    /// The validated package.
    pub package: Package,
    /// The integration: manifest, agentID, package folder and digest.
    pub integration: Integration,
}

/// Opens the package at `path` with the default intake limits and reads its manifest.
///
/// Intake reads and hashes files, so this runs on a blocking thread.
///
/// # Errors
///
/// [`Error::Package`] when intake rejects the package and [`Error::Manifest`] when its
/// `integration.toml` is invalid.
pub async fn load_package(path: &Path) -> Result<LoadedPackage, Error> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || load_package_blocking(&path))
        .await
        .unwrap_or_else(|join_error| std::panic::resume_unwind(join_error.into_panic()))
}

fn load_package_blocking(path: &Path) -> Result<LoadedPackage, Error> {
    let package = package::open(path, &IntakeLimits::default())?;
    let manifest = Manifest::load(package.root(), package.name_hint())?;
    let integration = Integration::new(
        manifest,
        package.root().to_path_buf(),
        package.digest().to_owned(),
    );
    Ok(LoadedPackage {
        package,
        integration,
    })
}
