//! Package intake: turns a folder or a `.zip` upload into a validated package folder with a
//! content digest.

mod archive;
mod error;
mod layout;
mod limits;
mod names;
mod tree;

pub use error::{NameRule, PackageError, SpecialKind};
pub use limits::{
    IntakeLimits, DEFAULT_MAX_ARCHIVE_BYTES, DEFAULT_MAX_ENTRIES, DEFAULT_MAX_RATIO,
    DEFAULT_MAX_UNPACKED_BYTES, DEFAULT_RATIO_FLOOR_BYTES,
};
