//! Repo ids (`org/name[@revision]`) resolved through the Hugging Face cache, laid out as the hub
//! client libraries lay it out (`models--org--name/{refs,snapshots,blobs}`) under `HF_HUB_CACHE`, or
//! `HF_HOME/hub`, or `~/.cache/huggingface/hub`. The cache is looked at first; with
//! `HF_HUB_OFFLINE=1` nothing else is tried, otherwise the missing files are downloaded with the
//! `hf-hub` crate (with progress bars), and where that fails the error names the missing files.
use std::path::{Path, PathBuf};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum HubError {
    #[error(
        "{repo}@{revision} is not in the Hugging Face cache {cache} (missing: {}){}",
        missing.join(", "),
        if *offline { "; HF_HUB_OFFLINE is set, so nothing was downloaded" } else { "" }
    )]
    Missing {
        repo: String,
        revision: String,
        cache: String,
        missing: Vec<String>,
        offline: bool,
    },
    #[error("downloading {repo}@{revision}: {error} (still missing: {})", missing.join(", "))]
    Download {
        repo: String,
        revision: String,
        error: String,
        missing: Vec<String>,
    },
}

/// A repo id and the revision (branch, tag or commit) asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepoRef {
    pub id: String,
    pub revision: String,
}

impl RepoRef {
    /// `org/name` or `org/name@revision`; `None` for anything else (paths, aliases).
    pub fn parse(s: &str) -> Option<Self> {
        let (id, revision) = match s.split_once('@') {
            Some((id, rev)) if !rev.is_empty() => (id, rev),
            Some(_) => return None,
            None => (s, "main"),
        };
        let (org, name) = id.split_once('/')?;
        let part_ok = |p: &str| {
            !p.is_empty()
                && !p.starts_with(['.', '-'])
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        (part_ok(org) && part_ok(name) && !name.contains('/')).then(|| Self {
            id: id.to_string(),
            revision: revision.to_string(),
        })
    }

    fn folder(&self) -> String {
        format!("models--{}", self.id.replace('/', "--"))
    }
}

/// A repo's files at one commit, in the cache.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub dir: PathBuf,
    pub commit: String,
}

/// The hub cache folder the environment names.
pub fn cache_dir() -> PathBuf {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(d) = var("HF_HUB_CACHE") {
        return d;
    }
    if let Some(h) = var("HF_HOME") {
        return h.join("hub");
    }
    let base = var("XDG_CACHE_HOME")
        .or_else(|| var("HOME").map(|h| h.join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    base.join("huggingface").join("hub")
}

/// Whether `HF_HUB_OFFLINE` forbids downloads.
pub fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .map(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "on" | "yes" | "true"))
        .unwrap_or(false)
}

/// The snapshot of `repo` in `cache`: the revision as a commit folder, or the commit its ref names.
fn cached_snapshot(cache: &Path, repo: &RepoRef) -> Option<Snapshot> {
    let root = cache.join(repo.folder());
    let is_commit =
        repo.revision.len() == 40 && repo.revision.chars().all(|c| c.is_ascii_hexdigit());
    let commit = if is_commit {
        repo.revision.clone()
    } else {
        std::fs::read_to_string(root.join("refs").join(&repo.revision))
            .ok()?
            .trim()
            .to_string()
    };
    let dir = root.join("snapshots").join(&commit);
    dir.is_dir().then_some(Snapshot { dir, commit })
}

/// Files a model folder needs that `dir` lacks (all of them when there is no folder).
fn missing_files(dir: Option<&Path>) -> Vec<String> {
    let Some(dir) = dir else {
        return vec![
            "config.json".into(),
            "tokenizer.json".into(),
            "model.safetensors (or model.safetensors.index.json and its shards)".into(),
        ];
    };
    let mut missing: Vec<String> = ["config.json", "tokenizer.json"]
        .into_iter()
        .filter(|f| !dir.join(f).is_file())
        .map(str::to_string)
        .collect();
    if let Err(e) = inhaus_models::decoder::weights::safetensors_files(dir) {
        missing.push(e);
    }
    missing
}

