//! Detached runs: a training worker in its own session that outlives the terminal, and the
//! run folders it leaves behind.
//!
//! A run folder (`<data dir>/runs/<stem>-<YYYYmmdd-HHMMSS>/`) holds `config.toml` (the
//! validated configuration with absolute paths), `state.json` ([`state::RunState`]: state,
//! pid, heartbeat, progress, exports), `events.jsonl` (the engine's typed events),
//! `worker.log` (the worker's plain progress lines and errors), `worker.lock` (held by the
//! live worker, see [`lock_worker`]) and the engine's run files
//! (token cache, `heldout.u32`, `checkpoint.safetensors`). The exports go to the
//! configuration's output folder, as in a foreground run.
//!
//! * [`launch`]: validate and plan in the launching process, create the folder, start the
//!   worker (`softtune worker DIR`) in a new session.
//! * [`worker`]: the worker's body: engine + `events.jsonl` + `worker.log` + `state.json`
//!   with a heartbeat.
//! * [`launch::resume`]: a stopped or failed run's worker started again in its folder,
//!   from its checkpoint.
//! * [`state`]: reading state, and telling a dead worker from a running one.
//! * [`tail`]: following `events.jsonl` as it grows.

pub mod launch;
pub mod state;
pub mod tail;
pub mod worker;

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Result, anyhow, bail};

use crate::device::DeviceSpec;
use crate::train::{Outcome, Plan};
use state::{RunState, Status};

/// The run folder's files.
pub const STATE_FILE: &str = "state.json";
pub const CONFIG_FILE: &str = "config.toml";
pub const EVENTS_FILE: &str = "events.jsonl";
pub const LOG_FILE: &str = "worker.log";
/// Locked by the run's worker while it lives (an advisory `flock`, released by the
/// operating system when the worker ends, however it ends).
pub const LOCK_FILE: &str = "worker.lock";

/// Takes the run folder's worker lock without waiting: `Some(lock)` (held until dropped),
/// or `None` when a live worker holds it. Two workers can never train one run folder.
pub fn lock_worker(dir: &Path) -> Result<Option<std::fs::File>> {
    let path = dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| anyhow!("{}: cannot open the worker lock ({e})", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a descriptor this function owns; no memory is involved.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::WouldBlock {
                return Ok(None);
            }
            bail!("{}: cannot lock ({e})", path.display());
        }
    }
    Ok(Some(file))
}

/// softtune's data folder: `SOFTTUNE_DATA_DIR`, else the OS data folder
/// (`~/.local/share/softtune` on Linux).
pub fn data_dir() -> Result<PathBuf> {
    crate::config::profile::os_dir(
        "SOFTTUNE_DATA_DIR",
        directories::ProjectDirs::data_dir,
        "runs",
    )
}

/// The folder holding every run folder.
pub fn runs_dir() -> Result<PathBuf> {
    Ok(data_dir()?.join("runs"))
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// (year, month, day) of a day count since 1970-01-01 (proleptic Gregorian calendar).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// (year, month, day, hour, minute, second) in UTC.
pub fn utc_parts(secs: u64) -> (i64, u32, u32, u32, u32, u32) {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    (
        y,
        m,
        d,
        (rem / 3600) as u32,
        (rem % 3600 / 60) as u32,
        (rem % 60) as u32,
    )
}

/// `2026-11-26 10:15:00 UTC`.
pub fn format_utc(secs: u64) -> String {
    let (y, mo, d, h, mi, s) = utc_parts(secs);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02} UTC")
}

/// `20261126-101500`, the time part of a run id.
pub fn id_stamp(secs: u64) -> String {
    let (y, mo, d, h, mi, s) = utc_parts(secs);
    format!("{y:04}{mo:02}{d:02}-{h:02}{mi:02}{s:02}")
}

/// One run folder and its (checked) state.
#[derive(Debug, Clone)]
pub struct RunInfo {
    pub id: String,
    pub dir: PathBuf,
    pub state: RunState,
}

