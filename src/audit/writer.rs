//! The audit log's writer: records arrive through a bounded channel and one thread appends them,
//! chained, to `DIR/audit-YYYYMMDD-NNNN.jsonl`, a new file each day and whenever one reaches its
//! size limit (the chain runs on across files). Requests never wait for the disk. If a record
//! cannot be written (disk full, channel overflowing), the log turns unhealthy and, unless the
//! server was told to fail open, new requests are refused with 503 rather than served unlogged.
use super::{files, record_hash, GENESIS};
use serde_json::{json, Value};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Records waiting for the writer at most.
const QUEUE: usize = 65_536;

#[derive(Clone, Debug)]
pub struct AuditOptions {
    pub dir: PathBuf,
    /// A file is closed and a new one begun past this size.
    pub max_file_bytes: u64,
    /// Serve on (unlogged) when the log cannot be written, instead of refusing with 503.
    pub fail_open: bool,
    /// Keep each request's body and output, encrypted per subject (`content`).
    pub content: bool,
}

/// Year, month and day of a day count since 1970-01-01 (Howard Hinnant's civil_from_days).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` and `YYYYMMDD` of a time.
pub fn utc(t: SystemTime) -> (String, String) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (y, m, day) = civil(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    (
        format!(
            "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
            s / 3600,
            s / 60 % 60,
            s % 60,
            d.subsec_millis()
        ),
        format!("{y:04}{m:02}{day:02}"),
    )
}

/// Where the chain stands: the last record's number and hash.
struct Tail {
    seq: u64,
    hash: String,
}

/// The last complete record of the newest file (a crash may have torn the line after it), and
/// whether that file ends cleanly (a torn file is not appended to).
fn resume(dir: &Path) -> std::io::Result<(Tail, Option<PathBuf>)> {
    let mut tail = Tail {
        seq: 0,
        hash: GENESIS.to_string(),
    };
    // The newest file holding a complete record (a file may hold only a torn line).
    for path in files(dir)?.into_iter().rev() {
        let text = std::fs::read_to_string(&path)?;
        let last = text
            .lines()
            .rev()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v.is_object());
        if let Some(v) = last {
            tail.seq = v["seq"].as_u64().unwrap_or(0);
            tail.hash = v["hash"].as_str().unwrap_or(GENESIS).to_string();
            let clean = text.ends_with('\n');
            return Ok((tail, clean.then_some(path)));
        }
    }
    Ok((tail, None))
}

struct Writer {
    opts: AuditOptions,
    keys: super::content::SubjectKeys,
    tail: Tail,
    file: Option<(File, PathBuf, String, u64)>, // file, path, day, bytes written
}

impl Writer {
    /// The file for a record of `day`: the open one, or a new one (next number of the day).
    fn file_for(&mut self, day: &str) -> std::io::Result<&mut File> {
        let rotate = match &self.file {
            Some((_, _, d, bytes)) => d != day || *bytes >= self.opts.max_file_bytes,
            None => true,
        };
        if rotate {
            let taken = files(&self.opts.dir)?;
            let n = (1..)
                .find(|n| {
                    let p = self.opts.dir.join(format!("audit-{day}-{n:04}.jsonl"));
                    !taken.contains(&p)
                })
                .unwrap_or(1);
            let path = self.opts.dir.join(format!("audit-{day}-{n:04}.jsonl"));
            let f = OpenOptions::new()
                .create_new(true)
                .append(true)
                .open(&path)?;
            self.file = Some((f, path, day.to_string(), 0));
        }
        match &mut self.file {
            Some((f, ..)) => Ok(f),
            None => Err(std::io::Error::other("no audit file")),
        }
    }

    fn write(&mut self, mut record: Value) -> std::io::Result<()> {
        // Content is sealed for its subject here, off the request path; it is never written plain.
        if let Some(o) = record.as_object_mut() {
            let plain = o.remove("content_plain");
            let subject = o.remove("subject");
            if let Some(plain) = plain.filter(|_| self.opts.content) {
                let subject = subject
                    .as_ref()
                    .and_then(Value::as_str)
                    .or_else(|| o.get("key").and_then(Value::as_str))
                    .unwrap_or("anonymous")
                    .to_string();
                o.insert("content".into(), self.keys.seal(&subject, &plain)?);
            }
        }
        let (time, day) = utc(SystemTime::now());
        record["seq"] = json!(self.tail.seq + 1);
        record["time"] = json!(time);
        record["prev"] = json!(self.tail.hash);
        let hash = record_hash(&record, &self.tail.hash);
        record["hash"] = json!(hash);
        let mut line = record.to_string();
        line.push('\n');
        let f = self.file_for(&day)?;
        f.write_all(line.as_bytes())?;
        if let Some((_, _, _, bytes)) = &mut self.file {
            *bytes += line.len() as u64;
        }
        self.tail = Tail {
            seq: self.tail.seq + 1,
            hash,
        };
        Ok(())
    }
}

/// The audit log of a running server.
pub struct AuditLog {
    tx: SyncSender<Value>,
    healthy: Arc<AtomicBool>,
    fail_open: bool,
    content: bool,
}

