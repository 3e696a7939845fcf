//! Test helpers for the `testagent` binary (crate `tests/agent`): build it statically once per
//! test process, and write a package folder that runs it on every backend.
//!
//! Include this file with `mod` (or `#[path = "…"] mod testagent;` from another crate's tests).
//! Building needs `cargo` and the Rust target `x86_64-unknown-linux-gnu` with a static glibc
//! (`libc6-dev` on Debian).

#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Target triple the test agent is built for. Naming it keeps `RUSTFLAGS` away from build
/// scripts and proc macros, which cannot be linked statically.
pub const TESTAGENT_TARGET: &str = "x86_64-unknown-linux-gnu";
/// Non-ASCII text that the `unicode` case puts in `url_label` (same as in the agent).
pub const UNICODE_LABEL: &str = "Grüße, 世界 ✓ 🚀";
/// Base image of the package that [`write_testagent_package`] writes: `FROM scratch` plus a
/// static busybox, present offline in the test machine's Docker and Podman.
pub const TESTAGENT_BASE_IMAGE: &str = "agentrun-busybox:latest";

/// Builds the statically linked test agent once per test process and returns its path.
///
/// Runs `cargo build -p agentrun-testagent --release --target x86_64-unknown-linux-gnu` with
/// `RUSTFLAGS="-C target-feature=+crt-static"` in a target folder of its own
/// (`$CARGO_TARGET_DIR/testagent`, else `<workspace>/target/testagent`), so its flags never
/// invalidate the outer build. Then checks that the binary has no ELF interpreter, which means
/// it needs no dynamic loader and runs in a `FROM scratch` image.
///
/// # Panics
///
/// When the build fails or the result is not static: the tests cannot run without it.
pub fn testagent_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(build_testagent)
}

fn build_testagent() -> PathBuf {
    let workspace = workspace_root();
    let target_dir = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir).join("testagent"),
        None => workspace.join("target").join("testagent"),
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());

    let output = Command::new(&cargo)
        .current_dir(&workspace)
        .args(["build", "-p", "agentrun-testagent", "--release", "--target"])
        .arg(TESTAGENT_TARGET)
        .arg("--target-dir")
        .arg(&target_dir)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .output()
        .unwrap_or_else(|error| {
            panic!("running {cargo:?} to build the test agent failed: {error}")
        });
    assert!(
        output.status.success(),
        "building the test agent failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );

    let binary = target_dir
        .join(TESTAGENT_TARGET)
        .join("release")
        .join("testagent");
    let bytes = fs::read(&binary)
        .unwrap_or_else(|error| panic!("reading {} failed: {error}", binary.display()));
    match elf_interpreter(&bytes) {
        Ok(None) => {}
        Ok(Some(interpreter)) => panic!(
            "{} is dynamically linked (interpreter {interpreter}): it cannot run FROM scratch",
            binary.display()
        ),
        Err(problem) => panic!("{} is not a usable ELF file: {problem}", binary.display()),
    }
    binary
}

/// Finds the workspace root: the nearest folder above this crate whose `Cargo.toml` declares
/// `[workspace]`.
fn workspace_root() -> PathBuf {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .ancestors()
        .find(|dir| {
            fs::read_to_string(dir.join("Cargo.toml"))
                .map(|text| text.lines().any(|line| line.trim() == "[workspace]"))
                .unwrap_or(false)
        })
        .unwrap_or_else(|| panic!("no workspace Cargo.toml above {}", manifest_dir.display()))
        .to_path_buf()
}

/// Returns the `PT_INTERP` path of a 64-bit little-endian ELF file, or `None` when it has none
/// (a static or static-pie executable).
pub fn elf_interpreter(bytes: &[u8]) -> Result<Option<String>, String> {
    const PT_INTERP: u32 = 3;
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" {
        return Err("no ELF header".to_owned());
    }
    if bytes[4] != 2 || bytes[5] != 1 {
        return Err("not a 64-bit little-endian ELF file".to_owned());
    }
    let read_u16 = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]) as usize;
    let read_u32 = |at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
    };
    let read_u64 = |at: usize| -> Option<usize> {
        Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?) as usize)
    };

    let program_headers = read_u64(0x20).ok_or("truncated ELF header")?;
    let entry_size = read_u16(0x36);
    let entries = read_u16(0x38);
    for index in 0..entries {
        let header = program_headers + index * entry_size;
        if read_u32(header).ok_or("truncated program header")? != PT_INTERP {
            continue;
        }
        let offset = read_u64(header + 0x08).ok_or("truncated program header")?;
        let size = read_u64(header + 0x20).ok_or("truncated program header")?;
        let path = bytes
            .get(offset..offset + size)
            .ok_or("interpreter path outside the file")?;
        let path = String::from_utf8_lossy(path)
            .trim_end_matches('\0')
            .to_owned();
        return Ok(Some(path));
    }
    Ok(None)
}

/// Writes a package folder that runs the test agent on every backend: the binary as
/// `testagent` and a `Dockerfile` (`FROM agentrun-busybox:latest`, `COPY testagent /testagent`,
/// `ENTRYPOINT ["/testagent"]`). Returns `dir`.
///
/// # Panics
///
/// When a file cannot be written.
pub fn write_testagent_package(dir: &Path) -> &Path {
    fs::create_dir_all(dir)
        .unwrap_or_else(|error| panic!("creating {} failed: {error}", dir.display()));
    let binary = dir.join("testagent");
    fs::copy(testagent_binary(), &binary).unwrap_or_else(|error| {
        panic!(
            "copying the test agent to {} failed: {error}",
            binary.display()
        )
    });
    fs::set_permissions(&binary, fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|error| panic!("making {} executable failed: {error}", binary.display()));
    let dockerfile = format!(
        "FROM {TESTAGENT_BASE_IMAGE}\nCOPY testagent /testagent\nENTRYPOINT [\"/testagent\"]\n"
    );
    fs::write(dir.join("Dockerfile"), dockerfile).unwrap_or_else(|error| {
        panic!(
            "writing the Dockerfile in {} failed: {error}",
            dir.display()
        )
    });
    dir
}

/// Returns a `work` message as the dispatcher sends it, with the payload fields in order.
pub fn work_message(job_id: u64, agent_id: &str, fields: &[(&str, &str)]) -> Vec<u8> {
    let payload: Vec<serde_json::Value> = fields
        .iter()
        .map(|(name, value)| serde_json::json!({"name": name, "value": value}))
        .collect();
    serde_json::json!({
        "type": "work",
        "agentID": agent_id,
        "payload": payload,
        "job_id": job_id,
    })
    .to_string()
    .into_bytes()
}

/// Returns a `describe` message as the dispatcher sends it.
pub fn describe_message(job_id: u64, agent_id: &str) -> Vec<u8> {
    serde_json::json!({"type": "describe", "agentID": agent_id, "job_id": job_id})
        .to_string()
        .into_bytes()
}

/// 64-bit FNV-1a hash as the `big` case computes it, as 16 hex digits.
pub fn fnv1a64_hex(bytes: &[u8]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}