impl RunInfo {
    /// Reads a run folder; a worker that died is reported (and recorded) as failed.
    pub fn open(dir: &Path) -> Result<Self> {
        let id = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| dir.display().to_string());
        let state = state::load_checked(dir)?;
        Ok(Self {
            id,
            dir: dir.to_path_buf(),
            state,
        })
    }

    pub fn events_path(&self) -> PathBuf {
        self.dir.join(EVENTS_FILE)
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join(LOG_FILE)
    }

    /// One plain line: id, state, progress, last loss, start time, output files and, for a
    /// failed run, the reason.
    pub fn summary_line(&self) -> String {
        let s = &self.state;
        let progress = match s.total_steps {
            Some(t) if t > 0 => format!(
                "step {}/{t} ({:.0}%)",
                s.step,
                100.0 * s.step as f64 / t as f64
            ),
            _ => format!("step {}/?", s.step),
        };
        let loss = s
            .loss
            .map_or("loss -".to_string(), |l| format!("loss {l:.4}"));
        let shown = if s.paused && s.state == Status::Running {
            "paused"
        } else {
            s.state.as_str()
        };
        let mut line = format!(
            "{}  {:<8}  {progress}  {loss}  started {}",
            self.id,
            shown,
            format_utc(s.started)
        );
        if !s.exports.is_empty() {
            line += &format!("  -> {}", s.exports.join(", "));
        }
        if let (Status::Failed, Some(m)) = (s.state, &s.message) {
            line += &format!("  reason: {m}");
        }
        line
    }
}

/// Every run with a `state.json` under [`runs_dir`], newest first.
pub fn list() -> Result<Vec<RunInfo>> {
    let dir = runs_dir()?;
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if !path.join(STATE_FILE).is_file() {
            continue;
        }
        match RunInfo::open(&path) {
            Ok(r) => out.push(r),
            Err(e) => {
                // A damaged state file still shows up, with the reason.
                let id = entry.file_name().to_string_lossy().into_owned();
                let mut st = RunState::new(&id, 0);
                st.state = Status::Failed;
                st.message = Some(format!("{e:#}"));
                out.push(RunInfo {
                    id,
                    dir: path,
                    state: st,
                });
            }
        }
    }
    out.sort_by(|a, b| {
        b.state
            .started
            .cmp(&a.state.started)
            .then_with(|| b.id.cmp(&a.id))
    });
    Ok(out)
}

/// The run named by `arg`: a run folder path, an id, or a unique prefix of one; `None`
/// means the newest run.
pub fn find(arg: Option<&str>) -> Result<RunInfo> {
    let dir = runs_dir()?;
    let Some(arg) = arg else {
        return list()?.into_iter().next().ok_or_else(|| {
            anyhow!(
                "no runs in {}; start one with `softtune train --config FILE`",
                dir.display()
            )
        });
    };
    let as_path = Path::new(arg);
    if as_path.join(STATE_FILE).is_file() && (as_path.is_absolute() || arg.contains('/')) {
        return RunInfo::open(as_path);
    }
    if !arg.is_empty() && !arg.contains('/') && dir.join(arg).join(STATE_FILE).is_file() {
        return RunInfo::open(&dir.join(arg));
    }
    let matches: Vec<String> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(arg) && dir.join(n).join(STATE_FILE).is_file())
                .collect()
        })
        .unwrap_or_default();
    match matches.as_slice() {
        [one] => RunInfo::open(&dir.join(one)),
        [] => bail!(
            "no run \"{arg}\" in {}; `softtune runs` lists them",
            dir.display()
        ),
        many => bail!(
            "\"{arg}\" matches {} runs ({}); give more of the id",
            many.len(),
            many.join(", ")
        ),
    }
}

/// What a run's worker can be asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Finish the current step, write a checkpoint and both exports, end as stopped (SIGTERM).
    Stop,
    /// Hold training between two steps (SIGUSR1).
    Pause,
    /// Go on after a pause (SIGUSR2).
    Resume,
}

