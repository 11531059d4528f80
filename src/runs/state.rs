//! `state.json`: what a run is doing, written by its worker (atomically, with a heartbeat),
//! and how a reader tells a dead worker from a live one.

use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::{LOG_FILE, STATE_FILE, format_utc, now_secs};

/// Seconds between two heartbeats of a worker.
pub const HEARTBEAT_SECS: u64 = 2;
/// A running worker whose heartbeat is older than this is dead.
pub const STALE_SECS: u64 = 60;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Running,
    Finished,
    Stopped,
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Running => "running",
            Status::Finished => "finished",
            Status::Stopped => "stopped",
            Status::Failed => "failed",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The contents of `state.json`. Times are seconds since the Unix epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    pub id: String,
    pub state: Status,
    /// The worker's process id (unset until the worker has started).
    #[serde(default)]
    pub pid: Option<u32>,
    /// The machine the worker runs on (the pid means nothing elsewhere).
    #[serde(default)]
    pub host: Option<String>,
    pub started: u64,
    /// The worker's last heartbeat.
    pub updated: u64,
    #[serde(default)]
    pub step: usize,
    #[serde(default)]
    pub total_steps: Option<usize>,
    /// Training loss of the last step.
    #[serde(default)]
    pub loss: Option<f64>,
    /// Why the run failed, or a note on how it ended.
    #[serde(default)]
    pub message: Option<String>,
    /// The exports written so far.
    #[serde(default)]
    pub exports: Vec<String>,
    #[serde(default)]
    pub checkpoint: Option<String>,
    /// The configuration file the run was started from.
    #[serde(default)]
    pub source: Option<String>,
    /// A running worker holds training between two steps (`softtune pause`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
}

impl RunState {
    /// A fresh running state without a worker yet.
    pub fn new(id: &str, now: u64) -> Self {
        Self {
            id: id.to_string(),
            state: Status::Running,
            pid: None,
            host: None,
            started: now,
            updated: now,
            step: 0,
            total_steps: None,
            loss: None,
            message: None,
            exports: Vec::new(),
            checkpoint: None,
            source: None,
            paused: false,
        }
    }

    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(STATE_FILE);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("{}: cannot read the run state", path.display()))?;
        serde_json::from_str(&text).with_context(|| {
            format!(
                "{}: not a run state; the run folder is damaged",
                path.display()
            )
        })
    }

    /// Writes `state.json` atomically (a reader never sees half a file).
    pub fn write(&self, dir: &Path) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(self)?;
        crate::export::write_atomic(&dir.join(STATE_FILE), &bytes)
    }
}

/// Reads a run's state; if it says running but its worker is gone (process ended on this
/// machine, or no heartbeat for [`STALE_SECS`]), records and returns it as failed with
/// the reason.
pub fn load_checked(dir: &Path) -> Result<RunState> {
    let st = RunState::read(dir)?;
    if dead_reason(&st, now_secs()).is_none() {
        return Ok(st);
    }
    // The worker writes its final state before it exits: read again now that it is gone.
    let mut st = RunState::read(dir)?;
    let now = now_secs();
    if let Some(reason) = dead_reason(&st, now) {
        let mut msg = reason;
        if let Some(last) = last_log_line(&dir.join(LOG_FILE)) {
            msg += &format!("; last line of {LOG_FILE}: {last}");
        }
        st.state = Status::Failed;
        st.paused = false;
        st.message = Some(msg);
        st.updated = now;
        // Best effort: a read-only folder still gets the right answer, just not recorded.
        let _ = st.write(dir);
    }
    Ok(st)
}

/// Why a state that says running belongs to a dead worker, if it does.
pub fn dead_reason(st: &RunState, now: u64) -> Option<String> {
    if st.state != Status::Running {
        return None;
    }
    let since = format_utc(st.updated);
    if let (Some(pid), Some(host)) = (st.pid, &st.host)
        && hostname().as_ref() == Some(host)
        && !process_alive(pid)
    {
        return Some(format!(
            "worker died: process {pid} is gone (last heartbeat {since})"
        ));
    }
    if now.saturating_sub(st.updated) > STALE_SECS {
        return Some(if st.pid.is_none() {
            format!("the worker never started (run created {since})")
        } else {
            format!("worker died (no heartbeat since {since})")
        });
    }
    None
}

/// The last non-empty line of a log file, shortened.
fn last_log_line(path: &Path) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(4096))).ok()?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf);
    let line = text.lines().rev().find(|l| !l.trim().is_empty())?.trim();
    let mut s: String = line.chars().take(300).collect();
    if s.len() < line.len() {
        s.push('…');
    }
    Some(s)
}

/// This machine's name.
pub fn hostname() -> Option<String> {
    #[cfg(unix)]
    {
        let mut buf = [0u8; 256];
        // SAFETY: the buffer is valid for its length; gethostname writes at most that much.
        let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
        if rc != 0 {
            return None;
        }
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        Some(String::from_utf8_lossy(&buf[..end]).into_owned())
    }
    #[cfg(not(unix))]
    {
        std::env::var("COMPUTERNAME").ok()
    }
}

/// Whether process `pid` exists on this machine and is not a zombie.
pub fn process_alive(pid: u32) -> bool {
    #[cfg(target_os = "linux")]
    {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            // Field 3, after the parenthesised command name, is the process state.
            Ok(stat) => {
                let state = stat
                    .rfind(')')
                    .and_then(|i| stat[i + 1..].split_whitespace().next());
                return !matches!(state, Some("Z") | Some("X") | Some("x"));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return false,
            Err(_) => {}
        }
    }
    #[cfg(unix)]
    {
        let Ok(p) = libc::pid_t::try_from(pid) else {
            return false;
        };
        // SAFETY: signal 0 only checks that the process exists.
        let rc = unsafe { libc::kill(p, 0) };
        rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_worker_is_detected() {
        let now = 1_000_000;
        let mut st = RunState::new("x", now);
        assert_eq!(dead_reason(&st, now + 10), None, "just created");
        assert!(
            dead_reason(&st, now + STALE_SECS + 1)
                .unwrap()
                .contains("never started")
        );
        st.pid = Some(std::process::id());
        st.host = hostname();
        assert_eq!(dead_reason(&st, now + 10), None, "this process is alive");
        assert!(
            dead_reason(&st, now + STALE_SECS + 1)
                .unwrap()
                .contains("no heartbeat since")
        );
        st.pid = Some(u32::MAX - 1);
        assert!(dead_reason(&st, now).unwrap().contains("is gone"));
        st.host = Some("another-machine.invalid".into());
        assert_eq!(
            dead_reason(&st, now),
            None,
            "a pid of another machine is not checked"
        );
        st.state = Status::Finished;
        assert_eq!(dead_reason(&st, now + 10 * STALE_SECS), None);
    }
}