/// Files worth having besides the required ones (absent from many repos).
const OPTIONAL: &[&str] = &[
    "tokenizer_config.json",
    "generation_config.json",
    "chat_template.jinja",
    "special_tokens_map.json",
];

/// Downloads what the folder needs into the cache.
fn download(cache: &Path, repo: &RepoRef) -> Result<(), String> {
    use hf_hub::api::sync::ApiBuilder;
    use hf_hub::{Cache, Repo, RepoType};
    let mut builder = ApiBuilder::from_cache(Cache::new(cache.to_path_buf())).with_progress(true);
    if let Ok(endpoint) = std::env::var("HF_ENDPOINT") {
        builder = builder.with_endpoint(endpoint);
    }
    if let Ok(token) = std::env::var("HF_TOKEN") {
        builder = builder.with_token(Some(token));
    }
    let api = builder.build().map_err(|e| e.to_string())?;
    let r = api.repo(Repo::with_revision(
        repo.id.clone(),
        RepoType::Model,
        repo.revision.clone(),
    ));
    for f in ["config.json", "tokenizer.json"] {
        r.get(f).map_err(|e| format!("{f}: {e}"))?;
    }
    for f in OPTIONAL {
        if let Err(e) = r.get(f) {
            tracing::debug!(repo = %repo.id, file = f, "optional file not downloaded: {e}");
        }
    }
    match r.get("model.safetensors.index.json") {
        Ok(index) => {
            let text = std::fs::read_to_string(&index).map_err(|e| e.to_string())?;
            let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
            let mut shards: Vec<&str> = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .map(|m| m.values().filter_map(|f| f.as_str()).collect())
                .unwrap_or_default();
            shards.sort_unstable();
            shards.dedup();
            for s in shards {
                r.get(s).map_err(|e| format!("{s}: {e}"))?;
            }
        }
        Err(_) => {
            r.get("model.safetensors")
                .map_err(|e| format!("model.safetensors: {e}"))?;
        }
    }
    Ok(())
}

/// The local folder of `repo`: from the cache, downloading what is missing unless offline.
pub fn resolve(repo: &RepoRef) -> Result<Snapshot, HubError> {
    let cache = cache_dir();
    let found = cached_snapshot(&cache, repo);
    let missing = missing_files(found.as_ref().map(|s| s.dir.as_path()));
    if let (Some(s), true) = (&found, missing.is_empty()) {
        tracing::info!(repo = %repo.id, commit = %s.commit, "found in the Hugging Face cache");
        return Ok(s.clone());
    }
    if offline() {
        return Err(HubError::Missing {
            repo: repo.id.clone(),
            revision: repo.revision.clone(),
            cache: cache.display().to_string(),
            missing,
            offline: true,
        });
    }
    tracing::info!(repo = %repo.id, revision = %repo.revision, "downloading into the Hugging Face cache");
    let downloaded = download(&cache, repo);
    let found = cached_snapshot(&cache, repo);
    let missing = missing_files(found.as_ref().map(|s| s.dir.as_path()));
    match (found, downloaded) {
        (Some(s), _) if missing.is_empty() => Ok(s),
        (_, Err(error)) => Err(HubError::Download {
            repo: repo.id.clone(),
            revision: repo.revision.clone(),
            error,
            missing,
        }),
        (_, Ok(())) => Err(HubError::Missing {
            repo: repo.id.clone(),
            revision: repo.revision.clone(),
            cache: cache.display().to_string(),
            missing,
            offline: false,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids_parse_and_paths_do_not() {
        assert_eq!(
            RepoRef::parse("Qwen/Qwen2.5-0.5B-Instruct@abc"),
            Some(RepoRef {
                id: "Qwen/Qwen2.5-0.5B-Instruct".into(),
                revision: "abc".into()
            })
        );
        assert_eq!(
            RepoRef::parse("org/name").map(|r| r.revision),
            Some("main".into())
        );
        for not in [
            "qwen2.5-coder-0.5b-instruct",
            "/abs/path",
            "./a/b",
            "a/b/c",
            "a/",
            "org/name@",
        ] {
            assert_eq!(RepoRef::parse(not), None, "{not}");
        }
    }
}
