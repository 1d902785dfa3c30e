//! What each key of the store has used, the figures its limits are checked against: requests of
//! the last minute, requests running, tokens of the last minute and tokens of the current UTC day.
//! Tokens are counted as they are generated (a client that goes away mid-answer has still used
//! them) and exported per key as `inhaus:key_tokens_total{key,kind}`. The day's tokens are kept in
//! a file beside the store (`<store>.usage.json`, replaced atomically each time tokens are counted:
//! a small write per request), so a restart, even after `kill -9`, does not reset a daily quota.
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

const MINUTE: Duration = Duration::from_secs(60);
const DAY_SECS: u64 = 86_400;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KeyTokenLabels {
    pub key: String,
    pub kind: &'static str,
}

/// Tokens used per key and kind (`prompt`, `completion`).
pub type KeyTokens = Family<KeyTokenLabels, Counter>;

/// One key's usage.
#[derive(Default)]
pub struct Usage {
    /// When the requests of the last minute started.
    pub recent: VecDeque<Instant>,
    pub running: u32,
    /// Tokens of the last minute, with when they were used.
    minute_tokens: VecDeque<(Instant, u64)>,
    /// The UTC day (days since the epoch) `day_tokens` counts.
    day: u64,
    day_tokens: u64,
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Usage {
    /// Forgets what lies outside the windows at `now`.
    pub fn expire(&mut self, now: Instant) {
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= MINUTE)
        {
            self.recent.pop_front();
        }
        while self
            .minute_tokens
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) >= MINUTE)
        {
            self.minute_tokens.pop_front();
        }
        let today = unix_secs() / DAY_SECS;
        if self.day != today {
            self.day = today;
            self.day_tokens = 0;
        }
    }

    /// Seconds until fewer than `limit` requests of the last minute remain.
    pub fn requests_wait(&self, now: Instant) -> u64 {
        self.recent
            .front()
            .map_or(60, |t| 60 - now.duration_since(*t).as_secs().min(59))
    }

    /// Tokens of the last minute (after `expire`).
    pub fn minute_tokens(&self) -> u64 {
        self.minute_tokens.iter().map(|(_, n)| n).sum()
    }

    /// Seconds until the tokens of the last minute fall below `limit`.
    pub fn tokens_wait(&self, now: Instant, limit: u64) -> u64 {
        let mut left = self.minute_tokens();
        for (t, n) in &self.minute_tokens {
            left -= n;
            if left < limit {
                return 60 - now.duration_since(*t).as_secs().min(59);
            }
        }
        1
    }

    /// Tokens of the current UTC day (after `expire`).
    pub fn day_tokens(&self) -> u64 {
        self.day_tokens
    }

    fn add_tokens(&mut self, now: Instant, n: u64) {
        self.expire(now);
        match self.minute_tokens.back_mut() {
            // Tokens of the same second share an entry: the window stays short at any rate.
            Some((t, m)) if now.duration_since(*t) < Duration::from_secs(1) => *m += n,
            _ => self.minute_tokens.push_back((now, n)),
        }
        self.day_tokens += n;
    }
}

/// Seconds until the next UTC day begins.
pub fn seconds_to_next_day() -> u64 {
    DAY_SECS - unix_secs() % DAY_SECS
}

/// The file the day's usage is kept in.
#[derive(Default, Serialize, Deserialize)]
struct DayFile {
    day: u64,
    tokens: HashMap<String, u64>,
}

/// Every key's usage.
pub struct KeyUsage {
    pub per_key: Mutex<HashMap<String, Usage>>,
    tokens: KeyTokens,
    file: PathBuf,
    /// Held while the day file is written (one writer at a time).
    saving: Mutex<()>,
}

/// The day file of the store at `store`.
fn day_file(store: &Path) -> PathBuf {
    let mut p = store.as_os_str().to_owned();
    p.push(".usage.json");
    PathBuf::from(p)
}