impl Request {
    /// What happens now that the request was sent.
    pub fn sent_note(self) -> &'static str {
        match self {
            Request::Stop => "stopping after the current step: checkpoint and exports follow",
            Request::Pause => "pausing after the current step",
            Request::Resume => "resuming",
        }
    }
}

/// Asks a run's worker to stop (SIGTERM): it finishes the current step, writes a
/// checkpoint and both exports, and ends as stopped. Returns the worker's pid.
pub fn request_stop(info: &RunInfo) -> Result<u32> {
    request(info, Request::Stop)
}

/// Sends `what` to a run's worker. Returns the worker's pid.
pub fn request(info: &RunInfo, what: Request) -> Result<u32> {
    let st = &info.state;
    if st.state != Status::Running {
        bail!("run {} is not running (it is {})", info.id, st.state);
    }
    let pid = st.pid.ok_or_else(|| {
        anyhow!(
            "run {}: its worker has not started yet; try again in a moment",
            info.id
        )
    })?;
    if st.host.is_some() && st.host != state::hostname() {
        bail!(
            "run {} runs on {}; stop it from there",
            info.id,
            st.host.as_deref().unwrap_or("?")
        );
    }
    #[cfg(unix)]
    {
        let p = libc::pid_t::try_from(pid).map_err(|_| anyhow!("bad process id {pid}"))?;
        let sig = match what {
            Request::Stop => libc::SIGTERM,
            Request::Pause => libc::SIGUSR1,
            Request::Resume => libc::SIGUSR2,
        };
        // SAFETY: sends a signal; no memory is involved.
        if unsafe { libc::kill(p, sig) } != 0 {
            let e = std::io::Error::last_os_error();
            bail!("run {}: cannot signal worker {pid} ({e})", info.id);
        }
        Ok(pid)
    }
    #[cfg(not(unix))]
    {
        let _ = what;
        bail!("run {}: steering a worker needs a Unix system", info.id)
    }
}

/// What to do next after a run, as plain lines (the foreground command and the worker's
/// log both print them). `run` is the detached run's id (`None` in the foreground).
pub fn outcome_hints(plan: &Plan, out: &Outcome, run: Option<&str>) -> Vec<String> {
    let mut lines = Vec::new();
    if !out.stopped && out.eval_final.is_some() {
        let device = match plan.cfg.device {
            DeviceSpec::Cpu => String::new(),
            gpu => format!(" --device {gpu}"),
        };
        lines.push(format!(
            "check the prompt: softtune eval --model {} --text {} --block-size {} --prompt {}{device}",
            plan.files.id,
            plan.heldout_path().display(),
            plan.rows.len,
            plan.kobold_path().display()
        ));
        lines.push(match run {
            Some(id) => format!(
                "try it: softtune generate --run {id} --compare [\"a text to continue\"]"
            ),
            None => format!(
                "try it: softtune generate --model {} --prompt {} --compare{device} [\"a text to continue\"]",
                plan.files.id,
                plan.kobold_path().display()
            ),
        });
    }
    if out.stopped {
        lines.push(match run {
            Some(id) => format!(
                "stopped at step {}; `softtune resume {id}` goes on from its checkpoint",
                out.step
            ),
            None => format!(
                "stopped at step {}; the same command goes on from its checkpoint ({})",
                out.step,
                plan.checkpoint_path().display()
            ),
        });
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_worker_lock_per_run_folder() {
        let dir = tempfile::tempdir().unwrap();
        let held = lock_worker(dir.path()).unwrap();
        assert!(held.is_some());
        assert!(lock_worker(dir.path()).unwrap().is_none(), "held elsewhere");
        drop(held);
        assert!(lock_worker(dir.path()).unwrap().is_some(), "free again");
    }

    #[test]
    fn utc_dates() {
        assert_eq!(format_utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(format_utc(1_700_000_000), "2023-11-14 22:13:20 UTC");
        assert_eq!(format_utc(4_107_542_399), "2100-02-28 23:59:59 UTC");
        assert_eq!(id_stamp(1_709_210_096), "20240229-123456");
    }
}