impl AuditLog {
    /// Opens (creates) the folder, continues the chain where it ends, and starts the writer.
    pub fn open(opts: AuditOptions) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&opts.dir).map_err(|e| {
            anyhow::anyhow!("creating the audit folder {}: {e}", opts.dir.display())
        })?;
        let (tail, clean) = resume(&opts.dir)
            .map_err(|e| anyhow::anyhow!("reading the audit folder {}: {e}", opts.dir.display()))?;
        // Continue the newest file when it ends cleanly and is today's and not full.
        let (_, today) = utc(SystemTime::now());
        let file = match clean {
            Some(p) => {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                let bytes = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(u64::MAX);
                if name.starts_with(&format!("audit-{today}-")) && bytes < opts.max_file_bytes {
                    let f = OpenOptions::new().append(true).open(&p)?;
                    Some((f, p, today, bytes))
                } else {
                    None
                }
            }
            None => None,
        };
        tracing::info!(dir = %opts.dir.display(), records = tail.seq, "audit log open");
        let (tx, rx) = sync_channel::<Value>(QUEUE);
        let healthy = Arc::new(AtomicBool::new(true));
        let writer = Writer {
            keys: super::content::SubjectKeys::new(&opts.dir),
            opts: opts.clone(),
            tail,
            file,
        };
        let h = healthy.clone();
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || run(writer, rx, h))?;
        Ok(Self {
            tx,
            healthy,
            fail_open: opts.fail_open,
            content: opts.content,
        })
    }

    /// Queues a record (never waits).
    pub fn submit(&self, record: Value) {
        match self.tx.try_send(record) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                tracing::error!("audit log: {QUEUE} records waiting for the disk; refusing requests until it catches up");
                self.healthy.store(false, Ordering::Release);
            }
            Err(TrySendError::Disconnected(_)) => {
                tracing::error!("audit log: the writer has stopped");
                self.healthy.store(false, Ordering::Release);
            }
        }
    }

    /// Whether records keep requests and outputs (encrypted).
    pub fn keeps_content(&self) -> bool {
        self.content
    }

    /// Whether requests may be served (the log works, or the server fails open).
    pub fn accepting(&self) -> bool {
        self.fail_open || self.healthy.load(Ordering::Acquire)
    }
}

fn run(mut w: Writer, rx: Receiver<Value>, healthy: Arc<AtomicBool>) {
    while let Ok(record) = rx.recv() {
        match w.write(record) {
            Ok(()) => {
                if !healthy.swap(true, Ordering::AcqRel) {
                    tracing::warn!("audit log: writing again");
                }
            }
            Err(e) => {
                tracing::error!("audit log: a record could not be written: {e}");
                healthy.store(false, Ordering::Release);
                w.file = None; // try a fresh file next time
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{verify, VerifyError};

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("inhaus-audit-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn write_n(d: &Path, n: usize, max: u64) {
        let before = verify(d).map(|v| v.records).unwrap_or(0);
        let log = AuditLog::open(AuditOptions {
            dir: d.to_path_buf(),
            max_file_bytes: max,
            fail_open: false,
            content: false,
        })
        .expect("open");
        for i in 0..n {
            log.submit(json!({ "request_id": format!("r{i}"), "status": 200 }));
        }
        drop(log);
        // The writer drains the channel and ends when the sender is gone.
        let want = before + n as u64;
        let t0 = std::time::Instant::now();
        while verify(d).map(|v| v.records).unwrap_or(0) < want && t0.elapsed().as_secs() < 10 {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    #[test]
    fn the_chain_runs_across_files_and_restarts_and_locates_an_edit() {
        let d = dir("chain");
        write_n(&d, 30, 1500); // small files: several rotations
        write_n(&d, 5, 1500); // a restart continues the chain
        let v = verify(&d).expect("verifies");
        assert_eq!(v.records, 35);
        assert!(v.files > 2, "{v:?}");
        // Edit one byte of record 12.
        let all = files(&d).expect("files");
        let (path, line) = all
            .iter()
            .find_map(|p| {
                let t = std::fs::read_to_string(p).ok()?;
                let i = t.lines().position(|l| l.contains("\"seq\":12"))?;
                Some((p.clone(), i))
            })
            .expect("record 12");
        let text = std::fs::read_to_string(&path).expect("read");
        let edited = text.replacen("\"status\":200,\"seq\":12", "\"status\":500,\"seq\":12", 1);
        let edited = if edited == text {
            let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
            lines[line] = lines[line].replacen("200", "500", 1);
            lines.join("\n") + "\n"
        } else {
            edited
        };
        std::fs::write(&path, edited).expect("write");
        match verify(&d) {
            Err(VerifyError::Edited { seq, line: l, .. }) => {
                assert_eq!((seq, l), (12, line + 1))
            }
            other => panic!("the edit was not located: {other:?}"),
        }
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_torn_last_line_is_a_torn_tail_and_a_removed_record_breaks_the_chain() {
        let d = dir("torn");
        write_n(&d, 4, 1 << 20);
        let path = files(&d).expect("files").pop().expect("a file");
        let mut text = std::fs::read_to_string(&path).expect("read");
        text.push_str("{\"request_id\":\"r4\",\"sta"); // killed mid-write
        std::fs::write(&path, &text).expect("write");
        let v = verify(&d).expect("a torn tail is not tampering");
        assert_eq!((v.records, v.torn_tails.len()), (4, 1));
        // A restart starts a new file and chains to the last complete record.
        write_n(&d, 6, 1 << 20);
        let v = verify(&d).expect("verifies after the restart");
        assert_eq!(v.records, 10, "{v:?}");
        // Remove a record in the middle.
        let path = files(&d).expect("files").pop().expect("file");
        let text = std::fs::read_to_string(&path).expect("read");
        let mut lines: Vec<&str> = text.lines().collect();
        lines.remove(1);
        std::fs::write(&path, lines.join("\n") + "\n").expect("write");
        assert!(matches!(verify(&d), Err(VerifyError::Broken { .. })));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn utc_dates() {
        let t = UNIX_EPOCH + std::time::Duration::from_millis(1_795_840_000_123);
        assert_eq!(utc(t).0, "2026-11-28T04:26:40.123Z");
        assert_eq!(utc(UNIX_EPOCH).1, "19700101");
    }
}