impl KeyUsage {
    /// Usage of the keys of the store at `store`, today's tokens read back from its day file.
    pub fn open(store: &Path, tokens: KeyTokens) -> Self {
        let file = day_file(store);
        let mut per_key = HashMap::new();
        let today = unix_secs() / DAY_SECS;
        match std::fs::read_to_string(&file).map(|t| serde_json::from_str::<DayFile>(&t)) {
            Ok(Ok(d)) if d.day == today => {
                for (name, n) in d.tokens {
                    per_key.insert(
                        name,
                        Usage {
                            day: today,
                            day_tokens: n,
                            ..Usage::default()
                        },
                    );
                }
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(file = %file.display(), "key usage not read back: {e}"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(file = %file.display(), "key usage not read back: {e}"),
        }
        Self {
            per_key: Mutex::new(per_key),
            tokens,
            file,
            saving: Mutex::new(()),
        }
    }

    /// Counts `n` tokens of `kind` against the key `name`.
    pub fn add(&self, name: &str, kind: &'static str, n: u64) {
        if n == 0 {
            return;
        }
        self.tokens
            .get_or_create(&KeyTokenLabels {
                key: name.to_string(),
                kind,
            })
            .inc_by(n);
        {
            let mut per_key = self.per_key.lock().unwrap_or_else(|e| e.into_inner());
            per_key
                .entry(name.to_string())
                .or_default()
                .add_tokens(Instant::now(), n);
        }
        self.save();
    }

    /// Writes the day's tokens to the day file, atomically.
    fn save(&self) {
        let _one = self.saving.lock().unwrap_or_else(|e| e.into_inner());
        let today = unix_secs() / DAY_SECS;
        let day = {
            let per_key = self.per_key.lock().unwrap_or_else(|e| e.into_inner());
            DayFile {
                day: today,
                tokens: per_key
                    .iter()
                    .filter(|(_, u)| u.day == today && u.day_tokens > 0)
                    .map(|(k, u)| (k.clone(), u.day_tokens))
                    .collect(),
            }
        };
        let tmp = self.file.with_extension("tmp");
        let written = serde_json::to_vec(&day)
            .map_err(std::io::Error::other)
            .and_then(|b| std::fs::write(&tmp, b))
            .and_then(|_| std::fs::rename(&tmp, &self.file));
        if let Err(e) = written {
            tracing::warn!(file = %self.file.display(), "key usage not saved: {e}");
        }
    }

    /// A counter of one request's generated tokens against the key `name`.
    pub fn meter(self: &Arc<Self>, name: &str) -> TokenMeter {
        TokenMeter {
            usage: self.clone(),
            name: name.to_string(),
        }
    }
}

/// Counts a request's tokens against its key as they are used.
#[derive(Clone)]
pub struct TokenMeter {
    usage: Arc<KeyUsage>,
    name: String,
}

impl TokenMeter {
    pub fn prompt(&self, n: usize) {
        self.usage.add(&self.name, "prompt", n as u64);
    }
    pub fn completion(&self, n: usize) {
        self.usage.add(&self.name, "completion", n as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_count_in_the_minute_and_the_day_and_the_wait_names_when_enough_have_aged_out() {
        let mut u = Usage::default();
        let t0 = Instant::now();
        u.add_tokens(t0, 40);
        u.add_tokens(t0 + Duration::from_secs(20), 30);
        let now = t0 + Duration::from_secs(30);
        u.expire(now);
        assert_eq!(u.minute_tokens(), 70);
        assert_eq!(u.day_tokens(), 70);
        // Under 50 once the first 40 age out, 30 s from now; under 20 only when both have.
        assert_eq!(u.tokens_wait(now, 50), 30);
        assert_eq!(u.tokens_wait(now, 20), 50);
        u.expire(t0 + Duration::from_secs(61));
        assert_eq!(u.minute_tokens(), 30);
        assert_eq!(u.day_tokens(), 70, "the day keeps what the minute forgot");
    }

    #[test]
    fn the_days_tokens_survive_a_restart() {
        let dir = std::env::temp_dir().join(format!("inhaus-key-usage-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let store = dir.join("keys.json");
        {
            let u = KeyUsage::open(&store, KeyTokens::default());
            u.add("a", "prompt", 12);
            u.add("a", "completion", 5);
        }
        let u = KeyUsage::open(&store, KeyTokens::default());
        let per_key = u.per_key.lock().expect("lock");
        assert_eq!(per_key.get("a").map(Usage::day_tokens), Some(17));
        drop(per_key);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
